//! A PostgreSQL hot standby (`.ci/clusters/standby.sh`, streaming from the shared server,
//! started by `.ci/run` on 5433): `read_only` operations on a `Db` run there, but never read
//! older data than a commit made through the same `Db` (read-your-writes), and a standby
//! that lags beyond the bound or is down is skipped for the primary.
//!
//! `SAFE_DB_TEST_STANDBY_URL` names the standby (its primary is
//! `SAFE_DB_TEST_POSTGRES_URL`); `SAFE_DB_TEST_STANDBY_STOP` / `SAFE_DB_TEST_STANDBY_START`
//! are commands that stop and start it. Unset, the tests are skipped with one line, unless
//! `CI=true`.

use std::time::{Duration, Instant};

use safe_db::{Db, Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, capture, exec, ids, pool_options, server_url};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The primary's and the standby's URLs, after the skip-or-fail rule.
fn urls() -> Option<(String, String)> {
    let standby = env("SAFE_DB_TEST_STANDBY_URL");
    let primary = server_url(Backend::Postgres);
    match (primary, standby) {
        (Some(primary), Some(standby)) => Some((primary, standby)),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "CI=true but SAFE_DB_TEST_STANDBY_URL is not set");
            println!("SAFE_DB_TEST_STANDBY_URL is not set: the standby tests are skipped");
            None
        }
    }
}

/// Whether `tx` runs on a standby.
async fn in_recovery(tx: &Tx) -> Result<bool, Error> {
    let row = tx
        .query_one_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT pg_is_in_recovery()",
        ))
        .await?
        .expect("a row");
    Ok(row.try_get_by_index(0)?)
}

/// Where a read ran, and what it read.
#[safe_db_operation(read_only)]
async fn read(tx: &Tx, id: i32) -> Result<(bool, Vec<i32>), Error> {
    let on_standby = in_recovery(tx).await?;
    let found = ids(tx, &format!("SELECT id FROM standby_rows WHERE id = {id}")).await;
    Ok((on_standby, found))
}

#[safe_db_operation]
async fn write(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!("INSERT INTO standby_rows (id) VALUES ({id})"))
        .await?;
    Ok(())
}

/// Resumes the standby's replay when dropped (a failed assertion included), for the
/// scenarios after.
struct ResumeReplay(String);

impl Drop for ResumeReplay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(&self.0)
            .args(["-c", "SELECT pg_wal_replay_resume()"])
            .output();
    }
}

async fn replay(standby: &DatabaseConnection, on: bool) {
    let sql = if on {
        "SELECT pg_wal_replay_resume()"
    } else {
        "SELECT pg_wal_replay_pause()"
    };
    exec(standby, sql).await;
}

