//! PostgreSQL failover: a `Db` over a primary and its synchronous hot standby
//! (`.ci/clusters/pg-failover.sh`, started by `.ci/run`). Six writers make transfers; the
//! primary crashes (`pg_ctl -m immediate`) mid-run and, a second later, the standby is
//! promoted. Operations wait for a node that takes writes (the standby is refused while it
//! is in recovery, as libpq's `target_session_attrs=read-write` does) and move to the new
//! primary within their deadline; only COMMITs in flight at the crash may be
//! `CommitUnknown`. Afterwards the new primary holds every `Ok` transfer exactly once, none
//! reported as failed, the total, and no negative balance.
//!
//! `SAFE_DB_TEST_PG_FAILOVER_URLS` (the primary's URL, then the standby's),
//! `SAFE_DB_TEST_PG_FAILOVER_CRASH` and `SAFE_DB_TEST_PG_FAILOVER_PROMOTE` (commands).
//! Unset, the test is skipped with one line, unless `CI=true`. Promotion cannot be undone:
//! each run needs a fresh pair.

use std::time::{Duration, Instant};

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::ledger::{self, ACCOUNTS, Held, Told, next};
use safe_db_test_support::pool_options;
use sea_orm::{ConnectionTrait, Database, Statement};

/// The bank's tables' prefix.
const T: &str = "fo_";
const DEADLINE: Duration = Duration::from_secs(5);

struct Pair {
    urls: Vec<String>,
    crash: String,
    promote: String,
    revive: String,
}

fn pair() -> Option<Pair> {
    let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (
        var("SAFE_DB_TEST_PG_FAILOVER_URLS"),
        var("SAFE_DB_TEST_PG_FAILOVER_CRASH"),
        var("SAFE_DB_TEST_PG_FAILOVER_PROMOTE"),
        var("SAFE_DB_TEST_PG_FAILOVER_REVIVE"),
    ) {
        (Some(urls), Some(crash), Some(promote), Some(revive)) => Some(Pair {
            urls: urls.split(',').map(|s| s.trim().to_owned()).collect(),
            crash,
            promote,
            revive,
        }),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "CI=true but SAFE_DB_TEST_PG_FAILOVER_URLS/CRASH/PROMOTE/REVIVE are not set"
            );
            println!("SAFE_DB_TEST_PG_FAILOVER_URLS/CRASH/PROMOTE/REVIVE are not set: skipped");
            None
        }
    }
}

fn run(command: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    assert!(status.success(), "{command}: {status}");
}

/// A transfer as a production user bounds it: a deadline, a few retries.
#[safe_db_operation(retries = 5, timeout = "5s")]
async fn transfer(tx: &Tx, tid: &str, from: i32, to: i32, amount: i64) -> Result<bool, Error> {
    Ok(ledger::move_money(tx, T, tid, from, to, amount).await?)
}

/// Which server the transaction runs on: its port.
#[safe_db_operation]
async fn port(tx: &Tx) -> Result<i32, Error> {
    read_port(tx).await
}

/// The same, serializable: a standby refuses its BEGIN outright.
#[safe_db_operation(isolation = "serializable", timeout = "5s")]
async fn serializable_port(tx: &Tx) -> Result<i32, Error> {
    read_port(tx).await
}

