//! The refusal of statements that would end the transaction, fuzzed against the servers
//! themselves: random texts built from the pieces a lexer can misread (quotes of every
//! kind, backslashes, comments of every kind and their ends, dollar quotes, executable
//! comments, compound statements) around a `COMMIT` or an implicitly committing DDL are sent
//! through an operation after a write, and the operation returns `Err`. Whatever safe-db let
//! through and the server ran, the write must never be committed: read back after each.
//! `SAFE_DB_FUZZ_CASES` sets the number of texts per server (default 300),
//! `SAFE_DB_FUZZ_SEED` the seed (default fixed, so that a failure reproduces).

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::ConnectionTrait;

#[safe_db_operation]
async fn write_then_fail(tx: &Tx, id: i32, text: &str) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'fuzz')"
    ))
    .await?;
    // Refused, failed on the server, or run: the operation fails all the same.
    let sent = tx.execute_unprepared(text).await;
    let refused = matches!(&sent, Err(err) if safe_db::Cause::of(err).is_some());
    Err(Error::validation(if refused { "refused" } else { "sent" }))
}

const POSTGRES: &[&str] = &[
    "SELECT 1",
    " ",
    ";",
    "COMMIT",
    "'",
    "''",
    "E'",
    "e'",
    "\\",
    "--",
    "-- c",
    "\n",
    "\r",
    "/*",
    "*/",
    "$x$",
    "$$",
    "\"",
    "a",
    "é",
    "name",
    "U&'",
    "$1",
    "x$",
    "SELECT 'a'",
];

const MARIADB: &[&str] = &[
    "SELECT 1",
    " ",
    ";",
    "COMMIT",
    "'",
    "''",
    "\\",
    "--",
    "-- ",
    "#",
    "\n",
    "\r",
    "\t",
    "/*",
    "*/",
    "/*!",
    "/*M!",
    "/*!50000",
    "\"",
    "`",
    "1--1",
    "FOR i IN 1..1 DO ",
    " END FOR",
    "CREATE TABLE fuzz_t (a INT)",
    "SELECT 'a'",
];

fn texts(pieces: &[&str], cases: usize, seed: u64) -> Vec<String> {
    let mut state = seed | 1;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    (0..cases)
        .map(|_| {
            let len = 3 + next(6);
            let mut text = String::new();
            let commit_at = next(len);
            for i in 0..len {
                if i == commit_at {
                    // Every text carries something that would end the transaction.
                    text.push_str(if next(4) == 0 { "; COMMIT" } else { "COMMIT" });
                } else {
                    text.push_str(pieces[next(pieces.len())]);
                }
            }
            text
        })
        .collect()
}

#[tokio::test]
async fn nothing_a_failed_operation_wrote_is_ever_committed_whatever_the_text() {
    let cases = std::env::var("SAFE_DB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "refusal_fuzz", 1).await {
        let pieces = match t.backend {
            Backend::MySql => MARIADB,
            _ => POSTGRES,
        };
        let mut let_through = 0;
        let seed = std::env::var("SAFE_DB_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x005a_fedb);
        for (n, text) in texts(pieces, cases, seed).into_iter().enumerate() {
            let id = n as i32 + 1;
            let err = write_then_fail(&t.db, id, &text)
                .await
                .expect_err("the body fails");
            if err.to_string().contains("sent") {
                let_through += 1;
            }
            let committed = t.agent_ids().await;
            assert!(
                committed.is_empty(),
                "{:?}: {text:?} committed the write of a failed operation ({err})",
                t.backend
            );
            if t.backend == Backend::MySql {
                let _ = t.db.execute_unprepared("DROP TABLE IF EXISTS fuzz_t").await;
            }
        }
        println!(
            "{:?}: {cases} texts, {let_through} let through to the server, none committed",
            t.backend
        );
        t.cleanup().await;
    }
}
