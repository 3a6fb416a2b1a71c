//! One-shot session settings and a `BEGIN` cut off by the caller: the connection is
//! given back clean.

use super::*;

#[safe_db_operation(read_only)]
async fn read_only_count(tx: &Tx) -> Result<usize, Error> {
    Ok(ids(tx, "SELECT id FROM agents").await.len())
}

#[safe_db_operation(isolation = "serializable")]
async fn serializable_write(tx: &Tx, id: i32) -> Result<(), Error> {
    run(
        tx,
        &format!("INSERT INTO agents (id, name) VALUES ({id}, 's{id}')"),
    )
    .await
}

/// What every session of the server is doing (for a failure's message).
async fn sessions(t: &TestDb) -> Vec<String> {
    let sql = match t.backend {
        Backend::MySql => {
            "SELECT CONCAT(ID, ' ', COMMAND, ' ', IFNULL(STATE, ''), ' ', IFNULL(INFO, ''), ' ', \
             TIME_MS) FROM information_schema.PROCESSLIST"
        }
        Backend::Postgres => {
            "SELECT concat(pid, ' ', state, ' ', query) FROM pg_stat_activity \
             WHERE datname = current_database()"
        }
        Backend::Sqlite => return Vec::new(),
    };
    let other = t.pool(1).await;
    let stmt = Statement::from_string(other.get_database_backend(), sql);
    let rows = other.query_all_raw(stmt).await.unwrap_or_default();
    rows.iter()
        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
        .collect()
}

/// Runs `op` on a task of its own and aborts it after `delay`, as a client going away
/// does: the cancellation lands at whatever await point the operation has reached.
async fn abort_after<F>(op: F, delay: Duration)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = tokio::spawn(op);
    let started = Instant::now();
    while started.elapsed() < delay {
        std::hint::spin_loop();
    }
    task.abort();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cut_off_by_the_caller_leaves_the_connection_clean() {
    for t in TestDb::all("cut_begin", 1).await {
        // A pool of one: whatever a cancelled operation leaves on its connection, the
        // next user of the pool gets.
        let db = Arc::new(t.pool(1).await);
        for round in 0..120u32 {
            // Cancellation points spread over the operation's first 2.4 ms: acquiring,
            // SET TRANSACTION (MySQL), BEGIN, the body.
            let delay = Duration::from_micros(u64::from(round % 40) * 60);
            let base = 100 * (round as i32 + 1);
            let d = Arc::clone(&db);
            // A read-only operation cut off, then an unrelated writer (MySQL: a one-shot
            // SET TRANSACTION READ ONLY left behind fails it with 1792).
            abort_after(async move { read_only_count(&*d).await }, delay).await;
            if let Err(e) = plain_write(&db, base).await {
                panic!(
                    "{:?} round {round} delay {delay:?}: {e}\nsessions: {:?}",
                    t.backend,
                    sessions(&t).await
                );
            }
            // A plain operation cut off, then a serializable one (MySQL refuses to
            // change the isolation of a transaction in progress: 1568).
            let d = Arc::clone(&db);
            abort_after(async move { plain_write(&*d, base + 1).await }, delay).await;
            serializable_write(&db, base + 2)
                .await
                .unwrap_or_else(|e| panic!("{:?} round {round}: {e}", t.backend));
            // And code that does not use safe-db, on the same pool: its write is
            // committed at once, not swallowed by a transaction nobody ends.
            let d = Arc::clone(&db);
            abort_after(async move { plain_write(&*d, base + 3).await }, delay).await;
            run_plain_insert_visible(&db, &t).await;
            let rows = ids(
                &t.db,
                &format!("SELECT id FROM agents WHERE id IN ({base}, {})", base + 2),
            )
            .await;
            assert_eq!(rows, vec![base, base + 2], "{:?} round {round}", t.backend);
        }
        t.cleanup().await;
    }
}
