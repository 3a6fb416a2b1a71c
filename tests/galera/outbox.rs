//! The outbox on the cluster with a node killed mid-run (docs/outbox.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use safe_db::outbox::{self, Delivery, Message, Relay};
use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{exec, pool_options};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::bank::galera_ready;
use crate::cluster::{ctl, run};

/// An order and its message, in one transaction; `fail` rolls both back on purpose.
#[safe_db_operation(retries = 5, timeout = "3s")]
async fn place_order(tx: &Tx, order: &str, fail: bool) -> Result<(), Error> {
    tx.execute_unprepared(&format!("INSERT INTO og_orders (id) VALUES ('{order}')"))
        .await?;
    let message = Message::new("order.placed", &serde_json::json!({ "order": order }));
    outbox::record(tx, message.key(order.to_owned())).await?;
    if fail {
        return Err(Error::validation("rolled back on purpose"));
    }
    Ok(())
}

/// The handler's effect, once per message id (`INSERT IGNORE` on the id).
#[safe_db_operation(retries = 5, timeout = "3s")]
async fn apply(tx: &Tx, id: i64, order: &str) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT IGNORE INTO og_effects (msg_id, order_id) VALUES ({id}, '{order}')"
    ))
    .await?;
    Ok(())
}

/// What a node holds, read causally: orders, messages (id → order, state), effects (id →
/// order, how many rows).
type Held = (
    BTreeSet<String>,
    BTreeMap<i64, (String, i32)>,
    BTreeMap<i64, (String, i64)>,
);

async fn try_held(db: &DatabaseConnection) -> Result<Held, sea_orm::DbErr> {
    db.execute_unprepared("SET SESSION wsrep_sync_wait = 1")
        .await?;
    let backend = db.get_database_backend();
    let all = |sql: &str| db.query_all_raw(Statement::from_string(backend, sql.to_owned()));
    let orders = all("SELECT id FROM og_orders")
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    let mut messages = BTreeMap::new();
    for r in all(&format!(
        "SELECT id, JSON_VALUE(payload, '$.order'), state FROM {}",
        outbox::TABLE
    ))
    .await?
    {
        let id: i64 = r.try_get_by_index(0)?;
        messages.insert(id, (r.try_get_by_index(1)?, r.try_get_by_index(2)?));
    }
    let mut effects = BTreeMap::new();
    for r in all(
        "SELECT msg_id, MIN(order_id), CAST(COUNT(*) AS SIGNED) FROM og_effects GROUP BY msg_id",
    )
    .await?
    {
        let id: i64 = r.try_get_by_index(0)?;
        effects.insert(id, (r.try_get_by_index(1)?, r.try_get_by_index(2)?));
    }
    Ok((orders, messages, effects))
}

