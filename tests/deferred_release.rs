//! A nested operation's `RELEASE`, deferred (`runtime/src/tx/release.rs`): sent before the
//! tree's next step, dropped by the outermost `COMMIT` or `ROLLBACK`, made moot by the
//! end of a savepoint made before it. First the savepoint facts the rules rest on, on
//! each database by hand; then what a caller sees, read back from each database, with the
//! `RELEASE`s that crossed the wire counted by a proxy on PostgreSQL and MariaDB.

use std::time::Duration;

use safe_db::testing::{Failure, Faults};
use safe_db::{Cause, Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::proxy::FaultProxy;
use safe_db_test_support::{Backend, TestDb, exec, ids};
use sea_orm::{ConnectionTrait, DatabaseConnection};

async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}

/// A test's database, a pool of one on it (through a counting proxy on a server), and
/// the proxy.
struct Place {
    t: TestDb,
    db: DatabaseConnection,
    proxy: Option<FaultProxy>,
}

impl Place {
    async fn all(test: &str) -> Vec<Place> {
        let mut out = Vec::new();
        for t in TestDb::all(test, 2).await {
            let (db, proxy) = match t.backend {
                Backend::Sqlite => (t.pool(1).await, None),
                _ => {
                    let proxy = FaultProxy::start(&t.url).await;
                    let db = t.pool_via(&proxy, 1).await;
                    (db, Some(proxy))
                }
            };
            out.push(Place { t, db, proxy });
        }
        out
    }

    /// From now on, counts the messages that hold each pattern (on a server).
    fn count(&self, patterns: &[&str]) {
        if let Some(proxy) = &self.proxy {
            for pattern in patterns {
                proxy.count(pattern);
            }
        }
    }

    /// The messages that held `pattern` since [`Place::count`]: `None` on SQLite, which
    /// has no wire.
    fn counted(&self, pattern: &str) -> Option<usize> {
        self.proxy.as_ref().map(|proxy| proxy.counted(pattern))
    }

    /// The `SAVEPOINT` messages since [`Place::count`] was given [`SAVEPOINT`],
    /// [`RELEASE`] and [`ROLLBACK_TO`].
    fn savepoints(&self) -> Option<usize> {
        Some(self.counted(SAVEPOINT)? - self.counted(RELEASE)? - self.counted(ROLLBACK_TO)?)
    }

    /// Nothing was left open on the pool's one connection: code that does not use
    /// safe-db writes on it and is committed at once, and an operation commits.
    async fn clean(&self, id: i32) {
        self.t.assert_plain_write_committed(&self.db, id).await;
        one(&self.db, id + 1)
            .await
            .unwrap_or_else(|e| panic!("{:?}: the pool after: {e}", self.t.backend));
        assert!(self.t.agent_ids().await.contains(&(id + 1)));
    }

    async fn cleanup(self) {
        drop(self.db);
        self.t.cleanup().await;
    }

    /// [`Place::clean`], then [`Place::cleanup`].
    async fn done(self, id: i32) {
        self.clean(id).await;
        self.cleanup().await;
    }

    /// On a server, `n` messages holding `pattern` crossed the wire since [`Place::count`].
    fn on_wire(&self, pattern: &str, n: usize) {
        if let Some(counted) = self.counted(pattern) {
            assert_eq!(counted, n, "{:?}: {pattern}", self.t.backend);
        }
    }

    /// On a server, `n` `SAVEPOINT` messages since [`Place::count`] (see
    /// [`Place::savepoints`]).
    fn savepoints_sent(&self, n: usize) {
        if let Some(sent) = self.savepoints() {
            assert_eq!(sent, n, "{:?}: SAVEPOINT messages", self.t.backend);
        }
    }
}

const RELEASE: &str = "RELEASE SAVEPOINT";
/// In a `SAVEPOINT` message, and in every `RELEASE` and `ROLLBACK TO` too: see
/// [`Place::savepoints`].
const SAVEPOINT: &str = "SAVEPOINT safe_db";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT";

// ---- The savepoint facts the rules rest on, by hand on one connection of each database.

/// Runs `sql` on `db` (a pool of one: every call runs on the same connection).
async fn run(db: &DatabaseConnection, sql: &str) -> Result<(), sea_orm::DbErr> {
    db.execute_unprepared(sql).await.map(drop)
}

