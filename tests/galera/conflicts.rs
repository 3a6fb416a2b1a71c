//! Transfers through every node at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use safe_db::Stats;
use safe_db_test_support::pool_options;
use sea_orm::{ConnectionTrait, Database, Statement};

use crate::bank::{ACCOUNTS, OPENING, next, open_bank, settled, status, total, transfer};

pub(crate) async fn transfers_through_every_node_at_once_absorb_certification_conflicts(
    urls: &[String],
) {
    let mut nodes = Vec::new();
    for url in urls {
        // One connection per node for the checks: `wsrep_sync_wait` is per session.
        nodes.push(Database::connect(pool_options(url, 1)).await.unwrap());
    }
    open_bank(&nodes[0], "").await;
    let expected_total = i64::from(ACCOUNTS) * OPENING;
    for node in &nodes {
        let (balances, _) = settled(node, "").await;
        assert_eq!(
            balances.len(),
            ACCOUNTS as usize,
            "the schema reached every node"
        );
    }

    let conflicts_before: i64 = {
        let mut sum = 0;
        for node in &nodes {
            sum += status(node, "wsrep_local_cert_failures").await
                + status(node, "wsrep_local_bf_aborts").await;
        }
        sum
    };
    let retried_before = Stats::snapshot().retried;
    let started = Instant::now();
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let pool = Database::connect(pool_options(url, 6)).await.unwrap();
        for w in 0..3 {
            let pool = pool.clone();
            writers.push(tokio::spawn(async move {
                let mut seed = (n as u64 + 1) * 7919 + w as u64 * 104_729 + 1;
                let mut committed = Vec::new();
                for i in 0..40 {
                    let from = (next(&mut seed) % ACCOUNTS as u64) as i32 + 1;
                    let to = (from % ACCOUNTS) + 1;
                    let amount = (next(&mut seed) % 50) as i64 + 1;
                    let tid = format!("n{n}-w{w}-{i}");
                    match transfer(&pool, "", &tid, from, to, amount).await {
                        Ok(true) => committed.push(tid),
                        Ok(false) => {}
                        Err(err) => panic!("transfer {tid} failed: {err} ({:?})", err.kind()),
                    }
                }
                committed
            }));
        }
        let writing = Arc::clone(&writing);
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while writing.load(Ordering::Relaxed) {
                let seen = total(&pool).await.expect("a read");
                assert_eq!(seen, expected_total, "node {n} read a total of {seen}");
                reads += 1;
            }
            reads
        }));
    }
    let mut committed = BTreeSet::new();
    for writer in writers {
        committed.extend(writer.await.expect("a writer"));
    }
    writing.store(false, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("a reader");
    }
    let elapsed = started.elapsed();
    let retried = Stats::snapshot().retried - retried_before;
    let mut conflicts = -conflicts_before;
    for node in &nodes {
        conflicts += status(node, "wsrep_local_cert_failures").await
            + status(node, "wsrep_local_bf_aborts").await;
    }
    println!(
        "{} transfers committed through 3 nodes in {elapsed:?}, {reads} consistent reads, \
         {retried} attempts retried, {conflicts} Galera certification failures / brute-force aborts",
        committed.len()
    );
    assert!(!committed.is_empty());
    assert!(
        conflicts > 0,
        "the run should have met real certification conflicts"
    );
    assert!(retried > 0, "conflicts should have been retried");

    // Every node: the same balances, the same total, each committed transfer logged once
    // (the log's primary key forbids twice) and nothing else.
    let first = settled(&nodes[0], "").await;
    for (n, node) in nodes.iter().enumerate() {
        let (balances, tids) = settled(node, "").await;
        assert_eq!(balances, first.0, "node {n} holds other balances");
        assert_eq!(
            balances.iter().map(|b| i64::from(*b)).sum::<i64>(),
            expected_total,
            "node {n}"
        );
        assert_eq!(
            tids, committed,
            "node {n}: the log is the committed transfers"
        );
    }
    // Replaying the log from the opening balances gives the final ones.
    let mut replayed = vec![OPENING; ACCOUNTS as usize];
    let rows = nodes[0]
        .query_all_raw(Statement::from_string(
            nodes[0].get_database_backend(),
            "SELECT from_id, to_id, CAST(amount AS SIGNED) FROM transfers",
        ))
        .await
        .unwrap();
    for row in rows {
        let from: i32 = row.try_get_by_index(0).unwrap();
        let to: i32 = row.try_get_by_index(1).unwrap();
        let amount: i64 = row.try_get_by_index(2).unwrap();
        replayed[(from - 1) as usize] -= amount;
        replayed[(to - 1) as usize] += amount;
    }
    let replayed: Vec<i32> = replayed.into_iter().map(|b| b as i32).collect();
    assert_eq!(replayed, first.0, "the log replays to the balances");
}
