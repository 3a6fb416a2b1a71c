#!/usr/bin/env bash
# Compile time: a crate of 200 #[safe_db_operation] functions against the same 200
# written with the closure form, and the proc-macro crate's own build. Only the measured
# crate is rebuilt in each timing (its dependencies are built first). Writes
# target/compile_time.json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/compile-bench
export CARGO_TARGET_DIR=$work/target
mkdir -p "$work"

gen() { # kind
  local dir=$work/$1
  mkdir -p "$dir/src"
  cat > "$dir/Cargo.toml" <<TOML
[package]
name = "compile-bench-$1"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
safe-db = { path = "$root/runtime", default-features = false, features = ["sqlite"] }
sea-orm = { version = "2.0.4", default-features = false, features = ["runtime-tokio", "sqlx-sqlite"] }
TOML
  {
    echo "#![allow(dead_code)]"
    echo "use safe_db::Tx;"
    echo "use sea_orm::{ConnectionTrait, DbErr};"
    for i in $(seq 1 200); do
      if [ "$1" = annotated ]; then
        cat <<RS
#[safe_db::safe_db_operation]
pub async fn op_$i(tx: &Tx, id: i64, name: String) -> Result<u64, DbErr> {
    let sql = format!("UPDATE t SET name = '{name}' WHERE id = {id} AND k = $i");
    Ok(tx.execute_unprepared(&sql).await?.rows_affected())
}
RS
      else
        cat <<RS
pub async fn op_$i(db: &impl safe_db::Begin, id: i64, name: String) -> Result<u64, DbErr> {
    safe_db::transaction(db, async |tx: &Tx| {
        let sql = format!("UPDATE t SET name = '{name}' WHERE id = {id} AND k = $i");
        Ok(tx.execute_unprepared(&sql).await?.rows_affected())
    })
    .await
}
RS
      fi
    done
    # Callers, so every function is instantiated and compiled, as in an application.
    echo "pub async fn call_all(db: &sea_orm::DatabaseConnection) {"
    for i in $(seq 1 200); do
      echo "    let _ = op_$i(db, $i, String::new()).await;"
    done
    echo "}"
  } > "$dir/src/lib.rs"
}

seconds() { # command… ; prints the wall time in seconds
  local start end
  start=$(date +%s%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s%N)
  awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }'
}

median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }

gen annotated
gen closure
declare -A time
for kind in annotated closure; do
  manifest=$work/$kind/Cargo.toml
  cargo build --manifest-path "$manifest" >/dev/null 2>&1 # dependencies
  runs=()
  for _ in 1 2 3; do
    touch "$work/$kind/src/lib.rs"
    runs+=("$(seconds cargo build --manifest-path "$manifest")")
  done
  time[$kind]=$(median3 "${runs[@]}")
  echo "$kind: 200 functions build in ${time[$kind]} s (median of 3)"
done

runs=()
for _ in 1 2 3; do
  cargo clean --manifest-path "$work/annotated/Cargo.toml" -p safe-db-macros >/dev/null 2>&1
  runs+=("$(seconds cargo build --manifest-path "$work/annotated/Cargo.toml" -p safe-db-macros)")
done
macros=$(median3 "${runs[@]}")
echo "safe-db-macros alone (its dependencies built): $macros s"

ratio=$(awk -v a="${time[annotated]}" -v c="${time[closure]}" 'BEGIN { print a / c }')
printf '{"annotated_s": %.2f, "closure_s": %.2f, "ratio": %.3f, "macro_crate_s": %.2f}\n' \
  "${time[annotated]}" "${time[closure]}" "$ratio" "$macros" > "$root/target/compile_time.json"
cat "$root/target/compile_time.json"