#[tokio::test]
async fn savepoints_end_as_the_rules_say_on_every_database() {
    for t in TestDb::all("release_facts", 2).await {
        let db = t.pool(1).await;
        let b = t.backend;
        // Rule 2: a COMMIT with savepoints still open commits their work, and ends them.
        run(&db, "BEGIN").await.unwrap();
        run(&db, "SAVEPOINT a").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (1, 'a1')")
            .await
            .unwrap();
        run(&db, "SAVEPOINT b").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (2, 'a2')")
            .await
            .unwrap();
        run(&db, "COMMIT").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2], "{b:?}");
        // ... and a ROLLBACK undoes it, leaving no transaction open.
        run(&db, "BEGIN").await.unwrap();
        run(&db, "SAVEPOINT a").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (3, 'a3')")
            .await
            .unwrap();
        run(&db, "ROLLBACK").await.unwrap();
        t.assert_plain_write_committed(&db, 4).await;
        assert_eq!(t.agent_ids().await, vec![1, 2, 4], "{b:?}");
        // Rules 3 and 4: a RELEASE of an earlier savepoint ends the later ones (their
        // RELEASE then fails: there is none left), and keeps their work.
        run(&db, "BEGIN").await.unwrap();
        run(&db, "SAVEPOINT a").await.unwrap();
        run(&db, "SAVEPOINT b").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (5, 'a5')")
            .await
            .unwrap();
        run(&db, "RELEASE SAVEPOINT a").await.unwrap();
        let gone = run(&db, "RELEASE SAVEPOINT b").await;
        assert!(gone.is_err(), "{b:?}: b outlived the RELEASE of a");
        run(&db, "ROLLBACK").await.unwrap();
        run(&db, "BEGIN").await.unwrap();
        run(&db, "SAVEPOINT a").await.unwrap();
        run(&db, "SAVEPOINT b").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (5, 'a5')")
            .await
            .unwrap();
        run(&db, "RELEASE SAVEPOINT a").await.unwrap();
        run(&db, "COMMIT").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2, 4, 5], "{b:?}");
        // Rule 3: a ROLLBACK TO an earlier savepoint ends the later ones and undoes them.
        run(&db, "BEGIN").await.unwrap();
        run(&db, "SAVEPOINT a").await.unwrap();
        run(&db, "SAVEPOINT b").await.unwrap();
        run(&db, "INSERT INTO agents (id, name) VALUES (6, 'a6')")
            .await
            .unwrap();
        run(&db, "ROLLBACK TO SAVEPOINT a").await.unwrap();
        let gone = run(&db, "RELEASE SAVEPOINT b").await;
        assert!(gone.is_err(), "{b:?}: b outlived the ROLLBACK TO a");
        run(&db, "ROLLBACK").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2, 4, 5], "{b:?}");
        drop(db);
        t.cleanup().await;
    }
}

// ---- What a caller sees.

#[safe_db_operation]
async fn one(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await
}

#[safe_db_operation]
async fn fails(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    Err(Error::new(ErrorKind::Validation, "the body gives up"))
}

#[safe_db_operation]
async fn inner_ok_then_err(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    one(tx, id + 1).await?;
    Err(Error::new(ErrorKind::Validation, "the caller gives up"))
}

#[safe_db_operation]
async fn inner_last(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    one(tx, id + 1).await
}

#[tokio::test]
async fn an_inner_ok_then_its_caller_err_commits_nothing() {
    for p in Place::all("release_outer_err").await {
        p.count(&[RELEASE]);
        let result = inner_ok_then_err(&p.db, 1).await;
        assert!(result.is_err(), "{:?}", p.t.backend);
        assert_eq!(
            p.t.agent_ids().await,
            Vec::<i32>::new(),
            "{:?}",
            p.t.backend
        );
        // The ROLLBACK dropped the RELEASE owed.
        assert!(matches!(p.counted(RELEASE), None | Some(0)));
        p.done(100).await;
    }
}

#[tokio::test]
async fn an_inner_ok_called_last_commits_both_without_a_release() {
    for p in Place::all("release_last").await {
        p.count(&[RELEASE, SAVEPOINT, ROLLBACK_TO, "COMMIT"]);
        inner_last(&p.db, 1).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 2], "{:?}", p.t.backend);
        p.savepoints_sent(1);
        p.on_wire(RELEASE, 0);
        p.on_wire("COMMIT", 1);
        p.done(100).await;
    }
}

