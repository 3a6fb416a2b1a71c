//! Options passed through `macro_rules!` fragments: `literal`, `expr` and `tt` values, and
//! `read_only` as an `ident`.
use safe_db::{Tx, safe_db_operation};
use sea_orm::{ConnectionTrait, DbErr};

macro_rules! with_literal {
    ($name:ident, $iso:literal, $timeout:literal, $retries:literal) => {
        #[safe_db_operation(isolation = $iso, timeout = $timeout, retries = $retries)]
        async fn $name(tx: &Tx) -> Result<(), DbErr> {
            tx.execute_unprepared("SELECT 1").await.map(drop)
        }
    };
}

macro_rules! with_expr {
    ($name:ident, $iso:expr, $timeout:expr, $retries:expr) => {
        #[safe_db_operation(isolation = $iso, timeout = $timeout, retries = $retries)]
        async fn $name(tx: &Tx) -> Result<(), DbErr> {
            tx.execute_unprepared("SELECT 1").await.map(drop)
        }
    };
}

macro_rules! with_tt {
    ($name:ident, $($options:tt)*) => {
        #[safe_db_operation($($options)*)]
        async fn $name(tx: &Tx) -> Result<(), DbErr> {
            tx.execute_unprepared("SELECT 1").await.map(drop)
        }
    };
}

macro_rules! with_ident {
    ($name:ident, $flag:ident) => {
        #[safe_db_operation($flag)]
        async fn $name(tx: &Tx) -> Result<(), DbErr> {
            tx.execute_unprepared("SELECT 1").await.map(drop)
        }
    };
}

with_literal!(literal, "serializable", "2s", 3);
with_expr!(expr, "repeatable_read", "250ms", 2);
with_tt!(tt, isolation = "read_committed", read_only, timeout = "1m");
with_ident!(ident, read_only);

async fn callers(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    literal(db).await?;
    expr(db).await?;
    tt(db).await?;
    ident(db).await
}

fn main() {
    let _ = callers;
}
