//! Streaming a query's rows through a [`Tx`] (feature `stream`): SeaORM's `StreamTrait`,
//! so that `Entity::find().stream(tx)` works, with the checks of every other statement.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, StreamTrait};

use crate::Tx;
use crate::tx::InFlight;

impl StreamTrait for Tx {
    type Stream<'a> = TxStream<'a>;

    fn get_database_backend(&self) -> DbBackend {
        ConnectionTrait::get_database_backend(self)
    }

    fn stream_raw<'a>(
        &'a self,
        stmt: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<TxStream<'a>, DbErr>> + 'a + Send>> {
        Box::pin(self.open_stream(stmt))
    }
}

/// The rows of a statement streamed through a [`Tx`]. Until it ends or is dropped, no
/// other statement runs in the transaction: they wait their turn, so a statement sent
/// from inside the loop that reads the stream waits for ever (as with SeaORM's own
/// transaction streams, which hold the connection). Read the rows first, or use a
/// second operation. A row that fails is noted like a failed statement (PostgreSQL then
/// refuses the commit, a conflict is retried, and on MySQL/MariaDB the server is asked
/// before the commit whether it ended the transaction).
pub struct TxStream<'a> {
    pub(crate) inner: sea_orm::TransactionStream<'a>,
    pub(crate) tx: &'a Tx,
    pub(crate) _turn: tokio::sync::MutexGuard<'a, ()>,
    /// Landed when the stream ends; dropped before, the statement may still be running.
    pub(crate) flight: Option<InFlight<'a>>,
}

impl Stream for TxStream<'_> {
    type Item = Result<QueryResult, DbErr>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = std::task::ready!(Pin::new(&mut this.inner).poll_next(cx));
        match &next {
            None => {
                if let Some(flight) = this.flight.take() {
                    flight.landed();
                }
            }
            // A question for the server, if one is needed, is asked before the next
            // statement (it is left in the tree).
            Some(Err(err)) => drop(this.tx.note_failure_now(err)),
            Some(Ok(_)) => {}
        }
        Poll::Ready(next)
    }
}

impl std::fmt::Debug for TxStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxStream").finish_non_exhaustive()
    }
}