#[safe_db_operation]
async fn siblings(tx: &Tx, n: i32) -> Result<(), Error> {
    insert(tx, 1).await?;
    for i in 0..n {
        one(tx, 1000 + i).await?;
    }
    Ok(())
}

#[tokio::test]
async fn two_hundred_siblings_in_one_caller_all_commit() {
    for p in Place::all("release_siblings").await {
        p.count(&[RELEASE, SAVEPOINT, ROLLBACK_TO]);
        siblings(&p.db, 200).await.unwrap();
        let rows = p.t.agent_ids().await;
        let want: Vec<i32> = std::iter::once(1).chain(1000..1200).collect();
        assert_eq!(rows, want, "{:?}", p.t.backend);
        // Each SAVEPOINT after the first sends the RELEASE owed before it: savepoints
        // never pile up; the last one's goes with the COMMIT.
        p.savepoints_sent(200);
        p.on_wire(RELEASE, 199);
        p.done(5000).await;
    }
}

#[safe_db_operation]
async fn level3(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await
}

#[safe_db_operation]
async fn level2(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    level3(tx, id + 1).await
}

#[safe_db_operation]
async fn level1(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    level2(tx, id + 1).await
}

/// Three nested levels, each calling the next last; then, if `after`, one more statement.
#[safe_db_operation]
async fn chain(tx: &Tx, after: bool) -> Result<(), Error> {
    insert(tx, 1).await?;
    level1(tx, 2).await?;
    if after {
        insert(tx, 9).await?;
    }
    Ok(())
}

#[tokio::test]
async fn three_nested_tail_calls_send_no_release() {
    for p in Place::all("release_depth3").await {
        let b = p.t.backend;
        p.count(&[
            RELEASE,
            SAVEPOINT,
            ROLLBACK_TO,
            "safe_db_1",
            "safe_db_2",
            "safe_db_3",
        ]);
        chain(&p.db, false).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 2, 3, 4], "{b:?}");
        p.savepoints_sent(3);
        p.on_wire(RELEASE, 0);
        exec(&p.t.db, "DELETE FROM agents").await;
        // A statement after the chain: one RELEASE, of the first level's savepoint, which
        // ends the deeper ones too (each level's replaced the one below it).
        p.count(&[
            RELEASE,
            SAVEPOINT,
            ROLLBACK_TO,
            "safe_db_1",
            "safe_db_2",
            "safe_db_3",
        ]);
        chain(&p.db, true).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 2, 3, 4, 9], "{b:?}");
        p.on_wire(RELEASE, 1);
        // SAVEPOINT and RELEASE of safe_db_1; SAVEPOINT only of the deeper ones.
        p.on_wire("safe_db_1", 2);
        p.on_wire("safe_db_2", 1);
        p.on_wire("safe_db_3", 1);
        p.done(100).await;
    }
}

/// An inner operation succeeds, then a sibling fails and is swallowed: only the sibling's
/// work goes.
#[safe_db_operation]
async fn then_a_sibling_fails(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    one(tx, 2).await?;
    assert!(fails(tx, 3).await.is_err());
    insert(tx, 4).await
}

/// A nested level whose own nested call succeeded, then fails: both go.
#[safe_db_operation]
async fn middle_fails_after_its_inner(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    one(tx, id + 1).await?;
    Err(Error::new(ErrorKind::Validation, "the middle gives up"))
}

#[safe_db_operation]
async fn then_the_middle_fails(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    assert!(middle_fails_after_its_inner(tx, 10).await.is_err());
    one(tx, 20).await
}

#[tokio::test]
async fn an_inner_ok_then_a_failure_rolls_back_only_what_failed() {
    for p in Place::all("release_sibling_err").await {
        let b = p.t.backend;
        then_a_sibling_fails(&p.db).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 2, 4], "{b:?}");
        exec(&p.t.db, "DELETE FROM agents").await;
        // The middle level's ROLLBACK TO makes its inner's RELEASE owed moot.
        p.count(&[RELEASE]);
        then_the_middle_fails(&p.db).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 20], "{b:?}");
        p.on_wire(RELEASE, 0);
        p.done(100).await;
    }
}

