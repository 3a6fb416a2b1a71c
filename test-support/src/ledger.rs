//! The bank that fault scenarios run: accounts and a log of transfers, what the callers
//! were told of each transfer, and the invariants checked against what a server holds
//! afterwards (the total, no negative balance, every `Ok` transfer logged once, none
//! reported as failed logged, anything else logged among the `CommitUnknown` ones, and a
//! log that replays to the balances).
//!
//! Tables are prefixed (`{t}accounts`, `{t}transfers`), so that scenarios on one database
//! keep apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use safe_db::ErrorKind;
use sea_orm::{ConnectionTrait, DbErr, Statement};

use crate::exec;

/// How many accounts a bank opens.
pub const ACCOUNTS: i32 = 10;
/// Each account's opening balance.
pub const OPENING: i64 = 1_000;

/// Makes the accounts (`ACCOUNTS` of them, `OPENING` each) and the transfer log afresh,
/// tables prefixed with `t`.
pub async fn open(db: &impl ConnectionTrait, t: &str) {
    exec(db, &format!("DROP TABLE IF EXISTS {t}transfers")).await;
    exec(db, &format!("DROP TABLE IF EXISTS {t}accounts")).await;
    exec(
        db,
        &format!("CREATE TABLE {t}accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)"),
    )
    .await;
    exec(
        db,
        &format!(
            "CREATE TABLE {t}transfers (tid VARCHAR(40) PRIMARY KEY, from_id INT NOT NULL, \
             to_id INT NOT NULL, amount BIGINT NOT NULL)"
        ),
    )
    .await;
    let values: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING})"))
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO {t}accounts (id, balance) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
}

/// A transfer's statements, to run inside an operation: debits `from` only if it holds
/// `amount` (`Ok(false)` if not), credits `to`, logs it under `tid`.
pub async fn move_money(
    tx: &impl ConnectionTrait,
    t: &str,
    tid: &str,
    from: i32,
    to: i32,
    amount: i64,
) -> Result<bool, DbErr> {
    let debited = tx
        .execute_unprepared(&format!(
            "UPDATE {t}accounts SET balance = balance - {amount} \
             WHERE id = {from} AND balance >= {amount}"
        ))
        .await?
        .rows_affected();
    if debited == 0 {
        return Ok(false);
    }
    tx.execute_unprepared(&format!(
        "UPDATE {t}accounts SET balance = balance + {amount} WHERE id = {to}"
    ))
    .await?;
    tx.execute_unprepared(&format!(
        "INSERT INTO {t}transfers (tid, from_id, to_id, amount) \
         VALUES ('{tid}', {from}, {to}, {amount})"
    ))
    .await?;
    Ok(true)
}

/// A pseudo-random sequence (xorshift), one per writer.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the callers were told of their transfers.
#[derive(Debug, Default)]
pub struct Told {
    /// Answered `Ok(true)`: committed.
    pub committed: BTreeSet<String>,
    /// Answered `CommitUnknown`: committed or not.
    pub unknown: BTreeSet<String>,
    /// Answered any other error: nothing of it may be committed.
    pub failed: BTreeMap<String, ErrorKind>,
    /// The longest a call took.
    pub slowest: Duration,
}

impl Told {
    /// Notes what the caller of transfer `tid` was told, after `took`.
    pub fn note<E: Into<ErrorKindOf>>(
        &mut self,
        tid: &str,
        outcome: Result<bool, E>,
        took: Duration,
    ) {
        self.slowest = self.slowest.max(took);
        match outcome {
            Ok(true) => {
                self.committed.insert(tid.to_owned());
            }
            Ok(false) => {}
            Err(err) => match err.into().0 {
                ErrorKind::CommitUnknown => {
                    self.unknown.insert(tid.to_owned());
                }
                kind => {
                    self.failed.insert(tid.to_owned(), kind);
                }
            },
        }
    }

    /// Adds another writer's.
    pub fn merge(&mut self, other: Told) {
        self.committed.extend(other.committed);
        self.unknown.extend(other.unknown);
        self.failed.extend(other.failed);
        self.slowest = self.slowest.max(other.slowest);
    }

