#!/usr/bin/env bash
# Instructions per transaction on SQLite in memory, counted by callgrind (all threads of
# the process: the caller's and SQLite's worker). Usage: bash benches/instructions.sh [N]
# Writes target/instructions-metrics-{off,on}.json, and target/instructions-testing.json
# (the feature `testing` compiled in, to compare with its being off).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
variants="a_annotated b_closure_form c_sea_orm_begin_commit d_sea_orm_transaction_closure e_raw_sqlx nested_a_annotated nested_c_sea_orm_begin"
for metrics in off on testing; do
  features=()
  [ "$metrics" = on ] && features=(--features metrics)
  [ "$metrics" = testing ] && features=(--features testing)
  bin=$(cargo bench -p safe-db-bench "${features[@]}" --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*instructions[^"]*"' | tail -1 | cut -d'"' -f4)
  out=target/callgrind
  mkdir -p "$out"
  rows=()
  count() { # variant n
    valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2.out" "$bin" "$1" "$2" >/dev/null 2>&1
    grep -E '^(summary|totals):' "$out/$1-$2.out" | head -1 | awk '{print $2}'
  }
  these=$variants
  [ "$metrics" = testing ] && these="a_annotated c_sea_orm_begin_commit nested_a_annotated"
  for v in $these; do
    zero=$(count "$v" 0)
    many=$(count "$v" "$n")
    per=$(( (many - zero) / n ))
    echo "metrics $metrics  $v: $per instructions per transaction"
    rows+=("{\"metrics\":\"$metrics\",\"variant\":\"$v\",\"instructions\":$per}")
  done
  name="metrics-$metrics"
  [ "$metrics" = testing ] && name=testing
  (IFS=,; echo "[${rows[*]}]") > "target/instructions-$name.json"
done
