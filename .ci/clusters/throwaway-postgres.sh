#!/usr/bin/env bash
# A throwaway PostgreSQL cluster of its own, for tests that restart a server mid-run
# without disturbing the shared one: data in DIR, listening on 127.0.0.1:PORT, trust auth.
#   throwaway-postgres.sh start DIR PORT    initdb (if DIR is empty) and start; prints the pid
#   throwaway-postgres.sh restart DIR PORT  fast restart (in-flight transactions abort)
#   throwaway-postgres.sh stop DIR PORT     stop the postmaster started here, by its pid
set -euo pipefail
cmd=$1 dir=$2 port=$3
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      as_postgres "$bin/initdb" -D "$dir" -A trust -U postgres >/dev/null
    fi
    as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-p $port -h 127.0.0.1 -k $dir -c fsync=on" start >/dev/null
    head -1 "$dir/postmaster.pid"
    ;;
  restart)
    as_postgres "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -m fast \
      -o "-p $port -h 127.0.0.1 -k $dir -c fsync=on" restart >/dev/null
    ;;
  stop)
    if [ -f "$dir/postmaster.pid" ]; then
      pid=$(head -1 "$dir/postmaster.pid")
      kill -INT "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    ;;
esac
