//! Conformance: `isolation = X` gives X, proven with Martin Kleppmann's Hermitage scripts
//! (github.com/ept/hermitage), driven step by step through `#[safe_db_operation(isolation
//! = ..)]` operations, sessions interleaved by the test.
//!
//! Each anomaly is judged from what the sessions read and what was committed, so a level
//! that allows an anomaly shows it happening (the suite can fail), and a level that
//! prevents it shows the rows it must (a statement that blocks, a serialization failure
//! or a deadlock are all ways of preventing it). A step that has not answered within
//! 700 ms counts as blocked: the script goes on with the other session, and every answer
//! is collected at the end. The expected verdicts are those the databases document; the
//! table is in CONFORMANCE.md.

use std::time::Duration;

use safe_db::{Error, Isolation, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, exec};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tokio::sync::{mpsc, oneshot};

/// What a step answers: the `(id, value)` rows of a query (none for other statements),
/// or the error's text.
type Answer = Result<Vec<(i32, i32)>, String>;

enum Step {
    Sql(String),
    Commit,
    Abort,
}

/// How long a step may take before the session counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_millis(700);
/// How long every answer may take to come once the script has sent all its steps.
const ANSWERED_WITHIN: Duration = Duration::from_secs(15);

async fn run_sql(tx: &Tx, sql: &str) -> Answer {
    if sql.starts_with("SELECT") {
        let rows = tx
            .query_all_raw(Statement::from_string(tx.get_database_backend(), sql))
            .await
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| {
                let id = r.try_get_by_index::<i32>(0).map_err(|e| e.to_string())?;
                let value = r.try_get_by_index::<i32>(1).map_err(|e| e.to_string())?;
                Ok((id, value))
            })
            .collect()
    } else {
        tx.execute_unprepared(sql)
            .await
            .map(|_| Vec::new())
            .map_err(|e| e.to_string())
    }
}

/// One transaction of a script: a safe-db operation whose body runs the steps it is sent,
/// in order, until it is told to commit (the body returns `Ok`) or to abort (`Err`).
struct Session {
    steps: mpsc::UnboundedSender<(Step, oneshot::Sender<Answer>)>,
}

type Inbox = mpsc::UnboundedReceiver<(Step, oneshot::Sender<Answer>)>;

/// A session's body: the steps it is sent, until the one that ends it.
async fn steps(
    tx: &Tx,
    inbox: &mut Inbox,
    last: &mut Option<oneshot::Sender<Answer>>,
) -> Result<(), Error> {
    while let Some((step, answer)) = inbox.recv().await {
        match step {
            Step::Sql(sql) => {
                let _ = answer.send(run_sql(tx, &sql).await);
            }
            Step::Commit => {
                *last = Some(answer);
                return Ok(());
            }
            Step::Abort => {
                *last = Some(answer);
                return Err(Error::validation("aborted by the script"));
            }
        }
    }
    Err(Error::validation("the script ended without committing"))
}

/// One annotated operation per level (the attribute takes the level through a
/// `macro_rules!` fragment).
macro_rules! sessions {
    ($($name:ident = $level:literal;)*) => {$(
        #[safe_db_operation(isolation = $level)]
        async fn $name(
            tx: &Tx,
            inbox: &mut Inbox,
            last: &mut Option<oneshot::Sender<Answer>>,
        ) -> Result<(), Error> {
            steps(tx, inbox, last).await
        }
    )*};
}

sessions! {
    read_uncommitted = "read_uncommitted";
    read_committed = "read_committed";
    repeatable_read = "repeatable_read";
    serializable = "serializable";
}

