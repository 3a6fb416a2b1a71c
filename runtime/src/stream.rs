//! Streaming a query's rows through a [`Tx`] (feature `stream`): SeaORM's `StreamTrait`,
//! so that `Entity::find().stream(tx)` works, with the checks of every other statement.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, StreamTrait};
use tokio::sync::{MutexGuard, mpsc};

use crate::Tx;
use crate::tx::Link;

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
    /// Reads the rows on the transaction's connection, which it holds, and hands them
    /// over one at a time; `None` once it has ended.
    reader: Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>,
    rows: mpsc::Receiver<Result<QueryResult, DbErr>>,
    tx: &'a Tx,
}

impl<'a> TxStream<'a> {
    pub(crate) fn new(tx: &'a Tx, mut link: MutexGuard<'a, Link>, stmt: Statement) -> Self {
        let (sender, rows) = mpsc::channel(1);
        let reader = async move {
            link.stream_into(stmt, sender).await;
        };
        TxStream {
            reader: Some(Box::pin(reader)),
            rows,
            tx,
        }
    }
}

impl Stream for TxStream<'_> {
    type Item = Result<QueryResult, DbErr>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The reader runs only while the stream is polled: it fills the one-row channel,
        // and ends (giving the connection's turn back) after the last row.
        if let Some(reader) = &mut this.reader
            && reader.as_mut().poll(cx).is_ready()
        {
            this.reader = None;
        }
        let next = std::task::ready!(this.rows.poll_recv(cx));
        // A question for the server, if one is needed, is asked before the next
        // statement (it is left in the tree).
        if let Some(Err(err)) = &next {
            let _ = this.tx.note_failure_now(err);
        }
        Poll::Ready(next)
    }
}

impl std::fmt::Debug for TxStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxStream").finish_non_exhaustive()
    }
}
