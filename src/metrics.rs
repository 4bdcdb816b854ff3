//! Prometheus metrics (prometheus-client), served at `GET /metrics`: messages by
//! outcome, copies, events written, suppression hits, each sink's deliveries,
//! failures and backlog, and each listener's connections (held, refused at its cap,
//! cut by a timeout) and failed accepts.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

type Labels = Vec<(String, String)>;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    messages: Family<Labels, Counter>,
    copies: Counter,
    events: Family<Labels, Counter>,
    suppressed: Counter,
    sink_events: Family<Labels, Counter>,
    sink_failures: Family<Labels, Counter>,
    sink_backlog: Family<Labels, Gauge>,
    eom_seconds: Histogram,
    connections_open: Family<Labels, Gauge>,
    connections_refused: Family<Labels, Counter>,
    connections_timed_out: Family<Labels, Counter>,
    accept_errors: Family<Labels, Counter>,
    ship_backlog: Family<Labels, Gauge>,
    replica_seq: Gauge,
    replica_synced: Gauge,
    api_requests: Family<Labels, Counter>,
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("msys_milter");
        let messages = Family::<Labels, Counter>::default();
        registry.register(
            "messages",
            "Messages by outcome (accept, discard, reject, tempfail)",
            messages.clone(),
        );
        let copies = Counter::default();
        registry.register(
            "copies",
            "Personalised copies handed back to the MTA",
            copies.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events_written",
            "Events committed, by type",
            events.clone(),
        );
        let suppressed = Counter::default();
        registry.register(
            "suppression_hits",
            "Recipients not delivered because they are on the suppression list",
            suppressed.clone(),
        );
        let sink_events = Family::<Labels, Counter>::default();
        registry.register(
            "sink_events_delivered",
            "Events acknowledged by a webhook or written to the JSONL file",
            sink_events.clone(),
        );
        let sink_failures = Family::<Labels, Counter>::default();
        registry.register(
            "sink_failures",
            "Failed batch deliveries (each is retried)",
            sink_failures.clone(),
        );
        let sink_backlog = Family::<Labels, Gauge>::default();
        registry.register(
            "sink_backlog",
            "Events waiting for a sink (at the last scrape)",
            sink_backlog.clone(),
        );
        let eom_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
        ]);
        registry.register(
            "end_of_message_seconds",
            "Time from end of message to the milter's answer",
            eom_seconds.clone(),
        );
        let connections_open = Family::<Labels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections held, by listener (milter, http, lmtp)",
            connections_open.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections answered and closed at once because the listener was at its cap",
            connections_refused.clone(),
        );
        let connections_timed_out = Family::<Labels, Counter>::default();
        registry.register(
            "connections_timed_out",
            "Connections cut for being idle or too slow (header read, keep-alive, LMTP idle)",
            connections_timed_out.clone(),
        );
        let accept_errors = Family::<Labels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts (descriptors exhausted, ...); the listener pauses and goes on",
            accept_errors.clone(),
        );
        let ship_backlog = Family::<Labels, Gauge>::default();
        registry.register(
            "pg_ship_backlog",
            "Committed here, not yet shipped to the shared PostgreSQL store, by kind",
            ship_backlog.clone(),
        );
        let replica_seq = Gauge::default();
        registry.register(
            "pg_replica_seq",
            "The last shared suppression change applied to this host's replica",
            replica_seq.clone(),
        );
        let replica_synced = Gauge::default();
        registry.register(
            "pg_replica_synced_timestamp_seconds",
            "When the suppression replica last read the shared change log (Unix seconds)",
            replica_synced.clone(),
        );
        let api_requests = Family::<Labels, Counter>::default();
        registry.register(
            "api_requests",
            "REST API requests answered, by status class (2xx, 4xx, 5xx) and 429s by key",
            api_requests.clone(),
        );
        Metrics {
            api_requests,
            registry,
            messages,
            copies,
            events,
            suppressed,
            sink_events,
            sink_failures,
            sink_backlog,
            eom_seconds,
            connections_open,
            connections_refused,
            connections_timed_out,
            accept_errors,
            ship_backlog,
            replica_seq,
            replica_synced,
        }
    }

    pub fn ship_backlog(&self, b: crate::store::ship::ShipBacklog) {
        for (kind, n) in [
            ("transmissions", b.transmissions),
            ("events", b.events),
            ("suppression", b.suppression),
        ] {
            self.ship_backlog
                .get_or_create(&label("kind", kind))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn replica(&self, seq: i64, synced: u64) {
        self.replica_seq.set(seq);
        self.replica_synced
            .set(i64::try_from(synced).unwrap_or(i64::MAX));
    }

    pub fn connection_opened(&self, listener: &str) {
        self.connections_open
            .get_or_create(&label("listener", listener))
            .inc();
    }

    pub fn connection_closed(&self, listener: &str) {
        self.connections_open
            .get_or_create(&label("listener", listener))
            .dec();
    }

    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused
            .get_or_create(&label("listener", listener))
            .inc();
    }

    pub fn connection_timed_out(&self, listener: &str) {
        self.connections_timed_out
            .get_or_create(&label("listener", listener))
            .inc();
    }

    /// A REST API answer (its status class).
    pub fn api_answered(&self, status: u16) {
        self.api_requests
            .get_or_create(&label("status", &format!("{}xx", status / 100)))
            .inc();
    }

    /// A key over its rate limit.
    pub fn api_throttled(&self, key: &str) {
        self.api_requests
            .get_or_create(&vec![
                ("status".to_owned(), "429".to_owned()),
                ("key".to_owned(), key.to_owned()),
            ])
            .inc();
    }

    pub fn accept_error(&self, listener: &str) {
        self.accept_errors
            .get_or_create(&label("listener", listener))
            .inc();
    }

    pub fn message(&self, outcome: &str, seconds: f64) {
        self.messages
            .get_or_create(&label("outcome", outcome))
            .inc();
        self.eom_seconds.observe(seconds);
    }

    pub fn copies(&self, n: usize) {
        self.copies.inc_by(n as u64);
    }

    pub fn events<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
        for kind in kinds {
            self.events.get_or_create(&label("type", kind)).inc();
        }
    }

    pub fn suppressed(&self, n: usize) {
        self.suppressed.inc_by(n as u64);
    }

    pub fn sink_delivered(&self, sink: &str, n: usize) {
        self.sink_events
            .get_or_create(&label("sink", sink))
            .inc_by(n as u64);
    }

    pub fn sink_failed(&self, sink: &str) {
        self.sink_failures.get_or_create(&label("sink", sink)).inc();
    }

    pub fn set_backlog(&self, sink: &str, pending: u64) {
        self.sink_backlog
            .get_or_create(&label("sink", sink))
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
