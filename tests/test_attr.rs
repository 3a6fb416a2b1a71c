//! `#[safe_db::test]` and `Template` (issue 26): a test body runs once per configured
//! database; with `&TestTx` its writes are gone after it, with `&Db` it gets a database of
//! its own that is dropped after it; a failure names its database; copies left by killed
//! runs are swept, and a database the kit did not make is never dropped. Each is read back
//! from the server, outside the test.

use std::process::Command;
use std::sync::Mutex;

use safe_db::testing::{Template, TestTx};
use safe_db::{Db, Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, server_url};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};

async fn schema(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS safe_db_attr_notes (marker VARCHAR(64) NOT NULL)",
    )
    .await?;
    Ok(())
}

fn insert(backend: DbBackend, marker: &str) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => "INSERT INTO safe_db_attr_notes (marker) VALUES ($1)",
        _ => "INSERT INTO safe_db_attr_notes (marker) VALUES (?)",
    };
    Statement::from_sql_and_values(backend, sql, [marker.into()])
}

async fn count(db: &impl ConnectionTrait, marker: &str) -> i64 {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT COUNT(*) FROM safe_db_attr_notes WHERE marker = $1",
        _ => "SELECT COUNT(*) FROM safe_db_attr_notes WHERE marker = ?",
    };
    let stmt = Statement::from_sql_and_values(backend, sql, [marker.into()]);
    let row = db.query_one_raw(stmt).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

#[safe_db_operation]
async fn add(tx: &Tx, marker: &str) -> Result<(), Error> {
    tx.execute_raw(insert(tx.get_database_backend(), marker))
        .await?;
    Ok(())
}

fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("m{}_{nanos}", std::process::id())
}

fn server(backend: DbBackend) -> Option<String> {
    match backend {
        DbBackend::Postgres => server_url(Backend::Postgres),
        DbBackend::MySql => server_url(Backend::MySql),
        _ => None,
    }
}

fn expected_backends() -> Vec<DbBackend> {
    let mut out = vec![DbBackend::Sqlite];
    if server_url(Backend::Postgres).is_some() {
        out.push(DbBackend::Postgres);
    }
    if server_url(Backend::MySql).is_some() {
        out.push(DbBackend::MySql);
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

static IN_TX: Mutex<Vec<(DbBackend, String)>> = Mutex::new(Vec::new());

#[safe_db::test(setup = schema)]
async fn a_test_runs_in_a_transaction(test: &TestTx) -> Result<(), Error> {
    let m = marker();
    add(test, &m).await?;
    add(&test.db(), &m).await?;
    assert_eq!(count(&**test, &m).await, 2, "the test sees its own writes");
    IN_TX.lock().unwrap().push((test.get_database_backend(), m));
    Ok(())
}

#[test]
fn a_tests_writes_are_gone_after_it_on_every_database() {
    a_test_runs_in_a_transaction();
    let seen = IN_TX.lock().unwrap().clone();
    for backend in expected_backends() {
        assert!(
            seen.iter().any(|(b, _)| *b == backend),
            "ran on {backend:?}: {seen:?}"
        );
    }
    runtime().block_on(async {
        for (backend, m) in &seen {
            let Some(url) = server(*backend) else {
                continue;
            };
            let db = Database::connect(url.as_str()).await.unwrap();
            // The table is there (the set-up ran outside the test) and the rows are not.
            assert_eq!(count(&db, m).await, 0, "{backend:?}: rolled back");
            db.close().await.unwrap();
        }
    });
}

static FRESH: Mutex<Vec<(DbBackend, String)>> = Mutex::new(Vec::new());

#[safe_db_operation(requires_new)]
async fn add_alone(tx: &Tx, marker: &str) -> Result<(), Error> {
    tx.execute_raw(insert(tx.get_database_backend(), marker))
        .await?;
    Ok(())
}

#[safe_db::test(setup = schema)]
async fn a_fresh_database(db: &Db) -> Result<(), Error> {
    let m = marker();
    add_alone(db, &m).await?;
    // Committed for real: another connection of the pool sees it.
    assert_eq!(count(db.primary(), &m).await, 1);
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT current_database()",
        DbBackend::MySql => "SELECT DATABASE()",
        _ => "SELECT file FROM pragma_database_list WHERE name = 'main'",
    };
    let row = db
        .primary()
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .unwrap();
    let name: String = row.try_get_by_index(0)?;
    FRESH.lock().unwrap().push((backend, name));
    Ok(())
}

async fn database_exists(backend: DbBackend, url: &str, name: &str) -> bool {
    let db = Database::connect(url).await.unwrap();
    let sql = match backend {
        DbBackend::Postgres => "SELECT COUNT(*) FROM pg_database WHERE datname = $1",
        _ => "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
    };
    let stmt = Statement::from_sql_and_values(backend, sql, [name.into()]);
    let row = db.query_one_raw(stmt).await.unwrap().unwrap();
    let n: i64 = row.try_get_by_index(0).unwrap();
    db.close().await.unwrap();
    n > 0
}

#[test]
fn a_fresh_database_is_dropped_after_the_test_on_every_database() {
    a_fresh_database();
    let seen = FRESH.lock().unwrap().clone();
    for backend in expected_backends() {
        assert!(seen.iter().any(|(b, _)| *b == backend), "{seen:?}");
    }
    // `seen` may also hold the databases of the harness's own run of `a_fresh_database`,
    // beside this one, still in its body: each is waited for (up to 10 s), not read once.
    runtime().block_on(async {
        for (backend, name) in &seen {
            let gone = || async {
                match server(*backend) {
                    Some(url) => !database_exists(*backend, &url, name).await,
                    None => !std::path::Path::new(name).exists(),
                }
            };
            safe_db_test_support::eventually(std::time::Duration::from_secs(10), gone).await;
            assert!(
                gone().await,
                "{backend:?}: {name} is not dropped (a SQLite file: not removed)"
            );
        }
    });
}

#[safe_db::test]
#[should_panic(expected = "failed on Sqlite")]
async fn a_failure_names_its_database(_test: &TestTx) -> Result<(), Error> {
    Err(Error::from(DbErr::Custom("the body's own error".into())))
}

/// This host's tag in the kit's database names (FNV-1a of the host name, as the kit
/// computes it).
fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in host.trim().bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", hash & 0x00ff_ffff)
}

