#!/usr/bin/env bash
# Instructions per request of the example API against the same API by hand (issue 24),
# counted by callgrind in each server process under the same wrk mix: unlike requests
# per second on this shared two-core machine, the count does not drift with the load.
#
#   flock -o /tmp/safe-db-cargo.lock bash benches/web_instructions.sh
#
# Builds both (release), then for each log level (LEVELS, "info warn"), starts each
# server under valgrind over a database of its own with 1,000 agents, warms it up for 5 s,
# zeroes the counters, runs benches/web/mix.lua for SECONDS_PER_RUN (20) on 8 connections,
# dumps the counters, and prints instructions per request (every thread of the server).
# SAFE_DB_BENCH_POSTGRES (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECONDS_PER_RUN:-20}
LEVELS=${LEVELS:-"info warn"}
PG=${SAFE_DB_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
OUT=target/web-bench
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 1; }

cargo build --release -p agents-api --features by-hand --bins

PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; }
trap cleanup EXIT

count() { # name binary port level
  local db="safe_db_webi_$1" out="$OUT/callgrind-$1-$4.out"
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  rm -f "$out" "$out".*
  DATABASE_URL="$PG/$db" PORT=$3 LOG_LEVEL=$4 valgrind --tool=callgrind --dump-instr=no \
    --callgrind-out-file="$out" "target/release/$2" >"$OUT/$1-$4.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    curl -s -o /dev/null "http://127.0.0.1:$3/agents/1" && break
    sleep 0.2
  done
  psql -q "$PG/$db" -c "INSERT INTO agents (name) SELECT 'seed-' || g FROM generate_series(1, 1000) g"
  wrk -t1 -c8 -d5s -s benches/web/mix.lua "http://127.0.0.1:$3" >/dev/null
  callgrind_control -z "$PID" >/dev/null
  local line requests total
  line=$(wrk -t1 -c8 -d"${SECS}s" -s benches/web/mix.lua "http://127.0.0.1:$3" | grep '^RESULT')
  callgrind_control -d "$PID" >/dev/null
  sleep 1
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  total=$(grep -h '^summary:' "$out".1 | awk '{print $2}')
  echo "$1 $4 requests=$requests instructions_per_request=$(( total / requests ))"
}

for level in $LEVELS; do
  count a agents-api 18481 "$level"
  count b agents-api-by-hand 18482 "$level"
done | tee "$OUT/instructions.txt"
