#!/usr/bin/env bash
# A throwaway MariaDB server of its own, for tests that restart a server mid-run without
# disturbing the shared one: data in DIR, listening on 127.0.0.1:PORT, root with no
# password, database `test`.
#   throwaway-mariadb.sh start DIR PORT [OPTION...]
#                                          install (if DIR is empty) and start with the
#                                          server options given (kept for a restart);
#                                          prints the pid
#   throwaway-mariadb.sh restart DIR PORT  stop (in-flight transactions roll back) and start
#   throwaway-mariadb.sh stop DIR PORT     stop the server started here, by its pid
set -euo pipefail
cmd=$1 dir=$2 port=$3
shift 3
start() {
  local options=()
  if [ -f "$dir/options" ]; then mapfile -t options <"$dir/options"; fi
  mariadbd --no-defaults --user=mysql --datadir="$dir/data" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
    --innodb-buffer-pool-size=32M --log-error="$dir/error.log" ${options[@]+"${options[@]}"} \
    >/dev/null 2>&1 &
  for _ in $(seq 1 100); do
    if mariadb-admin --no-defaults -h 127.0.0.1 -P "$port" -u root ping >/dev/null 2>&1; then
      cat "$dir/mysqld.pid"
      return 0
    fi
    sleep 0.1
  done
  echo "the throwaway MariaDB did not start; $dir/error.log:" >&2
  tail -20 "$dir/error.log" >&2
  return 1
}
stop() {
  if [ -f "$dir/mysqld.pid" ]; then
    pid=$(cat "$dir/mysqld.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
case $cmd in
  start)
    mkdir -p "$dir"
    if [ $# -gt 0 ]; then printf '%s\n' "$@" >"$dir/options"; else : >"$dir/options"; fi
    if [ ! -d "$dir/data/mysql" ]; then
      mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" \
        --auth-root-authentication-method=normal --skip-test-db >/dev/null
    fi
    chown -R mysql: "$dir"
    start
    mariadb --no-defaults -h 127.0.0.1 -P "$port" -u root -e "CREATE DATABASE IF NOT EXISTS test"
    ;;
  restart)
    stop
    start >/dev/null
    ;;
  stop)
    stop
    ;;
esac
