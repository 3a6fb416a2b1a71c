#!/usr/bin/env bash
# The example API (safe-db: TxLayer, RequestTx, annotated service functions) against the
# same API by hand (axum and SeaORM, begin/commit per request: the binary
# agents-api-by-hand), both in a release build under wrk on PostgreSQL (issue 24).
#
#   flock -o /tmp/safe-db-cargo.lock bash benches/web.sh
#
# Builds both, starts each on its own port over a database of its own, then runs wrk
# (benches/web/mix.lua: creates with colliding names, reads, lists, renames) against one
# and then the other, ROUNDS times in alternating order (A B, B A, ...), each round on
# freshly reset tables (1,000 agents seeded) after a short warm-up. Prints requests per
# second, p99 latency and the server's CPU time per request (user + system, from /proc) for
# each round, their medians, and the ratios safe-db / by hand.
# Run it holding the build lock: the machine is shared, and a compile during a round
# would skew it. Settings: ROUNDS (6), SECONDS_PER_ROUND (10), CONNECTIONS (64),
# THREADS (2), SAFE_DB_BENCH_POSTGRES (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
SECS=${SECONDS_PER_ROUND:-10}
CONNS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PG=${SAFE_DB_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
PORT_A=${PORT_A:-18471}
PORT_B=${PORT_B:-18472}
OUT=target/web-bench
mkdir -p "$OUT"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }

cargo build --release -p agents-api --features by-hand --bins

reset_db() { # a database of its own, dropped and created
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
reseed() { # the agents table emptied and seeded, the keys' table emptied
  psql -q "$PG/$1" -c "TRUNCATE agents RESTART IDENTITY" -c "TRUNCATE safe_db_idempotency" \
    -c "INSERT INTO agents (name) SELECT 'seed-' || g FROM generate_series(1, 1000) g" \
    -c "VACUUM ANALYZE agents" -c "CHECKPOINT"
}

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # name binary port
  reset_db "safe_db_web_$1"
  DATABASE_URL="$PG/safe_db_web_$1" PORT=$3 "target/release/$2" >"$OUT/$1.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$1=$!"
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$3/agents/1" && return 0
    sleep 0.1
  done
  echo "$2 did not start (see $OUT/$1.log)"; exit 1
}
start a agents-api "$PORT_A"
start b agents-api-by-hand "$PORT_B"

ticks() { # a process's CPU time so far (user + system), in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

round() { # name port round
  reseed "safe_db_web_$1"
  wrk -t"$THREADS" -c"$CONNS" -d2s -s benches/web/mix.lua "http://127.0.0.1:$2" >/dev/null
  reseed "safe_db_web_$1"
  local line pid t0 t1
  eval "pid=\$PID_$1"
  t0=$(ticks "$pid")
  line=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" -s benches/web/mix.lua "http://127.0.0.1:$2" \
    | grep '^RESULT')
  t1=$(ticks "$pid")
  echo "$3 $1 $line cpu_ticks=$((t1 - t0))" | tee -a "$OUT/results.txt"
}

: >"$OUT/results.txt"
echo "# round variant (a: safe-db, b: by hand) RESULT ..."
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then round a "$PORT_A" "$r"; round b "$PORT_B" "$r"
  else round b "$PORT_B" "$r"; round a "$PORT_A" "$r"; fi
done

python3 - "$OUT/results.txt" "$(getconf CLK_TCK)" <<'EOF'
import statistics, sys
tck = float(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    rnd, variant = int(parts[0]), parts[1]
    fields = dict(p.split("=") for p in parts[3:])
    rows.setdefault(rnd, {})[variant] = {k: float(v) for k, v in fields.items()}
rounds = sorted(r for r in rows if {"a", "b"} <= rows[r].keys())
def med(variant, key):
    return statistics.median(rows[r][variant][key] for r in rounds)
print("round  safe-db rps  p99 ms   by hand rps  p99 ms   rps ratio  p99 ratio")
for r in rounds:
    a, b = rows[r]["a"], rows[r]["b"]
    print(f"{r:5}  {a['rps']:11.0f}  {a['p99_us']/1000:6.2f}   {b['rps']:11.0f}  {b['p99_us']/1000:6.2f}"
          f"   x{a['rps']/b['rps']:.3f}    x{a['p99_us']/b['p99_us']:.3f}")
ratios = [rows[r]["a"]["rps"] / rows[r]["b"]["rps"] for r in rounds]
p99s = [rows[r]["a"]["p99_us"] / rows[r]["b"]["p99_us"] for r in rounds]
print(f"median safe-db {med('a','rps'):.0f} rps, p99 {med('a','p99_us')/1000:.2f} ms, "
      f"non-2xx {med('a','non2xx')/med('a','requests'):.1%}")
print(f"median by hand {med('b','rps'):.0f} rps, p99 {med('b','p99_us')/1000:.2f} ms, "
      f"non-2xx {med('b','non2xx')/med('b','requests'):.1%}")
cpu = {v: [rows[r][v]["cpu_ticks"] / tck * 1e6 / rows[r][v]["requests"] for r in rounds] for v in "ab"}
cpus = [a / b for a, b in zip(cpu["a"], cpu["b"])]
print(f"server CPU time per request (user + system): safe-db {statistics.median(cpu['a']):.0f} us, "
      f"by hand {statistics.median(cpu['b']):.0f} us, ratio median x{statistics.median(cpus):.3f} "
      f"(range x{min(cpus):.3f}-x{max(cpus):.3f})")
print(f"rps ratio (safe-db / by hand): median of rounds x{statistics.median(ratios):.3f} "
      f"(range x{min(ratios):.3f}-x{max(ratios):.3f}); p99 ratio x{statistics.median(p99s):.3f} "
      f"(range x{min(p99s):.3f}-x{max(p99s):.3f}); {len(rounds)} rounds of {sys.argv[1]}")
EOF