impl Session {
    fn begin(db: &DatabaseConnection, isolation: Isolation) -> Session {
        let (steps, mut inbox) = mpsc::unbounded_channel::<(Step, oneshot::Sender<Answer>)>();
        let db = db.clone();
        tokio::spawn(async move {
            // The last step's answer is the operation's outcome, sent once it has ended.
            let mut last = None;
            let ended = match isolation {
                Isolation::ReadUncommitted => read_uncommitted(&db, &mut inbox, &mut last).await,
                Isolation::ReadCommitted => read_committed(&db, &mut inbox, &mut last).await,
                Isolation::RepeatableRead => repeatable_read(&db, &mut inbox, &mut last).await,
                Isolation::Serializable => serializable(&db, &mut inbox, &mut last).await,
            };
            if let Some(answer) = last {
                let _ = answer.send(ended.map(|()| Vec::new()).map_err(|e| e.to_string()));
            }
        });
        Session { steps }
    }
}

/// A script: its sessions' steps in order, and their answers.
struct Script {
    sessions: Vec<Session>,
    pending: Vec<Option<oneshot::Receiver<Answer>>>,
    answers: Vec<Option<Answer>>,
    /// Per step: whether it had not answered when the script went on.
    blocked_at_send: Vec<bool>,
}

impl Script {
    fn new(db: &DatabaseConnection, level: Isolation, sessions: usize) -> Script {
        Script {
            sessions: (0..sessions).map(|_| Session::begin(db, level)).collect(),
            pending: Vec::new(),
            answers: Vec::new(),
            blocked_at_send: Vec::new(),
        }
    }

    /// Sends `step` to session `t` (1-based, as in Hermitage) and gives it a moment to
    /// answer. Returns the step's number, to read its answer with [`Script::answer`].
    async fn step(&mut self, t: usize, step: Step) -> usize {
        let (answer, mut rx) = oneshot::channel();
        self.sessions[t - 1]
            .steps
            .send((step, answer))
            .expect("session alive");
        let got = tokio::time::timeout(BLOCKED_AFTER, &mut rx).await.ok();
        self.blocked_at_send.push(got.is_none());
        self.answers.push(got.map(|a| a.expect("answered")));
        self.pending
            .push(self.answers.last().unwrap().is_none().then_some(rx));
        self.answers.len() - 1
    }

    async fn sql(&mut self, t: usize, sql: &str) -> usize {
        self.step(t, Step::Sql(sql.to_owned())).await
    }

    async fn commit(&mut self, t: usize) -> usize {
        self.step(t, Step::Commit).await
    }

    async fn abort(&mut self, t: usize) -> usize {
        self.step(t, Step::Abort).await
    }

    /// Waits for every answer.
    async fn finish(&mut self) {
        for (n, pending) in self.pending.iter_mut().enumerate() {
            if let Some(rx) = pending {
                let answer = tokio::time::timeout(ANSWERED_WITHIN, rx)
                    .await
                    .unwrap_or_else(|_| panic!("step {n} never answered"))
                    .expect("answered");
                self.answers[n] = Some(answer);
            }
        }
    }

    fn answer(&self, n: usize) -> &Answer {
        self.answers[n].as_ref().expect("finished")
    }

    /// The value step `n` read for row `id`, if it read it.
    fn read(&self, n: usize, id: i32) -> Option<i32> {
        match self.answer(n) {
            Ok(rows) => rows.iter().find(|(i, _)| *i == id).map(|(_, v)| *v),
            Err(_) => None,
        }
    }

    /// Whether step `n` answered before the script went on (it did not block).
    fn at_once(&self, n: usize) -> bool {
        !self.blocked_at_send[n]
    }

    fn ok(&self, n: usize) -> bool {
        self.answer(n).is_ok()
    }
}

/// What a script showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The anomaly happened.
    Allowed,
    /// It did not.
    Prevented,
}

use Verdict::{Allowed, Prevented};

fn verdict(anomaly: bool) -> Verdict {
    if anomaly { Allowed } else { Prevented }
}

