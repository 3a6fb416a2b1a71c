//! Quorum lost and regained: two of the three nodes die at once.

use std::time::{Duration, Instant};

use safe_db::ErrorKind;
use safe_db_test_support::{exec, pool_options};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::bank::{galera_ready, transfer_in_time};
use crate::cluster::{ctl, run};
use crate::faults::bank_under;

/// `wsrep_cluster_status` of a node (`Primary`, `non-Primary`), or the error reading it.
async fn cluster_status(node: &DatabaseConnection) -> String {
    let row = node
        .query_one_raw(Statement::from_string(
            node.get_database_backend(),
            "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'",
        ))
        .await;
    match row {
        Ok(Some(row)) => row.try_get_by_index::<String>(1).unwrap_or_default(),
        Ok(None) => "no row".to_owned(),
        Err(err) => format!("{err}"),
    }
}

/// Nodes 2 and 3 are SIGKILLed 300 ms into the bank (6 writers, a `Db` with failover over
/// the three nodes, 3 s deadline, 5 retries). Node 1, alone of three, has lost quorum: it
/// is `non-Primary` and refuses every statement (1047), so the `Db` has no node to run on
/// and callers get `Unavailable` (or `Timeout`, for a call in flight when the others
/// died). After 3 s of that the operator's recovery: `pc.bootstrap=YES` on the survivor
/// (it becomes a primary component of one and serves again at once), then nodes 2 and 3
/// restarted, both at once; they rejoin by incremental state transfer. Every writer goes
/// on until the recovery is over and then makes 10 more transfers, which must commit.
/// Afterwards every invariant of the bank on every node, and each node takes a transfer
/// through a pool of its own.
pub(crate) async fn quorum_lost_and_the_survivor_bootstrapped(urls: &[String]) {
    let Some(ctl) = ctl("the quorum-loss scenario") else {
        return;
    };
    let survivor = Database::connect(pool_options(&urls[0], 1)).await.unwrap();
    let (mut lost_after, mut bootstrapped_in, mut rejoined_in) = (None, None, None);
    let outage = async {
        let killed = Instant::now();
        tokio::join!(run(&ctl, "kill 2"), run(&ctl, "kill 3"));
        // Node 1 finds itself alone once the others' suspect timeout has run out.
        while cluster_status(&survivor).await == "Primary" {
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "node 1 kept quorum"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lost_after = Some(killed.elapsed());
        let status = cluster_status(&survivor).await;
        assert_eq!(status, "non-Primary", "node 1 alone");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let bootstrap = Instant::now();
        exec(
            &survivor,
            "SET GLOBAL wsrep_provider_options = 'pc.bootstrap=YES'",
        )
        .await;
        while !galera_ready(&survivor).await {
            assert!(
                bootstrap.elapsed() < Duration::from_secs(30),
                "no bootstrap"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bootstrapped_in = Some(bootstrap.elapsed());
        let restart = Instant::now();
        tokio::join!(run(&ctl, "restart 2"), run(&ctl, "restart 3"));
        rejoined_in = Some(restart.elapsed());
    };
    let done = bank_under(urls, "q_", "quorum lost", 10, outage).await;
    println!(
        "quorum lost: node 1 non-Primary {:?} after the kills; Primary again {:?} after \
         pc.bootstrap; nodes 2 and 3 restarted and synced in {:?}",
        lost_after.unwrap(),
        bootstrapped_in.unwrap(),
        rejoined_in.unwrap()
    );
    let unavailable = done
        .failed
        .iter()
        .filter(|(_, kind)| *kind == ErrorKind::Unavailable)
        .count();
    assert!(
        unavailable > 0,
        "the lost quorum was never seen as Unavailable: {:?}",
        done.failed
    );
    assert!(
        done.committed_after > 0,
        "nothing committed after the recovery"
    );
    // Each node serves writes again.
    for (n, url) in urls.iter().enumerate() {
        let node = Database::connect(pool_options(url, 2)).await.unwrap();
        let tid = format!("q_after-{n}");
        let moved = transfer_in_time(&node, "q_", &tid, 1, 2, 1).await;
        assert!(matches!(moved, Ok(true)), "node {}: {moved:?}", n + 1);
        assert!(!done.committed.contains(&tid));
    }
}
