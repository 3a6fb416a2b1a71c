#!/usr/bin/env bash
# A 3-node MariaDB Galera cluster on 127.0.0.1 for the tests: client ports 3307, 3308 and
# 3309; group communication on 4567/4577/4587, incremental state transfer on 4568/4578/4588,
# rsync state transfer on 4444/4454/4464. Each node's data lives in DIR/nodeN, fresh per run;
# root has no password; database `test`.
#   galera.sh start DIR       install, bootstrap node 1, join nodes 2 and 3; prints the pids
#   galera.sh kill DIR N      kill node N at once (SIGKILL, by its pid): a node that dies
#   galera.sh restart DIR N   start node N again (it rejoins the cluster)
#   galera.sh pause DIR N     SIGSTOP node N (by its pid): a node that hangs
#   galera.sh resume DIR N    SIGCONT node N
#   galera.sh stop DIR        stop every node started here, by its pid
#   galera.sh ctl DIR CMD N   the same as galera.sh CMD DIR N (kill, restart, pause, resume):
#                             a prefix to which a test appends "kill 3"
set -euo pipefail
cmd=$1 dir=$2
if [ "$cmd" = ctl ]; then
  cmd=$3
  set -- "$cmd" "$dir" "${@:4}"
  case $cmd in kill|restart|pause|resume) ;; *) echo "galera.sh ctl: $cmd?" >&2; exit 2 ;; esac
fi
provider=/usr/lib/galera/libgalera_smm.so
[ -f "$provider" ] || provider=/usr/lib/libgalera_smm.so
members="127.0.0.1:4567,127.0.0.1:4577,127.0.0.1:4587"

port_of() { echo $((3306 + $1)); }

node_start() { # N [--wsrep-new-cluster]
  local n=$1 extra=${2:-} d="$dir/node$1" g=$((4557 + 10 * $1))
  mariadbd --no-defaults --user=mysql --datadir="$d/data" --port="$(port_of "$n")" \
    --bind-address=127.0.0.1 --socket="$d/mysqld.sock" --pid-file="$d/mysqld.pid" \
    --log-error="$d/error.log" --innodb-buffer-pool-size=48M --binlog-format=ROW \
    --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 \
    --wsrep-on=ON --wsrep-provider="$provider" --wsrep-cluster-name=safe_db_ci \
    --wsrep-cluster-address="gcomm://$members" --wsrep-node-name="node$n" \
    --wsrep-node-address="127.0.0.1:$g" \
    --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$g;ist.recv_addr=127.0.0.1:$((g + 1));gcache.size=64M" \
    --wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:$((4434 + 10 * n))" \
    $extra >/dev/null 2>&1 &
  # The pid of the process started here (mariadbd writes its pid file only once it has
  # joined the cluster).
  echo $! > "$d/started.pid"
}

node_ready() { # N: accepts queries and is synced with the cluster
  local state
  state=$(mariadb --no-defaults -h 127.0.0.1 -P "$(port_of "$1")" -u root -N -e \
    "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | awk '{print $2}') || return 1
  [ "$state" = Synced ]
}

wait_ready() { # N
  for _ in $(seq 1 600); do
    if node_ready "$1"; then return 0; fi
    sleep 0.1
  done
  echo "Galera node $1 did not become ready; $dir/node$1/error.log:" >&2
  tail -30 "$dir/node$1/error.log" >&2
  return 1
}

node_pid() { cat "$dir/node$1/started.pid" 2>/dev/null || true; }

node_stop() { # N SIGNAL: by the pid started here; SIGKILL if it has not ended in 20 s
  local pid
  pid=$(node_pid "$1")
  [ -n "$pid" ] || return 0
  # Only if it is still the mariadbd started here (not a reused pid).
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mariadbd ]; then
    kill -CONT "$pid" 2>/dev/null || true
    kill "-$2" "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/node$1/started.pid" "$dir/node$1/mysqld.pid"
}

case $cmd in
  start)
    for n in 1 2 3; do
      mkdir -p "$dir/node$n"
      mariadb-install-db --no-defaults --user=mysql --datadir="$dir/node$n/data" \
        --auth-root-authentication-method=normal --skip-test-db >/dev/null
    done
    chown -R mysql: "$dir"
    node_start 1 --wsrep-new-cluster
    wait_ready 1
    mariadb --no-defaults -h 127.0.0.1 -P 3307 -u root -e "CREATE DATABASE IF NOT EXISTS test"
    for n in 2 3; do
      node_start "$n"
      wait_ready "$n"
    done
    echo "$(node_pid 1) $(node_pid 2) $(node_pid 3)"
    ;;
  kill)
    node_stop "$3" KILL
    ;;
  restart)
    node_start "$3"
    wait_ready "$3"
    ;;
  pause|resume)
    pid=$(node_pid "$3")
    signal=STOP; [ "$cmd" = resume ] && signal=CONT
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mariadbd ]; then
      kill "-$signal" "$pid"
    fi
    ;;
  stop)
    for n in 3 2 1; do node_stop "$n" TERM; done
    ;;
esac