async fn setup(db: &DatabaseConnection) {
    exec(db, "DROP TABLE IF EXISTS test").await;
    exec(
        db,
        "CREATE TABLE test (id INTEGER PRIMARY KEY, value INTEGER)",
    )
    .await;
    exec(db, "INSERT INTO test (id, value) VALUES (1, 10), (2, 20)").await;
}

async fn table(db: &DatabaseConnection) -> Vec<(i32, i32)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, value FROM test ORDER BY id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let id = r.try_get_by_index::<i32>(0).unwrap();
            (id, r.try_get_by_index::<i32>(1).unwrap())
        })
        .collect()
}

/// G0, write cycles: two transactions writing the same two rows end in a serial order.
async fn g0(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 12 WHERE id = 1").await;
    s.sql(1, "UPDATE test SET value = 21 WHERE id = 2").await;
    s.commit(1).await;
    s.sql(2, "UPDATE test SET value = 22 WHERE id = 2").await;
    s.commit(2).await;
    s.finish().await;
    let end = table(db).await;
    verdict(!(end == [(1, 12), (2, 22)] || end == [(1, 11), (2, 21)]))
}

/// G1a, aborted read: nobody sees a write that was rolled back.
async fn g1a(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    s.sql(1, "UPDATE test SET value = 101 WHERE id = 1").await;
    let read = s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.abort(1).await;
    let again = s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.commit(2).await;
    s.finish().await;
    verdict(s.read(read, 1) == Some(101) || s.read(again, 1) == Some(101))
}

/// G1b, intermediate read: nobody sees a value that was not a transaction's last.
async fn g1b(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    s.sql(1, "UPDATE test SET value = 101 WHERE id = 1").await;
    let read = s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.commit(1).await;
    s.commit(2).await;
    s.finish().await;
    verdict(s.read(read, 1) == Some(101))
}

/// G1c, circular information flow: two uncommitted transactions each see the other's
/// write.
async fn g1c(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 22 WHERE id = 2").await;
    let r1 = s.sql(1, "SELECT id, value FROM test WHERE id = 2").await;
    let r2 = s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.commit(1).await;
    s.commit(2).await;
    s.finish().await;
    verdict(s.read(r1, 2) == Some(22) && s.read(r2, 1) == Some(11))
}

/// PMP, predicate-many-preceders: a transaction's second predicate read sees a row that
/// another transaction inserted and committed after its first found none.
async fn pmp(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    let first = s
        .sql(1, "SELECT id, value FROM test WHERE value = 30")
        .await;
    s.sql(2, "INSERT INTO test (id, value) VALUES (3, 30)")
        .await;
    s.commit(2).await;
    let second = s
        .sql(1, "SELECT id, value FROM test WHERE value % 3 = 0")
        .await;
    s.commit(1).await;
    s.finish().await;
    let none_first = matches!(s.answer(first), Ok(rows) if rows.is_empty());
    verdict(none_first && s.read(second, 3) == Some(30))
}

/// P4, lost update: two transactions read 10 and both write 11; the update is lost if
/// both commit having read the same 10.
async fn p4(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    let r1 = s.sql(1, "SELECT id, value FROM test WHERE id = 1").await;
    let r2 = s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 11 WHERE id = 1").await;
    let c1 = s.commit(1).await;
    let c2 = s.commit(2).await;
    s.finish().await;
    verdict(s.ok(c1) && s.ok(c2) && s.read(r1, 1) == Some(10) && s.read(r2, 1) == Some(10))
}

/// G-single, read skew: a transaction sees one row before and the other after another
/// transaction's update of both (10 + 18, where every committed state sums to 30).
async fn g_single(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    let r1 = s.sql(1, "SELECT id, value FROM test WHERE id = 1").await;
    s.sql(2, "SELECT id, value FROM test WHERE id = 1").await;
    s.sql(2, "SELECT id, value FROM test WHERE id = 2").await;
    s.sql(2, "UPDATE test SET value = 12 WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 18 WHERE id = 2").await;
    s.commit(2).await;
    let r2 = s.sql(1, "SELECT id, value FROM test WHERE id = 2").await;
    s.commit(1).await;
    s.finish().await;
    match (s.read(r1, 1), s.read(r2, 2)) {
        (Some(a), Some(b)) => verdict(a + b != 30),
        _ => Prevented,
    }
}