/// Waits until the standby has replayed everything the primary has written.
async fn caught_up(primary: &DatabaseConnection, standby: &DatabaseConnection) {
    let lsn = |db: &DatabaseConnection, sql: &'static str| {
        let db = db.clone();
        async move {
            let row = db
                .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<String>(0).unwrap()
        }
    };
    let target = lsn(primary, "SELECT pg_current_wal_lsn()::text").await;
    let started = Instant::now();
    loop {
        let row = standby
            .query_one_raw(Statement::from_string(
                standby.get_database_backend(),
                format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            ))
            .await
            .unwrap()
            .unwrap();
        if row.try_get_by_index::<bool>(0).unwrap() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the standby never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One standby for the three scenarios, which pause its replay and stop it: one after
/// the other.
#[tokio::test]
async fn a_standby_serves_reads_that_cannot_see_older_data_than_their_writes() {
    let Some((primary_url, standby_url)) = urls() else {
        return;
    };
    let primary = Database::connect(pool_options(&primary_url, 4))
        .await
        .unwrap();
    let standby = Database::connect(pool_options(&standby_url, 4))
        .await
        .unwrap();
    // Each scenario makes a `Db` of its own over these pools: nothing known of the standby.
    read_your_writes(&primary, &standby, &standby_url).await;
    a_lagging_standby_is_skipped_with_a_warning(&primary, &standby, &standby_url).await;
    a_stopped_standby_is_skipped_and_used_again_once_back(&primary, &standby).await;
    a_hung_standby_is_routed_around_within_the_deadline(&primary, &standby).await;
    // Last: a promoted standby is a standby no more.
    a_promoted_standby_is_dropped_with_a_warning(&primary, &standby).await;
}

/// The standby is promoted while its primary is still up (a failover gone wrong): a `Db`
/// that used it as its replica must not read there any more (it holds none of the
/// primary's later writes), and says so once.
async fn a_promoted_standby_is_dropped_with_a_warning(
    primary: &DatabaseConnection,
    standby: &DatabaseConnection,
) {
    let Some(promote) = env("SAFE_DB_TEST_STANDBY_PROMOTE") else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI=true but SAFE_DB_TEST_STANDBY_PROMOTE is not set");
        println!("SAFE_DB_TEST_STANDBY_PROMOTE is not set: skipped");
        return;
    };
    exec(primary, "DROP TABLE IF EXISTS standby_rows").await;
    exec(primary, "CREATE TABLE standby_rows (id INT PRIMARY KEY)").await;
    caught_up(primary, standby).await;
    let db = Db::new(primary.clone(), Some(standby.clone()));
    assert!(where_ran(&db).await.unwrap(), "the standby serves at first");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&promote)
        .status()
        .unwrap();
    assert!(status.success(), "{promote}");
    let (captured, _guard) = capture::start();
    // Writes, each followed by reads: every read sees the write before it.
    for id in 1..=5 {
        write(&db, id).await.unwrap();
        // Past the 200 ms for which the standby's answer is reused.
        tokio::time::sleep(Duration::from_millis(250)).await;
        for _ in 0..4 {
            let (on_standby, found) = read(&db, id).await.unwrap();
            assert!(
                !on_standby,
                "a read ran on a server in recovery after the promotion"
            );
            assert_eq!(found, vec![id], "a read after write {id} did not see it");
        }
    }
    assert!(
        captured.all_text().contains("no longer a standby"),
        "{}",
        captured.all_text()
    );
    exec(primary, "DROP TABLE standby_rows").await;
}

/// Where an operation ran: on the standby or not.
#[safe_db_operation(read_only)]
async fn where_ran(tx: &Tx) -> Result<bool, Error> {
    in_recovery(tx).await
}

/// The pair of commands named by `first` and `second`, or `None` (the scenario skipped;
/// under `CI=true` a missing one fails).
fn commands(first: &str, second: &str) -> Option<(String, String)> {
    let found = env(first).zip(env(second));
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI=true but {first}/{second} are not set");
        println!("{first}/{second} are not set: skipped");
    }
    found
}

fn run(cmd: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(status.success(), "{cmd}");
}

/// Runs a command when dropped: what undoes a scenario's fault whatever the test does.
struct Undo<'a>(&'a str);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(self.0)
            .status();
    }
}

/// Where an operation ran, under a short deadline.
#[safe_db_operation(read_only, timeout = "300ms", retries = 3)]
async fn where_ran_in_time(tx: &Tx) -> Result<bool, Error> {
    in_recovery(tx).await
}

/// The standby hangs (its processes SIGSTOPped: connections open, nothing answers): read-only
/// operations with a 300 ms deadline run on the primary, each within its deadline; once the
/// standby goes on, it serves again.
async fn a_hung_standby_is_routed_around_within_the_deadline(
    primary: &DatabaseConnection,
    standby: &DatabaseConnection,
) {
    let Some((pause, cont)) = commands("SAFE_DB_TEST_STANDBY_PAUSE", "SAFE_DB_TEST_STANDBY_CONT")
    else {
        return;
    };
    let db = Db::new(primary.clone(), Some(standby.clone()));
    assert!(where_ran(&db).await.unwrap(), "the standby serves at first");
    run(&pause);
    // Continued whatever happens below, for the tests after this one.
    let cont_guard = Undo(&cont);
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        let ran = where_ran_in_time(&db).await;
        slowest = slowest.max(started.elapsed());
        let on_standby = ran.unwrap_or_else(|e| panic!("operation {n} failed: {e}"));
        assert!(!on_standby, "operation {n} ran on the hung standby");
    }
    println!(
        "hung standby: 20 of 20 read-only operations on the primary, slowest {slowest:?} against 300 ms"
    );
    assert!(
        slowest <= Duration::from_millis(400),
        "slowest {slowest:?} against 300 ms"
    );
    drop(cont_guard);
    let back = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if where_ran(&db).await.unwrap_or(false) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the standby was not used again"
        );
    }
}

