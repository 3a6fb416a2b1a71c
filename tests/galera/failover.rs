//! A node killed under a `Db` with failover.

use std::collections::BTreeSet;
use std::time::Instant;

use safe_db_test_support::pool_options;
use sea_orm::Database;

use crate::bank::{ACCOUNTS, OPENING, RAN_ON, next, node_port, open_bank, settled, transfer};

/// A `Db` over the three nodes keeps serving when one of them dies mid-run (killed by its
/// process id): transfers in flight on it fail over (re-run on another node) or, if the
/// COMMIT's answer was lost, report `CommitUnknown`; new ones go to the survivors; the
/// node is used again once it is back; and every invariant holds on every node.
pub(crate) async fn a_db_over_the_nodes_keeps_serving_when_one_dies(urls: &[String]) {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (Some(kill), Some(restart)) = (
        env("SAFE_DB_TEST_GALERA_KILL"),
        env("SAFE_DB_TEST_GALERA_RESTART"),
    ) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but SAFE_DB_TEST_GALERA_KILL/RESTART are not set"
        );
        println!("SAFE_DB_TEST_GALERA_KILL/RESTART are not set: skipped");
        return;
    };
    // Blocking, on a thread of its own: the writers go on meanwhile.
    let run = |cmd: String| async move {
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(status.success());
    };
    // Node 1 (the first URL) sets up; the Db spans all three, lazily connected.
    let setup = Database::connect(pool_options(&urls[0], 1)).await.unwrap();
    open_bank(&setup, "f_").await;
    let mut pools = Vec::new();
    for url in urls {
        let mut options = pool_options(url, 6);
        options.connect_lazy(true);
        pools.push(Database::connect(options).await.unwrap());
    }
    let db = safe_db::Db::new(pools[0].clone(), None).with_failover(pools[1..].to_vec());

    let mut writers = Vec::new();
    for w in 0..6u64 {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut seed = w * 7919 + 17;
            let (mut committed, mut unknown) = (Vec::new(), Vec::new());
            for i in 0..60 {
                let from = (next(&mut seed) % ACCOUNTS as u64) as i32 + 1;
                let to = (from % ACCOUNTS) + 1;
                let amount = (next(&mut seed) % 50) as i64 + 1;
                let tid = format!("f{w}-{i}");
                match transfer(&db, "f_", &tid, from, to, amount).await {
                    Ok(true) => committed.push(tid),
                    Ok(false) => {}
                    Err(err) if err.kind() == safe_db::ErrorKind::CommitUnknown => {
                        unknown.push(tid)
                    }
                    Err(err) => panic!("transfer {tid} failed: {err} ({:?})", err.kind()),
                }
            }
            (committed, unknown)
        }));
    }
    // Node 2 dies a moment into the run, and comes back after.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    run(kill).await;
    let mut committed = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    for writer in writers {
        let (c, u) = writer.await.expect("a writer");
        committed.extend(c);
        unknown.extend(u);
    }
    run(restart).await;
    // Back: within a few operations (each begins on the next node in turn), node 2 serves.
    let mut ports = BTreeSet::new();
    let started = Instant::now();
    while !ports.contains(&3308) {
        assert!(
            started.elapsed().as_secs() < 30,
            "node 2 was not used again: {ports:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Ok(port) = node_port(&db).await {
            ports.insert(port);
        }
    }
    println!(
        "{} transfers committed, {} with an unknown outcome, node 2 killed and back",
        committed.len(),
        unknown.len()
    );
    // On every node: the same balances, the total unchanged, the log holding each committed
    // transfer once, and of the unknown ones only some (each at most once), nothing else.
    let mut nodes = Vec::new();
    for url in urls {
        nodes.push(Database::connect(pool_options(url, 1)).await.unwrap());
    }
    let mut first = None;
    for (n, node) in nodes.iter().enumerate() {
        let (balances, logged) = settled(node, "f_").await;
        assert_eq!(
            balances.iter().map(|b| i64::from(*b)).sum::<i64>(),
            i64::from(ACCOUNTS) * OPENING,
            "node {n}"
        );
        let missing: Vec<_> = committed.difference(&logged).cloned().collect();
        let ran: Vec<_> = RAN_ON
            .lock()
            .unwrap()
            .iter()
            .filter(|(tid, _, _)| missing.contains(tid))
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "node {n}: committed transfers are missing: {missing:?}; attempts (tid, port, \
             session): {ran:?}"
        );
        let extra: BTreeSet<_> = logged.difference(&committed).cloned().collect();
        assert!(
            extra.is_subset(&unknown),
            "node {n}: logged but never committed: {extra:?}"
        );
        match &first {
            None => first = Some(balances),
            Some(first) => assert_eq!(&balances, first, "node {n} holds other balances"),
        }
    }
}