/// G2-item, write skew: two transactions read both rows and each updates one; both
/// commit having read the same, original state.
async fn g2_item(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    let r1 = s
        .sql(1, "SELECT id, value FROM test WHERE id IN (1, 2)")
        .await;
    let r2 = s
        .sql(2, "SELECT id, value FROM test WHERE id IN (1, 2)")
        .await;
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 21 WHERE id = 2").await;
    let c1 = s.commit(1).await;
    let c2 = s.commit(2).await;
    s.finish().await;
    let original = |n| s.read(n, 1) == Some(10) && s.read(n, 2) == Some(20);
    verdict(s.ok(c1) && s.ok(c2) && original(r1) && original(r2))
}

/// OTV, observed transaction vanishes: a third transaction sees T1's writes and then a
/// state where they are gone, or sees T2's writes before T2 has committed.
async fn otv(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 3);
    s.sql(1, "UPDATE test SET value = 11 WHERE id = 1").await;
    s.sql(1, "UPDATE test SET value = 19 WHERE id = 2").await;
    s.sql(2, "UPDATE test SET value = 12 WHERE id = 1").await;
    s.commit(1).await;
    let r1 = s.sql(3, "SELECT id, value FROM test WHERE id = 1").await;
    s.sql(2, "UPDATE test SET value = 18 WHERE id = 2").await;
    let r2 = s.sql(3, "SELECT id, value FROM test WHERE id = 2").await;
    s.commit(2).await;
    s.sql(3, "SELECT id, value FROM test WHERE id = 2").await;
    s.commit(3).await;
    s.finish().await;
    let (a, b) = (s.read(r1, 1), s.read(r2, 2));
    let dirty = (s.at_once(r1) && a == Some(12)) || (s.at_once(r2) && b == Some(18));
    let vanished = a == Some(11) && b == Some(20);
    verdict(dirty || vanished)
}

/// G2, anti-dependency cycle over a predicate: two transactions each find no row matching
/// a predicate, each insert one that matches, and both commit.
async fn g2(db: &DatabaseConnection, level: Isolation) -> Verdict {
    setup(db).await;
    let mut s = Script::new(db, level, 2);
    let r1 = s
        .sql(1, "SELECT id, value FROM test WHERE value % 3 = 0")
        .await;
    let r2 = s
        .sql(2, "SELECT id, value FROM test WHERE value % 3 = 0")
        .await;
    s.sql(1, "INSERT INTO test (id, value) VALUES (3, 30)")
        .await;
    s.sql(2, "INSERT INTO test (id, value) VALUES (4, 42)")
        .await;
    let c1 = s.commit(1).await;
    let c2 = s.commit(2).await;
    s.finish().await;
    let empty = |n| matches!(s.answer(n), Ok(rows) if rows.is_empty());
    verdict(s.ok(c1) && s.ok(c2) && empty(r1) && empty(r2))
}

const ANOMALIES: [&str; 10] = [
    "G0", "G1a", "G1b", "G1c", "OTV", "PMP", "P4", "G-single", "G2-item", "G2",
];

async fn run(name: &str, db: &DatabaseConnection, level: Isolation) -> Verdict {
    match name {
        "G0" => g0(db, level).await,
        "G1a" => g1a(db, level).await,
        "G1b" => g1b(db, level).await,
        "G1c" => g1c(db, level).await,
        "PMP" => pmp(db, level).await,
        "P4" => p4(db, level).await,
        "G-single" => g_single(db, level).await,
        "G2-item" => g2_item(db, level).await,
        "OTV" => otv(db, level).await,
        "G2" => g2(db, level).await,
        _ => unreachable!(),
    }
}

