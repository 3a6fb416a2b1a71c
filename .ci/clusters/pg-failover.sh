#!/usr/bin/env bash
# A PostgreSQL primary of its own on 127.0.0.1:PORT and its hot standby on PORT+1, streaming
# with synchronous commit (every commit the primary acknowledges is on the standby's disk),
# for the failover test (tests/pg_failover.rs): data in DIR/primary and DIR/standby, trust
# auth, database `postgres`. Promotion cannot be undone: start a fresh pair for each run.
#   pg-failover.sh start DIR PORT    initdb, start the primary, base backup and start the
#                                    standby, then make the standby synchronous; prints pids
#   pg-failover.sh crash DIR PORT    the primary stops at once (`pg_ctl -m immediate`: its
#                                    sessions are cut, no shutdown checkpoint), as in a crash
#   pg-failover.sh promote DIR PORT  the standby becomes the primary (`pg_ctl promote`)
#   pg-failover.sh revive DIR PORT   the crashed primary starts again, as a primary of its
#                                    own on its old timeline (split brain, for the test)
#   pg-failover.sh stop DIR PORT     stop both servers started here, by their pids
set -euo pipefail
cmd=$1 dir=$2 port=$3
here=$(dirname "$0")
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    primary=$("$here/throwaway-postgres.sh" start "$dir/primary" "$port")
    standby=$(PRIMARY_PORT=$port "$here/standby.sh" start "$dir/standby" $((port + 1)))
    # Only now: a standby made from a copy with this setting would wait for a standby of
    # its own once promoted.
    psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc \
      "ALTER SYSTEM SET synchronous_standby_names = '*'" -c "SELECT pg_reload_conf()" >/dev/null
    echo "$primary $standby"
    ;;
  crash)
    as_postgres "$bin/pg_ctl" -D "$dir/primary" -w -m immediate stop >/dev/null
    ;;
  revive)
    "$here/throwaway-postgres.sh" start "$dir/primary" "$port" >/dev/null
    ;;
  promote)
    as_postgres "$bin/pg_ctl" -D "$dir/standby" -w promote >/dev/null
    ;;
  stop)
    PRIMARY_PORT=$port "$here/standby.sh" stop "$dir/standby" $((port + 1)) || true
    "$here/throwaway-postgres.sh" stop "$dir/primary" "$port" || true
    ;;
esac
