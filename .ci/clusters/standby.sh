#!/usr/bin/env bash
# A PostgreSQL hot standby of the shared server (127.0.0.1:5432), streaming from it: data in
# DIR (a pg_basebackup), listening on 127.0.0.1:PORT (5433 in CI), trust auth.
#   standby.sh start DIR PORT    allow replication from 127.0.0.1 on the primary (a line in
#                                its pg_hba.conf, marked as ours), base backup, start; prints the pid
#   standby.sh halt DIR PORT     stop the standby's server only (a test's "standby is down")
#   standby.sh resume DIR PORT   start it again
#   standby.sh pause DIR PORT    SIGSTOP the standby's server and its processes (a standby
#                                that hangs: connections open, nothing answers)
#   standby.sh cont DIR PORT     SIGCONT them
#   standby.sh stop DIR PORT     stop the standby started here (by its pid) and take the line
#                                out of the primary's pg_hba.conf again
set -euo pipefail
cmd=$1 dir=$2 port=$3
primary_port=${PRIMARY_PORT:-5432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
marker="# safe-db CI standby"
line="host replication all 127.0.0.1/32 trust $marker"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
primary() { psql -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -tAq "$@"; }
case $cmd in
  start)
    hba=$(primary -c "SHOW hba_file")
    if ! grep -qF "$marker" "$hba"; then
      # First: pg_hba.conf is read top down, the first matching line decides.
      { echo "$line"; cat "$hba"; } > "$hba.safe-db" && cat "$hba.safe-db" > "$hba" && rm -f "$hba.safe-db"
      primary -c "SELECT pg_reload_conf()" >/dev/null
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir" \
      -R -X stream -c fast >/dev/null
    # The shared server keeps its configuration outside its data directory (Debian): give
    # the copy its own.
    cat > "$dir/postgresql.conf" <<CONF
hot_standby = on
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_receiver_status_interval = 1s
CONF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' > "$dir/pg_hba.conf"
    : > "$dir/pg_ident.conf"
    chown postgres: "$dir"/*.conf
    as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    for _ in $(seq 1 100); do
      if [ "$(psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ]; then
        head -1 "$dir/postmaster.pid"
        exit 0
      fi
      sleep 0.1
    done
    echo "the standby did not start; $dir/server.log:" >&2
    tail -20 "$dir/server.log" >&2
    exit 1
    ;;
  halt)
    as_postgres "$bin/pg_ctl" -D "$dir" -w -m fast stop >/dev/null
    ;;
  resume)
    as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    ;;
  pause|cont)
    signal=STOP; [ "$cmd" = cont ] && signal=CONT
    pid=$(head -1 "$dir/postmaster.pid")
    # Only if it is still the postmaster started here (not a reused pid).
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then
      [ "$signal" = CONT ] && kill -CONT "$pid"
      pkill "-$signal" -P "$pid" || true
      [ "$signal" = STOP ] && kill -STOP "$pid"
    fi
    ;;
  promote)
    # The standby becomes a primary of its own (a failover gone wrong: the old primary is
    # still up). It cannot be a standby again; the scenario that promotes it runs last.
    as_postgres "$bin/pg_ctl" -D "$dir" -w promote >/dev/null
    ;;
  stop)
    if [ -f "$dir/postmaster.pid" ]; then
      pid=$(head -1 "$dir/postmaster.pid")
      # Only if it is still the postmaster started here (not a reused pid).
      if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then
        kill -CONT "$pid" 2>/dev/null || true
        pkill -CONT -P "$pid" 2>/dev/null || true
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    hba=$(primary -c "SHOW hba_file" 2>/dev/null) || exit 0
    if grep -qF "$marker" "$hba"; then
      grep -vF "$marker" "$hba" > "$hba.safe-db" && cat "$hba.safe-db" > "$hba" && rm -f "$hba.safe-db"
      primary -c "SELECT pg_reload_conf()" >/dev/null
    fi
    ;;
esac