async fn held(db: &DatabaseConnection) -> Held {
    let started = Instant::now();
    loop {
        match try_held(db).await {
            Ok(held) => return held,
            Err(err) if started.elapsed() < Duration::from_secs(60) => {
                println!("a causal read waits for the cluster to settle: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => panic!("the node did not settle within 60 s: {err}"),
        }
    }
}

/// Four writers place 40 orders each through a `Db` with failover over the three nodes
/// (3 s deadline, 5 retries), one in four rolled back on purpose after its message was
/// recorded. A `Relay` runs on each node, over that node's own pool (a `Relay` takes one
/// `DatabaseConnection`, not a `Db`: a user runs one per node, or per process), with a 3 s
/// lease, delivering to a handler that logs each delivery and applies its effect through
/// the `Db` with `INSERT IGNORE` on the message id. Node 2 is SIGKILLed 500 ms in, and
/// restarted once the writers are done; the relays run until nothing is pending. Then on
/// every node: the messages are exactly those of the orders that exist, every order
/// reported committed exists, none reported failed (on purpose or not) does, every message
/// is delivered, each was handed to the handler at least once, no id that is not in the
/// table ever was, and each has exactly one effect; duplicates are counted.
pub(crate) async fn outbox_relays_on_every_node_survive_a_killed_node(urls: &[String]) {
    let Some(ctl) = ctl("the outbox scenario") else {
        return;
    };
    let setup = Database::connect(pool_options(&urls[0], 1)).await.unwrap();
    for sql in [
        format!("DROP TABLE IF EXISTS {}", outbox::TABLE),
        "DROP TABLE IF EXISTS og_orders".to_owned(),
        "DROP TABLE IF EXISTS og_effects".to_owned(),
        "CREATE TABLE og_orders (id VARCHAR(40) PRIMARY KEY)".to_owned(),
        "CREATE TABLE og_effects (msg_id BIGINT PRIMARY KEY, order_id VARCHAR(40) NOT NULL)"
            .to_owned(),
    ] {
        exec(&setup, &sql).await;
    }
    outbox::migrate(&setup).await.unwrap();
    let mut pools = Vec::new();
    for url in urls {
        let mut options = pool_options(url, 4);
        options.connect_lazy(true);
        pools.push(Database::connect(options).await.unwrap());
    }
    let db = safe_db::Db::new(pools[0].clone(), None).with_failover(pools[1..].to_vec());

    let handed: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for pool in &pools {
        let (db, handed) = (db.clone(), Arc::clone(&handed));
        let relay = Relay::new(pool.clone(), move |d: Delivery| {
            let (db, handed) = (db.clone(), Arc::clone(&handed));
            async move {
                handed.lock().unwrap().push(d.id.0);
                let order = d.key.clone().unwrap_or_default();
                apply(&db, d.id.0, &order).await.map_err(|e| e.to_string())
            }
        })
        .batch_size(8)
        .lease(Duration::from_secs(3))
        .max_attempts(1000)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100));
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    let mut writers = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let (mut ok, mut unknown, mut failed) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..40 {
                let order = format!("o{w}-{i}");
                match place_order(&db, &order, i % 4 == 3).await {
                    Ok(()) => ok.push(order),
                    Err(err) if err.kind() == ErrorKind::CommitUnknown => unknown.push(order),
                    Err(err) => failed.push((order, err.kind())),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, unknown, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    run(&ctl, "kill 2").await;
    let (mut ok, mut unknown, mut failed) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for writer in writers {
        let (o, u, f) = writer.await.expect("a writer");
        ok.extend(o);
        unknown.extend(u);
        failed.extend(f);
    }
    run(&ctl, "restart 2").await;
    // Drained: nothing pending, every node synced.
    let started = Instant::now();
    let node1 = Database::connect(pool_options(&urls[0], 1)).await.unwrap();
    loop {
        let (_, messages, _) = held(&node1).await;
        if messages
            .values()
            .all(|(_, state)| *state == outbox::state::DELIVERED)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "messages still pending after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let mut reports = Vec::new();
    for relay in relays {
        reports.push(relay.await.expect("a relay"));
    }
    let handed = handed.lock().unwrap().clone();
    let times: BTreeMap<i64, usize> = handed.iter().fold(BTreeMap::new(), |mut m, id| {
        *m.entry(*id).or_default() += 1;
        m
    });
    let duplicates = handed.len() - times.len();
    let on_purpose = failed
        .iter()
        .filter(|(_, k)| *k == ErrorKind::Validation)
        .count();
    println!(
        "outbox, node 2 killed: {} orders committed, {} unknown, {} failed ({on_purpose} on \
         purpose, others {:?}); {} deliveries of {} messages, {duplicates} duplicates; \
         relays (claimed, delivered, failed, lease lost) per node: {:?}",
        ok.len(),
        unknown.len(),
        failed.len(),
        failed
            .iter()
            .filter(|(_, k)| *k != ErrorKind::Validation)
            .map(|(_, k)| format!("{k:?}"))
            .collect::<BTreeSet<_>>(),
        handed.len(),
        times.len(),
        reports
            .iter()
            .map(|r| (r.claimed, r.delivered, r.failed, r.lease_lost))
            .collect::<Vec<_>>()
    );
    assert!(on_purpose >= 30, "the rollbacks on purpose: {on_purpose}");
    let failed: BTreeSet<String> = failed.into_iter().map(|(o, _)| o).collect();
    for (n, url) in urls.iter().enumerate() {
        let node = Database::connect(pool_options(url, 1)).await.unwrap();
        while !galera_ready(&node).await {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "node {n} not synced"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (orders, messages, effects) = held(&node).await;
        let n = n + 1;
        let missing: Vec<_> = ok.difference(&orders).collect();
        assert!(
            missing.is_empty(),
            "node {n}: committed orders missing: {missing:?}"
        );
        let failed_present: Vec<_> = failed.intersection(&orders).collect();
        assert!(
            failed_present.is_empty(),
            "node {n}: failed orders present: {failed_present:?}"
        );
        let extra: Vec<_> = orders
            .difference(&ok)
            .filter(|o| !unknown.contains(*o))
            .collect();
        assert!(
            extra.is_empty(),
            "node {n}: orders never reported: {extra:?}"
        );
        let of_messages: BTreeSet<String> = messages.values().map(|(o, _)| o.clone()).collect();
        assert_eq!(
            of_messages, orders,
            "node {n}: one message per order, no other"
        );
        assert_eq!(
            messages.len(),
            orders.len(),
            "node {n}: one message per order"
        );
        for (id, (order, state)) in &messages {
            assert_eq!(*state, outbox::state::DELIVERED, "node {n}: message {id}");
            assert!(
                times.contains_key(id),
                "node {n}: message {id} never handed over"
            );
            assert_eq!(
                effects.get(id),
                Some(&(order.clone(), 1)),
                "node {n}: message {id}'s effect"
            );
        }
        assert_eq!(
            effects.len(),
            messages.len(),
            "node {n}: effects of other messages"
        );
        let foreign: Vec<_> = times
            .keys()
            .filter(|id| !messages.contains_key(id))
            .collect();
        assert!(
            foreign.is_empty(),
            "node {n}: handed over, yet not a committed message: {foreign:?}"
        );
        if n == 1 {
            println!(
                "outbox: of the {} unknown, {} committed",
                unknown.len(),
                unknown.intersection(&orders).count()
            );
        }
    }
}