async fn read_port(tx: &Tx) -> Result<i32, Error> {
    let row = tx
        .query_one_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT current_setting('port')::int",
        ))
        .await?
        .expect("a row");
    Ok(row.try_get_by_index(0)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_db_over_a_primary_and_its_standby_moves_to_the_promoted_standby() {
    let Some(pair) = pair() else {
        return;
    };
    let setup = Database::connect(pool_options(&pair.urls[0], 1))
        .await
        .unwrap();
    ledger::open(&setup, T).await;
    setup.close().await.unwrap();
    let mut pools = Vec::new();
    for url in &pair.urls {
        let mut options = pool_options(url, 6);
        options
            .connect_lazy(true)
            .connect_timeout(Duration::from_millis(500));
        pools.push(Database::connect(options).await.unwrap());
    }
    let db = safe_db::Db::new(pools[0].clone(), None).with_failover(pools[1..].to_vec());
    let primary_port = port(&db).await.unwrap();
    // The standby listed first: a serializable operation (whose BEGIN the standby
    // refuses) runs on the primary all the same.
    let standby_first =
        safe_db::Db::new(pools[1].clone(), None).with_failover(vec![pools[0].clone()]);
    for _ in 0..3 {
        assert_eq!(
            serializable_port(&standby_first).await.unwrap(),
            primary_port
        );
    }

    let mut writers = Vec::new();
    for w in 0..6u64 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut seed = w * 104_729 + 7;
            let mut told = Told::default();
            for i in 0..40 {
                let from = (next(&mut seed) % ACCOUNTS as u64) as i32 + 1;
                let to = (from % ACCOUNTS) + 1;
                let amount = (next(&mut seed) % 50) as i64 + 1;
                let tid = format!("{w}-{i}");
                let started = Instant::now();
                let outcome = transfer(&db, &tid, from, to, amount).await;
                told.note(&tid, outcome, started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            told
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crash = pair.crash.clone();
    tokio::task::spawn_blocking(move || run(&crash))
        .await
        .unwrap();
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promote = pair.promote.clone();
    tokio::task::spawn_blocking(move || run(&promote))
        .await
        .unwrap();
    let promoted = crashed.elapsed();

    let mut told = Told::default();
    for writer in writers {
        told.merge(writer.await.expect("a writer"));
    }
    println!(
        "PostgreSQL failover (promoted {promoted:?} after the crash): {} against a \
         {DEADLINE:?} deadline",
        told.summary()
    );
    assert!(
        told.failed.is_empty(),
        "operations failed although the standby was promoted within their deadline: {:?}",
        told.failed
    );
    assert!(
        told.slowest <= DEADLINE + Duration::from_millis(250),
        "a call took {:?} against a {DEADLINE:?} deadline",
        told.slowest
    );
    assert!(
        told.committed.len() >= 200,
        "only {} transfers committed",
        told.committed.len()
    );

    // The new primary: every Ok transfer once, nothing else but unknown ones, the total.
    let new_primary = Database::connect(pool_options(&pair.urls[1], 1))
        .await
        .unwrap();
    let in_recovery = new_primary
        .query_one_raw(Statement::from_string(
            new_primary.get_database_backend(),
            "SELECT pg_is_in_recovery()",
        ))
        .await
        .unwrap()
        .expect("a row")
        .try_get_by_index::<bool>(0)
        .unwrap();
    assert!(!in_recovery, "the standby was not promoted");
    Held::read(&new_primary, T)
        .await
        .unwrap()
        .check(&told, "the new primary");
    let backend = new_primary.get_database_backend();

    // Recovery: the Db serves on the new primary.
    let now_on = port(&db).await.unwrap();
    assert_ne!(now_on, primary_port, "still on the crashed primary's port?");
    assert!(transfer(&db, "after", 1, 2, 1).await.unwrap());
    let after = new_primary
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT count(*) FROM fo_transfers WHERE tid = 'after'",
        ))
        .await
        .unwrap()
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(
        after, 1,
        "the transfer after the failover is not on the new primary"
    );

    // The old primary back as a primary of its own, on its old timeline (split brain): a
    // Db made now, listing it first, and the Db that ran the failover, after losing a
    // session of the new primary, both write on the promoted one.
    let revive = pair.revive.clone();
    tokio::task::spawn_blocking(move || run(&revive))
        .await
        .unwrap();
    let mut fresh = Vec::new();
    for url in &pair.urls {
        let mut options = pool_options(url, 2);
        options.connect_lazy(true);
        fresh.push(Database::connect(options).await.unwrap());
    }
    let fresh = safe_db::Db::new(fresh[0].clone(), None).with_failover(vec![fresh[1].clone()]);
    assert_eq!(
        port(&fresh).await.unwrap(),
        now_on,
        "a fresh Db took the old primary"
    );
    let killed = kill_own_session_once(&db).await;
    assert_eq!(
        killed.unwrap(),
        now_on,
        "the Db went back to the old primary"
    );
    assert_eq!(port(&db).await.unwrap(), now_on);
}

/// A write whose first attempt loses its session (killed on the server), re-run with
/// `retries`: where it ran in the end.
#[safe_db_operation(retries = 3, timeout = "5s")]
async fn kill_own_session_once(tx: &Tx) -> Result<i32, Error> {
    static KILLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !KILLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        tx.execute_unprepared("SELECT pg_terminate_backend(pg_backend_pid())")
            .await?;
    }
    read_port(tx).await
}