/// The anomalies a level allows, as each database documents it (CONFORMANCE.md).
fn allowed(
    backend: Backend,
    snapshot_isolation: bool,
    level: Isolation,
) -> &'static [&'static str] {
    use Isolation::*;
    match (backend, level) {
        // PostgreSQL: read uncommitted is read committed; repeatable read is snapshot
        // isolation; serializable is SSI.
        (Backend::Postgres, ReadUncommitted | ReadCommitted) => {
            &["PMP", "P4", "G-single", "G2-item", "G2"]
        }
        (Backend::Postgres, RepeatableRead) => &["G2-item", "G2"],
        (Backend::Postgres, Serializable) => &[],
        // MariaDB (InnoDB). With `innodb_snapshot_isolation` on, a repeatable-read write
        // to a row changed since the snapshot fails (1020), which prevents lost updates.
        (Backend::MySql, ReadUncommitted) => &[
            "G1a", "G1b", "G1c", "OTV", "PMP", "P4", "G-single", "G2-item", "G2",
        ],
        (Backend::MySql, ReadCommitted) => &["PMP", "P4", "G-single", "G2-item", "G2"],
        (Backend::MySql, RepeatableRead) if snapshot_isolation => &["G2-item", "G2"],
        (Backend::MySql, RepeatableRead) => &["P4", "G2-item", "G2"],
        (Backend::MySql, Serializable) => &[],
        // SQLite: every transaction is serializable (writers serialize at BEGIN).
        (Backend::Sqlite, _) => &[],
    }
}

const LEVELS: [Isolation; 4] = [
    Isolation::ReadUncommitted,
    Isolation::ReadCommitted,
    Isolation::RepeatableRead,
    Isolation::Serializable,
];

/// Runs every script at every level on `db`; returns the table and what differs from
/// what the database documents.
async fn matrix(
    db: &DatabaseConnection,
    backend: Backend,
    snapshot: bool,
) -> (String, Vec<String>) {
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for level in LEVELS {
        let mut row = Vec::new();
        for anomaly in ANOMALIES {
            let got = run(anomaly, db, level).await;
            let expected = if allowed(backend, snapshot, level).contains(&anomaly) {
                Allowed
            } else {
                Prevented
            };
            if got != expected {
                wrong.push(format!(
                    "{level:?} {anomaly}: {got:?}, expected {expected:?}"
                ));
            }
            row.push(format!(
                "{anomaly}={}",
                if got == Allowed { "A" } else { "-" }
            ));
        }
        rows.push(format!("  {level:?}: {}", row.join(" ")));
    }
    (rows.join("\n"), wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_isolation_level_prevents_and_allows_what_its_database_documents() {
    for t in TestDb::all("hermitage", 4).await {
        let (table, wrong) = matrix(&t.db, t.backend, false).await;
        println!("{:?}\n{table}", t.backend);
        assert!(wrong.is_empty(), "{:?}:\n{}", t.backend, wrong.join("\n"));
        if t.backend == Backend::MySql {
            // Again with MariaDB's snapshot isolation on, for every session.
            let mut options = t.options(4);
            options.map_sqlx_mysql_pool_opts(|pool| {
                pool.after_connect(|conn, _| {
                    Box::pin(async move {
                        sea_orm::sqlx::Executor::execute(
                            conn,
                            "SET SESSION innodb_snapshot_isolation = ON",
                        )
                        .await
                        .map(drop)
                    })
                })
            });
            let on = sea_orm::Database::connect(options).await.unwrap();
            let (table, wrong) = matrix(&on, t.backend, true).await;
            println!("{:?} (innodb_snapshot_isolation = ON)\n{table}", t.backend);
            assert!(
                wrong.is_empty(),
                "snapshot isolation on:\n{}",
                wrong.join("\n")
            );
            on.close().await.unwrap();
        }
        t.cleanup().await;
    }
}