    /// "N committed, N unknown, N failed ({kinds}), slowest call …".
    pub fn summary(&self) -> String {
        let kinds: BTreeSet<String> = self.failed.values().map(|k| format!("{k:?}")).collect();
        format!(
            "{} committed, {} unknown, {} failed ({}), slowest call {:?}",
            self.committed.len(),
            self.unknown.len(),
            self.failed.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", "),
            self.slowest
        )
    }
}

/// An error's kind, from a `safe_db::Error` or a `DbErr`.
pub struct ErrorKindOf(pub ErrorKind);

impl From<safe_db::Error> for ErrorKindOf {
    fn from(err: safe_db::Error) -> Self {
        ErrorKindOf(err.kind())
    }
}

impl From<DbErr> for ErrorKindOf {
    fn from(err: DbErr) -> Self {
        ErrorKindOf(ErrorKind::of(&err))
    }
}

/// What a server holds of a bank.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    /// Each account's balance, by id.
    pub balances: Vec<i64>,
    /// The log: transfer id → (from, to, amount).
    pub log: BTreeMap<String, (i32, i32, i64)>,
}

impl Held {
    /// Reads the bank prefixed `t` through `db` (outside any transaction of safe-db's).
    pub async fn read(db: &impl ConnectionTrait, t: &str) -> Result<Held, DbErr> {
        let backend = db.get_database_backend();
        let int = signed(backend);
        let balances = db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT CAST(balance AS {int}) FROM {t}accounts ORDER BY id"),
            ))
            .await?
            .iter()
            .map(|r| r.try_get_by_index::<i64>(0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut log = BTreeMap::new();
        for row in db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT tid, from_id, to_id, CAST(amount AS {int}) FROM {t}transfers"),
            ))
            .await?
        {
            log.insert(
                row.try_get_by_index::<String>(0)?,
                (
                    row.try_get_by_index(1)?,
                    row.try_get_by_index(2)?,
                    row.try_get_by_index(3)?,
                ),
            );
        }
        Ok(Held { balances, log })
    }

    /// Asserts every invariant against what the callers were told; `node` names the
    /// server in a failure.
    pub fn check(&self, told: &Told, node: &str) {
        assert_eq!(
            self.balances.iter().sum::<i64>(),
            i64::from(ACCOUNTS) * OPENING,
            "{node}: the total"
        );
        assert!(
            self.balances.iter().all(|b| *b >= 0),
            "{node}: a negative balance: {:?}",
            self.balances
        );
        let logged: BTreeSet<String> = self.log.keys().cloned().collect();
        let missing: Vec<_> = told.committed.difference(&logged).collect();
        assert!(
            missing.is_empty(),
            "{node}: transfers answered Ok are missing: {missing:?}"
        );
        let failed_but_logged: Vec<_> = told
            .failed
            .keys()
            .filter(|tid| logged.contains(*tid))
            .collect();
        assert!(
            failed_but_logged.is_empty(),
            "{node}: reported as failed, yet committed: {failed_but_logged:?}"
        );
        let extra: BTreeSet<_> = logged.difference(&told.committed).cloned().collect();
        assert!(
            extra.is_subset(&told.unknown),
            "{node}: logged but never reported as committed or unknown: {:?}",
            extra.difference(&told.unknown).collect::<Vec<_>>()
        );
        let mut replayed = vec![OPENING; ACCOUNTS as usize];
        for (from, to, amount) in self.log.values() {
            replayed[*from as usize - 1] -= amount;
            replayed[*to as usize - 1] += amount;
        }
        assert_eq!(
            replayed, self.balances,
            "{node}: the log does not replay to the balances"
        );
    }
}

/// The integer type a `CAST` names on `backend`.
fn signed(backend: sea_orm::DbBackend) -> &'static str {
    match backend {
        sea_orm::DbBackend::MySql => "SIGNED",
        _ => "BIGINT",
    }
}
