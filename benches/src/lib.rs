//! What the benchmarks share: the databases they run on.

pub mod latency;

use std::time::Duration;

use safe_db::{Tx, safe_db_operation};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

/// A database the benchmarks run on.
pub struct Target {
    /// Its name in the results.
    pub name: &'static str,
    /// A pool on it, with the `bench` table: one row, `id = 1`, counter `v`.
    pub db: DatabaseConnection,
    _dir: Option<tempfile::TempDir>,
}

async fn open(url: &str, max: u32) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    Database::connect(options).await.expect("connect")
}

async fn with_table(db: &DatabaseConnection) {
    for sql in [
        "DROP TABLE IF EXISTS bench",
        "CREATE TABLE bench (id INTEGER PRIMARY KEY, v BIGINT NOT NULL)",
        "INSERT INTO bench (id, v) VALUES (1, 0), (2, 0), (3, 0), (4, 0)",
    ] {
        db.execute_unprepared(sql).await.expect(sql);
    }
}

/// SQLite in memory (one connection: the database lives in it), SQLite on a WAL file,
/// and PostgreSQL when `SAFE_DB_TEST_POSTGRES_URL` is set.
pub async fn targets(pool: u32) -> Vec<Target> {
    let mut out = Vec::new();
    let memory = open("sqlite::memory:", 1).await;
    with_table(&memory).await;
    out.push(Target {
        name: "sqlite-memory",
        db: memory,
        _dir: None,
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let file = open(&url, pool).await;
    file.execute_unprepared("PRAGMA journal_mode = WAL")
        .await
        .expect("WAL");
    with_table(&file).await;
    out.push(Target {
        name: "sqlite-wal-file",
        db: file,
        _dir: Some(dir),
    });
    if let Ok(url) = std::env::var("SAFE_DB_TEST_POSTGRES_URL") {
        let pg = open(&url, pool).await;
        with_table(&pg).await;
        out.push(Target {
            name: "postgres",
            db: pg,
            _dir: None,
        });
    }
    out
}

// ---- the variants measured (on SQLite every writer begins IMMEDIATE, as safe-db does) ----

/// The one small write every variant makes.
pub const WRITE: &str = "UPDATE bench SET v = v + 1 WHERE id = 1";

/// (a) The write in an annotated function.
#[safe_db_operation]
pub async fn annotated(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await?;
    Ok(())
}

/// Nested (a): an annotated function calling another (a savepoint).
#[safe_db_operation]
pub async fn annotated_outer(tx: &Tx) -> Result<(), DbErr> {
    tx.execute_unprepared(WRITE).await?;
    annotated(tx).await
}

/// (b) The closure form.
pub async fn closure_form(db: &DatabaseConnection) -> Result<(), DbErr> {
    safe_db::transaction(db, async |tx: &Tx| {
        tx.execute_unprepared(WRITE).await?;
        Ok(())
    })
    .await
}

fn writer_options(db: &DatabaseConnection) -> TransactionOptions {
    let mut options = TransactionOptions::default();
    if db.get_database_backend() == DbBackend::Sqlite {
        options.sqlite_transaction_mode = Some(SqliteTransactionMode::Immediate);
    }
    options
}

// The hand-written baselines are what the lint rule forbids in application code.
/// (c) Hand-written SeaORM `begin` / `commit`.
#[allow(clippy::disallowed_methods)]
pub async fn hand_written(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin_with_options(writer_options(db)).await?;
    txn.execute_unprepared(WRITE).await?;
    txn.commit().await
}

/// Nested (c): hand-written `txn.begin()` inside `db.begin()`.
#[allow(clippy::disallowed_methods)]
pub async fn hand_written_nested(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin_with_options(writer_options(db)).await?;
    txn.execute_unprepared(WRITE).await?;
    let inner = txn.begin().await?;
    inner.execute_unprepared(WRITE).await?;
    inner.commit().await?;
    txn.commit().await
}

/// (d) SeaORM's `transaction` closure.
pub async fn sea_orm_closure(db: &DatabaseConnection) -> Result<(), DbErr> {
    // SeaORM's closure API has no transaction mode: on SQLite it begins DEFERRED.
    db.transaction::<_, (), DbErr>(|txn| {
        Box::pin(async move {
            txn.execute_unprepared(WRITE).await?;
            Ok(())
        })
    })
    .await
    .map_err(|e| DbErr::Custom(e.to_string()))
}

/// (e) Raw sqlx `begin` / `commit`: the floor.
pub async fn raw_sqlx(db: &DatabaseConnection) -> Result<(), sea_orm::sqlx::Error> {
    use sea_orm::sqlx;
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(WRITE).execute(&mut *tx).await?;
            tx.commit().await
        }
        _ => {
            let pool = db.get_postgres_connection_pool();
            let mut tx = pool.begin().await?;
            sqlx::query(WRITE).execute(&mut *tx).await?;
            tx.commit().await
        }
    }
}