#[safe_db_operation]
async fn inner_then_stream(tx: &Tx) -> Result<Vec<i32>, Error> {
    use futures_util::StreamExt;
    use sea_orm::StreamTrait;
    insert(tx, 1).await?;
    one(tx, 2).await?;
    let backend = ConnectionTrait::get_database_backend(tx);
    let sql = "SELECT id FROM agents ORDER BY id";
    let mut rows = tx
        .stream_raw(sea_orm::Statement::from_string(backend, sql))
        .await?;
    let mut seen = Vec::new();
    while let Some(row) = rows.next().await {
        seen.push(row?.try_get_by_index::<i32>(0)?);
    }
    drop(rows);
    one(tx, 3).await?;
    Ok(seen)
}

#[tokio::test]
async fn a_stream_after_an_inner_ok_sees_its_rows() {
    for p in Place::all("release_stream").await {
        let b = p.t.backend;
        p.count(&[RELEASE]);
        let seen = inner_then_stream(&p.db).await.unwrap();
        assert_eq!(seen, vec![1, 2], "{b:?}");
        assert_eq!(p.t.agent_ids().await, vec![1, 2, 3], "{b:?}");
        // The first inner's, before the stream; not the last one's.
        p.on_wire(RELEASE, 1);
        p.done(100).await;
    }
}

