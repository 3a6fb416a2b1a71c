//! With no `tracing` subscriber, `tracing`'s `log` fallback (its `log` feature, on in the
//! dependency tree) writes a record for each field recorded on a span, enabled or not. A
//! disabled span's fields are not recorded (see `operation::record`): an application that
//! logs through `log` only gets no line per operation's end. One test in this binary: no
//! `tracing` dispatcher is ever set in it.

use std::sync::Mutex;

use safe_db::{Error, Tx, safe_db_operation};
use sea_orm::ConnectionTrait;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Keep;

impl log::Log for Keep {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES.lock().unwrap().push(format!("{}", record.args()));
    }
    fn flush(&self) {}
}

#[safe_db_operation]
async fn op(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("SELECT 1").await?;
    Ok(())
}

#[tokio::test]
async fn a_disabled_span_records_nothing_through_the_log_fallback() {
    log::set_logger(&Keep).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
    op(&db).await.unwrap();
    let lines = LINES.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|l| l.contains("outcome")),
        "an operation's end was written through the log fallback: {lines:#?}"
    );
}
