//! An operation's `tracing` span.

use super::Operation;
use crate::Options;

impl Operation {
    /// The span of a web request's operation, made when its handler takes a `RequestTx`
    /// so that the handler, and the operations it calls, run in it.
    #[cfg(feature = "axum")]
    pub(crate) fn request_span(options: &Options) -> tracing::Span {
        Operation::span_under(None, options, "request", Some(0))
    }

    /// The operation's span: a child of `parent`, or of the current span. Made with the
    /// first attempt's number and, when it is known before the transaction begins (one
    /// taken from a pool: 0), its depth, so that the first attempt that begins has nothing
    /// to record ([`Operation::record_attempt`]).
    pub(super) fn span_under(
        parent: Option<tracing::Id>,
        options: &Options,
        name: &'static str,
        depth: Option<u32>,
    ) -> tracing::Span {
        // One field list for both callsites (`parent: None` would make a root span, not a
        // child of the current one).
        macro_rules! operation_span {
            ($($parent:tt)*) => {
                tracing::info_span!(
                    $($parent)*
                    "safe_db.operation",
                    operation = name,
                    isolation = options.isolation.map(|i| i.name()),
                    read_only = options.read_only,
                    depth,
                    attempt = 1u32,
                    outcome = tracing::field::Empty,
                    reason = tracing::field::Empty,
                    duration_ms = tracing::field::Empty,
                )
            };
        }
        match parent {
            Some(parent) => operation_span!(parent: parent,),
            None => operation_span!(),
        }
    }

    /// Records the attempt under way and, once begun, its transaction's depth, those the
    /// span does not show yet: one record at most, since a subscriber formats and stores
    /// each record it is given (the `fmt` layer: a lookup, a lock and a format per record).
    /// Skipped on a disabled span, as every field (`run::record`).
    pub(super) fn record_attempt(&self, attempt: u32, depth: Option<u32>) {
        let span = &self.span;
        let depth = depth.filter(|d| Some(*d) != self.span_depth);
        if span.is_disabled() || (attempt == 1 && depth.is_none()) {
            return;
        }
        let Some(meta) = span.metadata() else {
            return;
        };
        let fields = meta.fields();
        let (Some(a), Some(d)) = (fields.field("attempt"), fields.field("depth")) else {
            return;
        };
        match depth {
            Some(depth) => span.record_all(&fields.value_set(&[
                (&a, Some(&attempt as &dyn tracing::Value)),
                (&d, Some(&depth as &dyn tracing::Value)),
            ])),
            None => {
                span.record_all(&fields.value_set(&[(&a, Some(&attempt as &dyn tracing::Value))]))
            }
        };
    }
}
