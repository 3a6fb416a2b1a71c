#!/usr/bin/env bash
# All three benchmark groups, from one command: bash benches/run.sh
# PostgreSQL figures need SAFE_DB_TEST_POSTGRES_URL (as for the tests). Results go to
# target/ (criterion's reports, *.json) and benches/chart.svg; the tables of
# BENCHMARKS.md are printed at the end (and written to target/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. Per-transaction cost: criterion's own report, then the side-by-side ratios, with the
#    metrics facade compiled out and in.
cargo bench -p safe-db-bench --bench per_transaction
cargo bench -p safe-db-bench --bench interleaved
cargo bench -p safe-db-bench --features metrics --bench interleaved
# 2. Contention.
cargo bench -p safe-db-bench --bench contention
# 3. Round trips over a link with latency (PostgreSQL and MariaDB, when their URLs are set).
cargo bench -p safe-db-bench --bench latency
# 4. A PostgreSQL database per test: copied from a template, or migrated each time.
cargo bench -p safe-db-bench --features testing --bench per_test_db
# 5. Compile time.
bash benches/compile_time.sh
python3 benches/report.py