/// A pid no process has (above Linux's largest `pid_max`).
const DEAD_PID: u32 = 4_194_399;

async fn create_database(url: &str, name: &str) {
    let db = Database::connect(url).await.unwrap();
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    db.close().await.unwrap();
}

async fn drop_database(backend: DbBackend, url: &str, name: &str) {
    let db = Database::connect(url).await.unwrap();
    let force = if backend == DbBackend::Postgres {
        " WITH (FORCE)"
    } else {
        ""
    };
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}{force}"))
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// A run that was killed left a test database behind: the next process that makes one
/// drops it, and only it (not another host's pattern, nor a live process's).
#[test]
fn copies_of_killed_runs_are_swept_and_nothing_else() {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let tag = host_tag();
    let me = std::process::id();
    for backend in [DbBackend::Postgres, DbBackend::MySql] {
        let Some(url) = server(backend) else {
            continue;
        };
        let dead = format!("safe_db_t_{tag}_{DEAD_PID}_0");
        let live = format!("safe_db_t_{tag}_{me}_9999");
        let foreign = format!("safe_db_t_keep_{me}");
        runtime().block_on(async {
            for name in [&dead, &live, &foreign] {
                drop_database(backend, &url, name).await;
                create_database(&url, name).await;
            }
        });
        // A process of its own, whose first database of its own sweeps.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_fresh_database", "--test-threads=1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        runtime().block_on(async {
            assert!(
                !database_exists(backend, &url, &dead).await,
                "{backend:?}: swept"
            );
            assert!(
                database_exists(backend, &url, &live).await,
                "{backend:?}: a live process's is kept"
            );
            assert!(
                database_exists(backend, &url, &foreign).await,
                "{backend:?}: another pattern is kept"
            );
            for name in [&live, &foreign] {
                drop_database(backend, &url, name).await;
            }
        });
    }
}

/// `Template`: never drops a database it did not make; sweeps its dead copies; drops
/// itself when asked.
#[test]
fn a_template_drops_only_what_it_made() {
    let Some(url) = server_url(Backend::Postgres) else {
        return;
    };
    let me = std::process::id();
    let foreign = format!("safe_db_foreign_{me}");
    let rt = runtime();
    rt.block_on(async {
        drop_database(DbBackend::Postgres, &url, &foreign).await;
        create_database(&url, &foreign).await;
        let refused = Template::prepare(&url, &foreign, async |_| Ok(())).await;
        let err = refused
            .err()
            .expect("a database the kit did not make is refused");
        assert!(
            err.to_string().contains("was not made by a `Template`"),
            "{err}"
        );
        assert!(
            database_exists(DbBackend::Postgres, &url, &foreign).await,
            "kept"
        );
        drop_database(DbBackend::Postgres, &url, &foreign).await;

        let name = format!("safe_db_tpl_{me}");
        let template = Template::prepare(&url, &name, async |db| schema(db).await)
            .await
            .unwrap();
        let copy = template.create().await.unwrap();
        let tag = host_tag();
        assert_eq!(
            copy.name,
            format!(
                "{name}_{tag}_{me}_{}",
                copy.name.rsplit('_').next().unwrap()
            )
        );
        let dead = format!("{name}_{tag}_{DEAD_PID}_0");
        create_database(&url, &dead).await;
        // Prepared again (a new run): the dead copy goes, the live one stays.
        let template = Template::prepare(&url, &name, async |db| schema(db).await)
            .await
            .unwrap();
        assert!(
            !database_exists(DbBackend::Postgres, &url, &dead).await,
            "swept"
        );
        assert!(
            database_exists(DbBackend::Postgres, &url, &copy.name).await,
            "live copy kept"
        );
        copy.drop_database().await.unwrap();
        template.drop_template().await.unwrap();
        assert!(
            !database_exists(DbBackend::Postgres, &url, &name).await,
            "template dropped"
        );
    });
}

