//! The variants of the latency benchmark (`benches/benches/latency.rs`): the same
//! one-statement operation written with safe-db, by hand with SeaORM, and with raw sqlx, on
//! PostgreSQL or MariaDB.

use safe_db::{Tx, safe_db_operation};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, IsolationLevel,
    TransactionTrait,
};

use crate::WRITE;

/// The one read of the read-only variants.
const READ: &str = "SELECT v FROM bench WHERE id = 1";

/// The statement timeout of the `timeout` variants, in milliseconds.
const TIMEOUT_MS: u64 = 5_000;

/// The variants, in the order they run. Each name is `case/implementation`.
pub const VARIANTS: [&str; 15] = [
    "plain/safe-db",
    "plain/sea-orm",
    "plain/sqlx",
    "isolation/safe-db",
    "isolation/sea-orm",
    "isolation/sqlx",
    "isolation+timeout/safe-db",
    "isolation+timeout/sea-orm",
    "isolation+timeout/sqlx",
    "isolation+read_only+timeout/safe-db",
    "isolation+read_only+timeout/sea-orm",
    "isolation+read_only+timeout/sqlx",
    "nested/safe-db",
    "nested/sea-orm",
    "nested savepoint=false/safe-db",
];

/// The variant a variant is compared with: the same case written by hand with SeaORM.
pub fn baseline_of(variant: &str) -> Option<&'static str> {
    let case = variant.split('/').next()?;
    let case = if case == "nested savepoint=false" {
        "nested"
    } else {
        case
    };
    VARIANTS
        .iter()
        .copied()
        .find(|v| v.split('/').next() == Some(case) && v.ends_with("/sea-orm"))
}

/// The `bench` table, one row per id.
pub async fn prepare(db: &DatabaseConnection) {
    for sql in [
        "DROP TABLE IF EXISTS bench",
        "CREATE TABLE bench (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)",
        "INSERT INTO bench (id, v) VALUES (1, 0), (2, 0), (3, 0), (4, 0)",
    ] {
        db.execute_unprepared(sql).await.expect(sql);
    }
}

/// Runs `variant` once.
pub async fn run_variant(db: &DatabaseConnection, variant: &str) {
    let result = match variant {
        "plain/safe-db" => plain(db).await,
        "plain/sea-orm" => by_hand(db, None, None, false, WRITE).await,
        "plain/sqlx" => raw(db, "", false, WRITE).await,
        "isolation/safe-db" => serializable(db).await,
        "isolation/sea-orm" => {
            by_hand(db, Some(IsolationLevel::Serializable), None, false, WRITE).await
        }
        "isolation/sqlx" => raw(db, "ISOLATION LEVEL SERIALIZABLE", false, WRITE).await,
        "isolation+timeout/safe-db" => serializable_timeout(db).await,
        "isolation+timeout/sea-orm" => {
            by_hand(db, Some(IsolationLevel::Serializable), None, true, WRITE).await
        }
        "isolation+timeout/sqlx" => raw(db, "ISOLATION LEVEL SERIALIZABLE", true, WRITE).await,
        "isolation+read_only+timeout/safe-db" => serializable_read_only_timeout(db).await,
        "isolation+read_only+timeout/sea-orm" => {
            let iso = Some(IsolationLevel::Serializable);
            by_hand(db, iso, Some(AccessMode::ReadOnly), true, READ).await
        }
        "isolation+read_only+timeout/sqlx" => {
            raw(db, "ISOLATION LEVEL SERIALIZABLE READ ONLY", true, READ).await
        }
        "nested/safe-db" => nested(db).await,
        "nested/sea-orm" => nested_by_hand(db).await,
        "nested savepoint=false/safe-db" => nested_joined(db).await,
        other => panic!("unknown variant {other}"),
    };
    result.unwrap_or_else(|e| panic!("{variant}: {e}"));
}

#[safe_db_operation]
async fn plain(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await.map(drop)
}

#[safe_db_operation(isolation = "serializable")]
async fn serializable(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await.map(drop)
}

#[safe_db_operation(isolation = "serializable", timeout = "5s")]
async fn serializable_timeout(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await.map(drop)
}

#[safe_db_operation(isolation = "serializable", read_only, timeout = "5s")]
async fn serializable_read_only_timeout(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(READ).await.map(drop)
}

#[safe_db_operation]
async fn nested(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await?;
    plain(tx).await
}

#[safe_db_operation(savepoint = false)]
async fn joined(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await.map(drop)
}

#[safe_db_operation]
async fn nested_joined(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await?;
    joined(tx).await
}

/// The statement as sent with a time limit on MariaDB (per statement).
fn bounded(backend: DbBackend, sql: &str, timeout: bool) -> String {
    if timeout && backend == DbBackend::MySql {
        format!(
            "SET STATEMENT max_statement_time = {} FOR {sql}",
            TIMEOUT_MS as f64 / 1000.0
        )
    } else {
        sql.to_owned()
    }
}

// The hand-written baselines are what the lint rule forbids in application code.
/// SeaORM by hand: `begin_with_config`, `SET LOCAL statement_timeout` (PostgreSQL), the
/// statement, `commit`.
#[allow(clippy::disallowed_methods)]
async fn by_hand(
    db: &DatabaseConnection,
    isolation: Option<IsolationLevel>,
    access: Option<AccessMode>,
    timeout: bool,
    sql: &str,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let txn = db.begin_with_config(isolation, access).await?;
    if timeout && backend == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SET LOCAL statement_timeout = {TIMEOUT_MS}"))
            .await?;
    }
    txn.execute_unprepared(&bounded(backend, sql, timeout))
        .await?;
    txn.commit().await
}

/// Nested by hand: `txn.begin()` inside `db.begin()`.
#[allow(clippy::disallowed_methods)]
async fn nested_by_hand(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared(WRITE).await?;
    let inner = txn.begin().await?;
    inner.execute_unprepared(WRITE).await?;
    inner.commit().await?;
    txn.commit().await
}

/// Raw sqlx, as few round trips as the protocol allows: on PostgreSQL the settings go in
/// the `BEGIN` statement (with `SET LOCAL statement_timeout` in the same message); MariaDB
/// has no `BEGIN` taking an isolation level, so `SET TRANSACTION` goes first.
async fn raw(
    db: &DatabaseConnection,
    settings: &str,
    timeout: bool,
    sql: &str,
) -> Result<(), DbErr> {
    use sea_orm::sqlx::{self, AssertSqlSafe};
    let err = |e: sqlx::Error| DbErr::Custom(e.to_string());
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            let mut begin = format!("BEGIN {settings}");
            if timeout {
                begin.push_str(&format!("; SET LOCAL statement_timeout = {TIMEOUT_MS}"));
            }
            let mut tx = pool.begin_with(AssertSqlSafe(begin)).await.map_err(err)?;
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)
        }
        _ => {
            let pool = db.get_mysql_connection_pool();
            let mut conn = pool.acquire().await.map_err(err)?;
            let read_only = settings.contains("READ ONLY");
            if settings.contains("ISOLATION") {
                let mut set = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE".to_owned();
                if read_only {
                    set.push_str(", READ ONLY");
                }
                sqlx::raw_sql(AssertSqlSafe(set))
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(err)?;
            sqlx::raw_sql(AssertSqlSafe(bounded(DbBackend::MySql, sql, timeout)))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)
        }
    }
}
