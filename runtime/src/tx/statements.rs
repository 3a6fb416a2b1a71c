//! Whether a PostgreSQL pool's connections keep prepared statements, read once per pool.

use std::sync::Arc;

use sea_orm::sqlx;

/// Whether the connections of a PostgreSQL pool keep prepared statements
/// (`statement_cache_capacity`, 100 by default; `statement-cache-capacity=0` in the URL
/// turns it off). Off, sqlx still prepares a persistent statement under a name of its own
/// (`sqlx_s_1`, …), counted per client connection, and never closes it: behind PgBouncer
/// in transaction pooling mode before 1.21, another client's statement of the same name
/// is already there on the server connection ("prepared statement \"sqlx_s_1\" already
/// exists"). So with the cache off, a `Tx` sends its statements as the unnamed statement,
/// which lives inside the transaction that the server connection is held for.
///
/// sqlx has no getter for the capacity, so it is read off the options' URL form, once per
/// pool options (writing the URL was 4 µs of every BEGIN): the answer is kept beside a
/// `Weak` of the options, which keeps their allocation, so a new pool's options never
/// share the address of ones seen before. Options a pool was given later
/// (`set_connect_options`) are new options, read anew.
#[cfg(feature = "postgres")]
pub(super) fn statement_cache_on(pool: &sqlx::PgPool) -> bool {
    use sqlx::postgres::PgConnectOptions;
    use std::sync::{Mutex, Weak};
    static SEEN: Mutex<Vec<(Weak<PgConnectOptions>, bool)>> = Mutex::new(Vec::new());
    thread_local! {
        /// The last answer on this thread: no shared lock for the common case of one pool.
        static LAST: std::cell::RefCell<Option<(Weak<PgConnectOptions>, bool)>> =
            const { std::cell::RefCell::new(None) };
    }
    let options = pool.connect_options();
    let same = |known: &Weak<PgConnectOptions>| std::ptr::eq(known.as_ptr(), Arc::as_ptr(&options));
    if let Some(on) = LAST.with_borrow(|last| {
        last.as_ref()
            .and_then(|(known, on)| same(known).then_some(*on))
    }) {
        return on;
    }
    let on = read(&options, &SEEN);
    LAST.set(Some((Arc::downgrade(&options), on)));
    on
}

/// The answer for `options`, from those seen on any thread, or read now.
fn read(
    options: &Arc<sqlx::postgres::PgConnectOptions>,
    seen: &std::sync::Mutex<Vec<(std::sync::Weak<sqlx::postgres::PgConnectOptions>, bool)>>,
) -> bool {
    use sqlx::ConnectOptions;
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, on)) = seen
        .iter()
        .find(|(known, _)| std::ptr::eq(known.as_ptr(), Arc::as_ptr(options)))
    {
        return *on;
    }
    let on = !options
        .to_url_lossy()
        .query_pairs()
        .any(|(key, value)| key == "statement-cache-capacity" && value == "0");
    seen.retain(|(known, _)| known.strong_count() > 0);
    seen.push((Arc::downgrade(options), on));
    on
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    fn pool(url: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .connect_lazy(url)
            .expect("a valid URL")
    }

    /// Each pool's own setting, however often asked and in whatever order, and a pool made
    /// after another was dropped is read anew.
    #[tokio::test]
    async fn each_pool_is_read_for_itself() {
        let on = pool("postgres://u@localhost/db");
        let off = pool("postgres://u@localhost/db?statement-cache-capacity=0");
        for _ in 0..3 {
            assert!(statement_cache_on(&on));
            assert!(!statement_cache_on(&off));
        }
        drop(off);
        let off_again = pool("postgres://u@localhost/db?statement-cache-capacity=0");
        assert!(!statement_cache_on(&off_again));
        let on_again = pool("postgres://u@localhost/db?statement-cache-capacity=5");
        assert!(statement_cache_on(&on_again));
    }
}