async fn read_your_writes(
    primary: &DatabaseConnection,
    standby: &DatabaseConnection,
    standby_url: &str,
) {
    exec(primary, "DROP TABLE IF EXISTS standby_rows").await;
    exec(
        primary,
        "CREATE TABLE standby_rows (id INTEGER PRIMARY KEY)",
    )
    .await;
    caught_up(primary, standby).await;
    let db = Db::new(primary.clone(), Some(standby.clone()));

    // No write through this Db yet: reads run on the standby.
    let (on_standby, _) = read(&db, 1).await.unwrap();
    assert!(
        on_standby,
        "a read with nothing to wait for runs on the standby"
    );

    // Replay paused: a write through the Db, then a read through it sees the write, on
    // the primary, since the standby has not replayed it.
    let _resume = ResumeReplay(standby_url.to_owned());
    replay(standby, false).await;
    write(&db, 1).await.unwrap();
    let (on_standby, found) = read(&db, 1).await.unwrap();
    assert_eq!(found, vec![1], "read-your-writes");
    assert!(!on_standby, "the standby had not replayed the commit");
    // Another Db, which wrote nothing, still reads the standby (and there, not the row).
    let other = Db::new(primary.clone(), Some(standby.clone()));
    let (on_standby, found) = read(&other, 1).await.unwrap();
    assert!(on_standby && found.is_empty(), "{on_standby} {found:?}");

    // Replay resumed: once the standby has caught up, reads go back to it, and see the row.
    replay(standby, true).await;
    caught_up(primary, standby).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (on_standby, found) = read(&db, 1).await.unwrap();
    assert!(on_standby, "the standby has replayed the commit");
    assert_eq!(found, vec![1]);
    exec(primary, "DROP TABLE standby_rows").await;
}

async fn a_lagging_standby_is_skipped_with_a_warning(
    primary: &DatabaseConnection,
    standby: &DatabaseConnection,
    standby_url: &str,
) {
    exec(
        primary,
        "CREATE TABLE IF NOT EXISTS standby_lag (id INTEGER)",
    )
    .await;
    caught_up(primary, standby).await;
    let _resume = ResumeReplay(standby_url.to_owned());
    replay(standby, false).await;
    // Written by someone else (not through the Db below): WAL the standby has received
    // but not replayed, growing older than the bound.
    exec(primary, "INSERT INTO standby_lag VALUES (1)").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db =
        Db::new(primary.clone(), Some(standby.clone())).max_replica_lag(Duration::from_secs(1));
    let (captured, _guard) = capture::start();
    let on_standby = where_ran(&db).await.unwrap();
    replay(standby, true).await;
    assert!(!on_standby, "a standby lagging beyond the bound is skipped");
    assert!(
        captured.all_text().contains("lags beyond its bound"),
        "{}",
        captured.all_text()
    );
    exec(primary, "DROP TABLE standby_lag").await;
}

async fn a_stopped_standby_is_skipped_and_used_again_once_back(
    primary: &DatabaseConnection,
    standby: &DatabaseConnection,
) {
    let Some((stop, start)) = commands("SAFE_DB_TEST_STANDBY_STOP", "SAFE_DB_TEST_STANDBY_START")
    else {
        return;
    };
    let db = Db::new(primary.clone(), Some(standby.clone()));
    assert!(where_ran(&db).await.unwrap(), "the standby serves at first");
    run(&stop);
    // Started again whatever happens below, for the tests after this one.
    let restart = Undo(&start);
    let (captured, _guard) = capture::start();
    let started = Instant::now();
    let on_standby = where_ran(&db)
        .await
        .unwrap_or_else(|e| panic!("{e}; seen: {}", captured.all_text()));
    assert!(!on_standby, "a stopped standby is skipped");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        captured.all_text().contains("cannot be reached"),
        "{}",
        captured.all_text()
    );
    drop(restart);
    let back = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if where_ran(&db).await.unwrap() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the standby was not used again"
        );
    }
}
