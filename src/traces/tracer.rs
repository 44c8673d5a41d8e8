//! Deciding which calls are traced, naming their spans, and handing finished spans to the
//! exporter without ever waiting for it.

use std::borrow::Cow;
use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::traces::context::{SpanId, TraceId, TraceParent};

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A whole number.
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Cow::Owned(s))
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::from(n as u64)
    }
}

/// What a span stands for, as OTLP classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call a client made to us.
    Server,
    /// Work inside the server.
    Internal,
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Its trace.
    pub trace_id: TraceId,
    /// Itself.
    pub span_id: SpanId,
    /// Its parent, if it has one.
    pub parent: Option<SpanId>,
    /// Whether the parent is the caller's (in another process).
    pub remote_parent: bool,
    /// The caller's `tracestate`, passed on.
    pub tracestate: Option<Arc<str>>,
    /// Its name.
    pub name: Cow<'static, str>,
    /// What it stands for.
    pub kind: Kind,
    /// When it began and ended, in nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// See `start_unix_ns`.
    pub end_unix_ns: u64,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// The spans it is linked to (a batch's requests).
    pub links: Vec<(TraceId, SpanId)>,
    /// `Some(description)` if it failed.
    pub error: Option<String>,
}

/// What the tracer counted, for the metrics.
#[derive(Debug, Default)]
pub struct TraceCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the export queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because the collector could not be reached or refused them.
    pub dropped_export_failed: AtomicU64,
}

/// Which calls are traced, and where their finished spans go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// A new trace is sampled when the low 64 bits of its id are at most this.
    threshold: u64,
    spans: mpsc::Sender<SpanRecord>,
    counters: Arc<TraceCounters>,
    /// An instant and the same moment in Unix nanoseconds, to date spans timed by `Instant`.
    epoch: (Instant, u64),
}

/// A span of a sampled call, in progress: what its children need to name it as parent, and the
/// tracer that records them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// Where spans go.
    pub tracer: Tracer,
    /// The trace.
    pub trace_id: TraceId,
    /// The span children name as their parent.
    pub span_id: SpanId,
    /// The caller's `tracestate`, passed on to every span of the trace.
    pub tracestate: Option<Arc<str>>,
}

impl Tracer {
    /// A tracer that samples new traces at `ratio` (0 to 1) and queues at most `capacity`
    /// finished spans; the receiver is the exporter's end of the queue.
    pub fn new(ratio: f64, capacity: usize) -> (Tracer, mpsc::Receiver<SpanRecord>) {
        let (spans, receiver) = mpsc::channel(capacity.max(1));
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            (ratio * u64::MAX as f64) as u64
        } else {
            0
        };
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let shared = Shared {
            threshold,
            spans,
            counters: Arc::default(),
            epoch: (Instant::now(), unix_ns),
        };
        (
            Tracer {
                shared: Arc::new(shared),
            },
            receiver,
        )
    }

    /// The counters, shared with the exporter and the metrics.
    pub fn counters(&self) -> Arc<TraceCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// The trace a call with `parent` (the caller's `traceparent`, if any) belongs to, if it is
    /// to be traced: a caller's decision is followed (parent-based sampling), and a new trace
    /// is sampled at the tracer's ratio, by its id so that the decision is reproducible.
    pub fn sample(&self, parent: Option<&TraceParent>) -> Option<TraceId> {
        match parent {
            Some(parent) => parent.sampled.then_some(parent.trace_id),
            None if self.shared.threshold == 0 => None,
            None => {
                let id = new_trace_id();
                let low = u64::from_be_bytes(id.0[8..].try_into().unwrap_or([0; 8]));
                (low <= self.shared.threshold).then_some(id)
            }
        }
    }

    /// Queues a finished span for export; never waits. A full queue drops it, counted.
    pub fn record(&self, span: SpanRecord) {
        if self.shared.spans.try_send(span).is_err() {
            self.shared
                .counters
                .dropped_queue_full
                .fetch_add(1, Relaxed);
        }
    }

    /// `at` in nanoseconds since the Unix epoch.
    pub fn unix_ns(&self, at: Instant) -> u64 {
        let (instant, unix_ns) = self.shared.epoch;
        match at.checked_duration_since(instant) {
            Some(after) => unix_ns.saturating_add(after.as_nanos() as u64),
            None => unix_ns.saturating_sub(instant.duration_since(at).as_nanos() as u64),
        }
    }
}

impl Sampled {
    /// Records a span of `kind` named `name`, a child of this one, from `start` to `end`.
    pub fn child(
        &self,
        name: &'static str,
        (start, end): (Instant, Instant),
        attributes: Vec<(&'static str, Value)>,
        links: Vec<(TraceId, SpanId)>,
        error: Option<String>,
    ) {
        self.tracer.record(SpanRecord {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            parent: Some(self.span_id),
            remote_parent: false,
            tracestate: self.tracestate.clone(),
            name: Cow::Borrowed(name),
            kind: Kind::Internal,
            start_unix_ns: self.tracer.unix_ns(start),
            end_unix_ns: self.tracer.unix_ns(end),
            attributes,
            links,
            error,
        });
    }
}

thread_local! {
    /// Each thread's generator state, seeded from the standard library's random hash keys.
    static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
}

/// A random 64-bit number (SplitMix64): ids need to be unique, not secret.
fn random() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new span id (never all zero).
pub fn new_span_id() -> SpanId {
    loop {
        let n = random();
        if n != 0 {
            return SpanId(n.to_be_bytes());
        }
    }
}

/// A new trace id (never all zero).
pub fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random().to_be_bytes());
    id[8..].copy_from_slice(&new_span_id().0);
    TraceId(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::context::parse;

    #[test]
    fn a_callers_decision_is_followed_whatever_the_ratio() {
        let (never, _spans) = Tracer::new(0.0, 8);
        let (always, _spans2) = Tracer::new(1.0, 8);
        let sampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(never.sample(Some(&sampled)), Some(sampled.trace_id));
        assert_eq!(always.sample(Some(&unsampled)), None);
        assert_eq!(never.sample(None), None);
        assert!(always.sample(None).is_some());
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let (tracer, _spans) = Tracer::new(0.25, 8);
        let n = 40_000;
        let sampled = (0..n).filter(|_| tracer.sample(None).is_some()).count();
        // Binomial(40000, 0.25): a standard deviation of about 87.
        assert!((9_500..=10_500).contains(&sampled), "{sampled} of {n}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tracer, mut spans) = Tracer::new(1.0, 2);
        let sampled = Sampled {
            tracer: tracer.clone(),
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            tracestate: Some(Arc::from("k=v")),
        };
        let now = Instant::now();
        for _ in 0..5 {
            sampled.child("predictd.queue", (now, now), Vec::new(), Vec::new(), None);
        }
        assert_eq!(tracer.counters().dropped_queue_full.load(Relaxed), 3);
        let first = spans.try_recv().unwrap();
        assert_eq!(first.trace_id, sampled.trace_id);
        assert_eq!(first.parent, Some(sampled.span_id));
        assert_eq!(first.tracestate.as_deref(), Some("k=v"));
        assert_ne!(first.span_id, sampled.span_id);
    }

    #[test]
    fn instants_become_unix_times_in_order() {
        let (tracer, _spans) = Tracer::new(1.0, 1);
        let before = Instant::now();
        let later = before + std::time::Duration::from_millis(5);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let (a, b) = (tracer.unix_ns(before), tracer.unix_ns(later));
        assert_eq!(b - a, 5_000_000);
        assert!(a.abs_diff(wall) < 1_000_000_000, "{a} vs {wall}");
    }
}