/// An inner operation succeeds, then the caller waits for ever (until it is dropped).
#[safe_db_operation]
async fn inner_then_hangs(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    one(tx, id + 1).await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// A nested level whose inner succeeded is dropped (its caller's `select!`); the caller
/// goes on and commits its own work only.
#[safe_db_operation]
async fn drops_a_middle(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    let dropped = tokio::time::timeout(Duration::from_millis(100), inner_then_hangs(tx, 10)).await;
    assert!(dropped.is_err());
    insert(tx, 2).await
}

#[tokio::test]
async fn a_caller_dropped_after_an_inner_ok_commits_nothing() {
    for p in Place::all("release_dropped").await {
        let b = p.t.backend;
        let dropped =
            tokio::time::timeout(Duration::from_millis(200), inner_then_hangs(&p.db, 1)).await;
        assert!(dropped.is_err(), "{b:?}");
        assert_eq!(p.t.agent_ids().await, Vec::<i32>::new(), "{b:?}");
        // The connection was rolled back before anyone got it again.
        p.clean(100).await;
        exec(&p.t.db, "DELETE FROM agents").await;
        // Nested: the dropped level is rolled back to (its inner's RELEASE owed is moot).
        drops_a_middle(&p.db).await.unwrap();
        assert_eq!(p.t.agent_ids().await, vec![1, 2], "{b:?}");
        p.done(200).await;
    }
}

/// A nested level whose own inner succeeded last; its commit is made to fail.
#[safe_db_operation]
async fn checkout(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    one(tx, id + 1).await
}

#[safe_db_operation]
async fn shop(tx: &Tx) -> Result<bool, Error> {
    insert(tx, 1).await?;
    let failed = checkout(tx, 10).await.is_err();
    Ok(failed)
}

#[tokio::test]
async fn a_nested_commit_fault_still_fails_its_operation() {
    for p in Place::all("release_fault").await {
        let b = p.t.backend;
        let faults = Faults::new().fail_commit("checkout", Failure::UniqueViolation);
        let failed = faults.run(shop(&p.db)).await.unwrap();
        assert!(
            failed,
            "{b:?}: the commit fault did not reach its operation"
        );
        assert_eq!(faults.fired(), 1, "{b:?}");
        assert_eq!(p.t.agent_ids().await, vec![1], "{b:?}");
        // The fault on the inner called last: its caller sees it at once.
        exec(&p.t.db, "DELETE FROM agents").await;
        let faults = Faults::new().fail_commit("one", Failure::UniqueViolation);
        let failed = faults.run(shop(&p.db)).await.unwrap();
        assert!(failed, "{b:?}");
        assert_eq!(p.t.agent_ids().await, vec![1], "{b:?}");
        p.done(100).await;
    }
}

#[tokio::test]
async fn nothing_is_left_owed_across_operations_on_one_connection() {
    // The pool's one connection goes from tree to tree: a RELEASE owed by one never
    // reaches the next (each reads back only its own rows).
    for p in Place::all("release_next_user").await {
        for round in 0..20 {
            let base = 100 * (round + 1);
            inner_last(&p.db, base).await.unwrap();
            let _ = inner_ok_then_err(&p.db, base + 50).await;
            let rows = ids(
                &p.t.db,
                &format!(
                    "SELECT id FROM agents WHERE id >= {base} AND id < {} ORDER BY id",
                    base + 100
                ),
            )
            .await;
            assert_eq!(
                rows,
                vec![base, base + 1],
                "{:?} round {round}",
                p.t.backend
            );
        }
        p.done(5000).await;
    }
}

#[safe_db_operation]
async fn inner_then_write(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    one(tx, 2).await?;
    insert(tx, 3).await
}

#[tokio::test]
async fn a_release_that_fails_when_sent_fails_the_next_step_and_commits_nothing() {
    for p in Place::all("release_fails_late").await {
        let Some(proxy) = &p.proxy else {
            continue;
        };
        let b = p.t.backend;
        // The connection dies as the RELEASE owed goes, before the caller's next write.
        proxy.kill_before(RELEASE);
        let result = inner_then_write(&p.db).await;
        assert_eq!(proxy.killed(), 1, "{b:?}");
        let err = result.expect_err("the caller's write after the lost RELEASE");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{b:?}: {err}");
        assert_eq!(p.t.agent_ids().await, Vec::<i32>::new(), "{b:?}");
        p.done(100).await;
    }
}

/// A nested operation abandons a statement that fails after it has stopped waiting, and
/// returns `Ok`: PostgreSQL has aborted the transaction. Its end reads the answer owed
/// before it decides on a RELEASE, deferred or not (`owed.rs`): the failure is seen there,
/// where a deferred RELEASE dropped by the caller's COMMIT would have let that COMMIT roll
/// back without an error.
#[safe_db_operation]
async fn abandons_a_failing_statement(tx: &Tx) -> Result<(), Error> {
    let sql = "INSERT INTO agents (id, name) SELECT 1, 'again' FROM pg_sleep(0.3)";
    let abandoned = tokio::time::timeout(Duration::from_millis(50), tx.execute_unprepared(sql));
    assert!(
        abandoned.await.is_err(),
        "the statement answered within 50 ms"
    );
    Ok(())
}

#[safe_db_operation]
async fn calls_an_abandoner_last(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    abandons_a_failing_statement(tx).await
}

#[tokio::test]
async fn a_nested_abandoned_failure_is_seen_before_its_release() {
    for p in Place::all("release_abandoned").await {
        if p.t.backend != Backend::Postgres {
            continue;
        }
        let result = calls_an_abandoner_last(&p.db).await;
        assert!(result.is_err(), "reported committed: {result:?}");
        assert_eq!(p.t.agent_ids().await, Vec::<i32>::new());
        p.done(100).await;
    }
}

/// The RELEASE owed goes before the caller's next write and its answer never comes
/// (a frozen connection): the write is cut off by the caller, so whether the savepoint
/// was released is not known. Nothing later runs, and nothing commits.
#[safe_db_operation]
async fn write_cut_off_after_an_inner(tx: &Tx) -> Result<bool, Error> {
    insert(tx, 1).await?;
    one(tx, 2).await?;
    let cut = tokio::time::timeout(Duration::from_millis(300), insert(tx, 3)).await;
    assert!(cut.is_err(), "the write behind the frozen RELEASE answered");
    let after = insert(tx, 4).await;
    Ok(after.is_err())
}

#[tokio::test]
async fn a_release_cut_off_on_the_wire_leaves_nothing_to_commit() {
    for p in Place::all("release_unconfirmed").await {
        let Some(proxy) = &p.proxy else {
            continue;
        };
        let b = p.t.backend;
        proxy.freeze_after(RELEASE);
        let result = write_cut_off_after_an_inner(&p.db).await;
        assert_eq!(proxy.frozen(), 1, "{b:?}");
        let err = result.expect_err("committed after a RELEASE whose outcome is unknown");
        assert_eq!(err.cause(), Some(&Cause::TreeBroken), "{b:?}: {err}");
        assert_eq!(p.t.agent_ids().await, Vec::<i32>::new(), "{b:?}");
        p.done(100).await;
    }
}
