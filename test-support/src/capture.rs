//! A `tracing` layer that keeps what it sees, for tests of spans, events and logs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A span, with the fields recorded on it.
#[derive(Clone, Debug, Default)]
pub struct SpanRecord {
    /// The span's name.
    pub name: String,
    /// Its fields, as text.
    pub fields: BTreeMap<String, String>,
    /// The `operation` field of its parent span, if the parent is an operation.
    pub parent_operation: Option<String>,
    /// The name of its parent span, if it has one.
    pub parent: Option<String>,
}

/// An event: level, message and fields, as text.
#[derive(Clone, Debug, Default)]
pub struct EventRecord {
    /// `ERROR`, `WARN`, …
    pub level: String,
    /// All fields, the message included, as text.
    pub fields: BTreeMap<String, String>,
}

/// What the layer saw.
#[derive(Clone, Default)]
pub struct Captured {
    /// Every span, in creation order, with its latest fields.
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    /// Live span ids to their index in `spans`.
    live: Arc<Mutex<BTreeMap<u64, usize>>>,
    events: Arc<Mutex<Vec<EventRecord>>>,
}

impl Captured {
    /// The spans, in creation order, with the fields recorded so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }
    /// The spans of safe-db's operations (`safe_db.operation`), in creation order.
    pub fn operation_spans(&self) -> Vec<SpanRecord> {
        let mut spans = self.spans();
        spans.retain(|s| s.name == "safe_db.operation");
        spans
    }
    /// The spans of the operations named `operation` (a web request's: `"request"`), in
    /// creation order.
    pub fn operations(&self, operation: &str) -> Vec<SpanRecord> {
        let mut spans = self.operation_spans();
        spans.retain(|s| s.fields.get("operation").map(String::as_str) == Some(operation));
        spans
    }
    /// The events, in order.
    pub fn events(&self) -> Vec<EventRecord> {
        self.events.lock().unwrap().clone()
    }
    /// Everything seen, as one text (to search for what must not be there).
    pub fn all_text(&self) -> String {
        format!("{:?}{:?}", self.spans(), self.events())
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut record = SpanRecord {
            name: attrs.metadata().name().to_owned(),
            ..SpanRecord::default()
        };
        attrs.record(&mut Fields(&mut record.fields));
        let parent = if attrs.is_contextual() {
            ctx.lookup_current().map(|s| s.id())
        } else {
            attrs.parent().cloned()
        };
        let mut spans = self.spans.lock().unwrap();
        let mut live = self.live.lock().unwrap();
        if let Some(parent) = parent.and_then(|p| live.get(&p.into_u64())) {
            record.parent_operation = spans[*parent].fields.get("operation").cloned();
            record.parent = Some(spans[*parent].name.clone());
        }
        spans.push(record);
        live.insert(id.into_u64(), spans.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let live = self.live.lock().unwrap();
        if let Some(index) = live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.spans.lock().unwrap()[*index].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut record = EventRecord {
            level: event.metadata().level().to_string(),
            ..EventRecord::default()
        };
        event.record(&mut Fields(&mut record.fields));
        self.events.lock().unwrap().push(record);
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        self.live.lock().unwrap().remove(&id.into_u64());
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Forwards to the capture of the thread the span or event happens on. A global
/// subscriber, because scoped ones (`set_default`) race with other threads over
/// `tracing`'s callsite interest cache and sometimes miss spans.
struct Router;

fn current() -> Option<Captured> {
    CURRENT.with(|c| c.borrow().clone())
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Router {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(c) = current() {
            c.on_new_span(attrs, id, ctx);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(c) = current() {
            c.on_record(id, values, ctx);
        }
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if let Some(c) = current() {
            c.on_event(event, ctx);
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        // sqlx hands the current span to its SQLite worker thread, so a span may
        // close on a thread that has no capture: `Captured` keeps every span from
        // its creation, not from its close.
        if let Some(c) = current() {
            Layer::<S>::on_close(&c, id, ctx);
        }
    }
}

/// Stops capturing on this thread when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// Captures everything `tracing` sees on this thread while the guard lives (use a
/// current-thread runtime, as `#[tokio::test]` does by default).
pub fn start() -> (Captured, Guard) {
    use tracing_subscriber::layer::SubscriberExt;
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Router);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the test binaries");
    });
    let captured = Captured::default();
    CURRENT.with(|c| *c.borrow_mut() = Some(captured.clone()));
    (captured, Guard(()))
}
