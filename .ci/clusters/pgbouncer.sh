#!/usr/bin/env bash
# PgBouncer (Debian's package) in transaction pooling mode in front of the shared
# PostgreSQL server (127.0.0.1:5432): its own configuration, log, pid file and socket in
# DIR, listening on 127.0.0.1:PORT (6432 in CI). Every database name is forwarded to the
# server of the same name (a `*` entry), so a test can make a database of its own on the
# server and reach it through PgBouncer; 4 server connections per database and user, so
# that a client pool of more connections is shuffled over them. Trust auth, user postgres.
#   pgbouncer.sh start DIR PORT   install the package if missing, start; prints the pid
#   pgbouncer.sh stop DIR PORT    stop the PgBouncer started here, by its pid
set -euo pipefail
cmd=$1 dir=$2 port=$3
server_port=${SERVER_PORT:-5432}
# PgBouncer refuses to run as root.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
  start)
    if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null
    fi
    bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    mkdir -p "$dir"
    echo '"postgres" ""' > "$dir/userlist.txt"
    cat > "$dir/pgbouncer.ini" <<CONF
[databases]
* = host=127.0.0.1 port=$server_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 4
max_client_conn = 500
; sqlx sends extra_float_digits at startup; PgBouncer 1.18 refuses an unknown startup
; parameter unless it is listed here (and then does not apply it).
ignore_startup_parameters = extra_float_digits
CONF
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_postgres "$bin" -d "$dir/pgbouncer.ini"
    for _ in $(seq 1 100); do
      if [ -s "$dir/pgbouncer.pid" ] &&
        psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
        cat "$dir/pgbouncer.pid"
        exit 0
      fi
      sleep 0.1
    done
    echo "PgBouncer did not start; $dir/pgbouncer.log:" >&2
    tail -20 "$dir/pgbouncer.log" >&2 || true
    exit 1
    ;;
  stop)
    if [ -f "$dir/pgbouncer.pid" ]; then
      pid=$(cat "$dir/pgbouncer.pid")
      # Only if it is still the PgBouncer started here (not a reused pid).
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pgbouncer ]; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$dir/pgbouncer.pid"
    fi
    ;;
esac