/// Run by `processes_of_one_nextest_run_share_a_template` in processes of their own.
#[test]
#[ignore = "run in a child process by processes_of_one_nextest_run_share_a_template"]
fn template_child() {
    let url = server_url(Backend::Postgres).unwrap();
    let name = std::env::var("SAFE_DB_TEMPLATE_CHILD").unwrap();
    runtime().block_on(async {
        let template = Template::prepare(&url, &name, async |db| {
            println!("migrated");
            schema(db).await
        })
        .await
        .unwrap();
        let copy = template.create().await.unwrap();
        copy.drop_database().await.unwrap();
    });
}

/// nextest runs each test in a process of its own: the processes of one run (one
/// `NEXTEST_RUN_ID`) prepare the template once, and the others find it ready.
#[test]
fn processes_of_one_nextest_run_share_a_template() {
    let Some(url) = server_url(Backend::Postgres) else {
        return;
    };
    let name = format!("safe_db_run_{}", std::process::id());
    let child = |run: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "template_child", "--ignored", "--nocapture"])
            .env("NEXTEST_RUN_ID", run)
            .env("SAFE_DB_TEMPLATE_CHILD", &name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).contains("migrated")
    };
    assert!(
        child("run-a"),
        "the first process of a run prepares the template"
    );
    assert!(
        !child("run-a"),
        "a later process of the same run finds it ready"
    );
    assert!(child("run-b"), "a new run prepares it anew");
    runtime().block_on(async {
        let template = Template::prepare(&url, &name, async |_| Ok(()))
            .await
            .unwrap();
        template.drop_template().await.unwrap();
        assert!(!database_exists(DbBackend::Postgres, &url, &name).await);
    });
}

/// A second `TestTx` on a pool whose one connection the first holds: the error says it is
/// a self-deadlock, and the first goes on as before.
#[tokio::test]
async fn a_second_test_tx_on_a_pool_of_one_says_it_is_a_self_deadlock() {
    for t in safe_db_test_support::TestDb::all("second_test_tx", 1).await {
        let mut options = t.options(1);
        options.acquire_timeout(std::time::Duration::from_millis(500));
        let pool = Database::connect(options).await.unwrap();
        let first = TestTx::begin(&pool).await.unwrap();
        let err = TestTx::begin(&pool)
            .await
            .err()
            .expect("no connection left");
        assert_eq!(
            safe_db::ErrorKind::of(&err),
            safe_db::ErrorKind::PoolExhausted
        );
        assert!(
            matches!(
                safe_db::Cause::of(&err),
                Some(safe_db::Cause::TestSelfDeadlock { alive: 1 })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("self-deadlock"), "{err}");
        first
            .execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'in the test')")
            .await
            .unwrap();
        first.rollback().await.unwrap();
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// `rollback()` while a `test.db()` handle is alive names where it was taken; the
/// transaction rolls back when the handle goes.
#[tokio::test]
async fn a_rollback_held_up_by_a_db_handle_says_where_it_was_taken() {
    for t in safe_db_test_support::TestDb::all("held_test_tx", 2).await {
        let test = TestTx::begin(&t.db).await.unwrap();
        let (kept, line) = (test.db(), line!());
        add_agent(&kept, 1).await.unwrap();
        let err = test.rollback().await.expect_err("held");
        assert!(
            matches!(
                safe_db::Cause::of(&err),
                Some(safe_db::Cause::TestHeld { .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("tests/test_attr.rs:{line}")),
            "{err}"
        );
        drop(kept);
        // Rolled back off the caller's path once the last handle went.
        for _ in 0..50 {
            if t.agent_ids().await.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn add_agent(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}
