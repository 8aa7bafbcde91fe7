//! Metrics in the Prometheus text format, served at `GET /metrics` (`--no-metrics` turns it off).
//!
//! Per gRPC method, named as go-grpc-prometheus names them so that existing dashboards work
//! (labels `grpc_type`, `grpc_service`, `grpc_method`, and `grpc_code` for handled calls):
//! - `grpc_server_started_total`, `grpc_server_handled_total`: calls begun, and ended by code;
//! - `grpc_server_handling_seconds`: a histogram of how long calls take, until their last byte
//!   (a stream's whole life);
//! - `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`: messages, so that
//!   `rate(msg_sent) / rate(started)` is the messages per stream.
//!
//! And for the server: `order_server_open_connections`, `order_server_open_streams`,
//! `order_server_writes_in_flight`, `order_server_commits_total` and
//! `order_server_committed_writes_total` (the group commit's transactions and the writes in them),
//! `order_server_database_connections{state="idle"|"in_use"}`,
//! `order_server_database_connections_max`, `order_server_log_lines_dropped_total`.
//!
//! The call metrics are recorded at the edge of every gRPC stack ([`crate::grpc::edge`]), through handles
//! resolved once (the `prometheus` crate's: a counter is an atomic add, the histogram a bucket
//! search and three), so a call costs a few atomic operations and no lock. Unknown services and
//! reflection share one `grpc_service="other"` series, so a client cannot create series at will.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::time::Instant;
use tonic::{body::Body as GrpcBody, Code};

use crate::{
    call::Messages,
    grpc::methods::{served_methods, GrpcMethod, Kind},
    store::Store,
    streams::OpenStreams,
};

/// Upper bounds of the latency histogram's buckets, in seconds: from a cached read (well under a
/// millisecond) to the default `--max-call-duration`.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 300.0,
];

/// gRPC's codes as go-grpc-prometheus writes them in `grpc_code`, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The labels of every call series, in the order the families below take their values.
const CALL_LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

/// Everything measured, and the registry it is rendered from. One per [`crate::App`].
pub(crate) struct Metrics {
    registry: Registry,
    families: CallFamilies,
    methods: Box<[MethodMetrics]>,
    other: MethodMetrics,
    open_streams: OpenStreams,
    store: Store,
    /// How many client connections are open, once the server counts them.
    connections: OnceLock<OpenConnections>,
    gauges: ServerGauges,
}

/// Reads how many client connections are open.
type OpenConnections = Box<dyn Fn() -> usize + Send + Sync>;

/// The call series, by their labels.
struct CallFamilies {
    started: IntCounterVec,
    handled: IntCounterVec,
    seconds: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
}

/// The handles of one method's series.
struct MethodMetrics {
    path: Box<str>,
    /// One message each way: counted here, not by the RPC.
    unary: bool,
    /// `grpc_type`, `grpc_service`, `grpc_method`.
    labels: [String; 3],
    started: IntCounter,
    /// By code, registered on first use (most methods only ever end with a few codes).
    handled: [OnceLock<IntCounter>; 17],
    seconds: Histogram,
    messages: Messages,
}

struct ServerGauges {
    connections: IntGauge,
    streams: IntGauge,
    writes: IntGauge,
    pool: IntGaugeVec,
    pool_max: IntGauge,
    /// The group commit's transactions and writes, set from the store's own counts (the lock as
    /// for `dropped_lines`).
    commits: Mutex<[IntCounter; 2]>,
    /// A counter set from the logger's own count; the lock keeps two scrapes from adding the
    /// same lines twice.
    dropped_lines: Mutex<IntCounter>,
}

impl Metrics {
    /// The registry, with a series set for each method the server serves.
    pub(crate) fn new(store: Store, open_streams: OpenStreams) -> Arc<Self> {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let with_code = [&CALL_LABELS[..], &["grpc_code"]].concat();
        let families = CallFamilies {
            started: counters(
                "grpc_server_started_total",
                "gRPC calls begun",
                &CALL_LABELS,
            ),
            handled: counters(
                "grpc_server_handled_total",
                "gRPC calls ended, by code",
                &with_code,
            ),
            seconds: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "grpc_server_handling_seconds",
                        "how long gRPC calls take, until their last byte",
                    )
                    .buckets(SECONDS_BUCKETS.to_vec()),
                    &CALL_LABELS,
                ),
            ),
            received: counters(
                "grpc_server_msg_received_total",
                "gRPC messages received",
                &CALL_LABELS,
            ),
            sent: counters(
                "grpc_server_msg_sent_total",
                "gRPC messages sent",
                &CALL_LABELS,
            ),
        };
        let methods = served_methods()
            .iter()
            .map(|method| MethodMetrics::new(&families, method))
            .collect();
        let other = MethodMetrics::other(&families);
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        let gauges = ServerGauges {
            connections: gauge("order_server_open_connections", "client connections open"),
            streams: gauge("order_server_open_streams", "server response streams open"),
            writes: gauge(
                "order_server_writes_in_flight",
                "database writes running, whether or not their caller still waits",
            ),
            pool: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "order_server_database_connections",
                        "database connections open, by state",
                    ),
                    &["state"],
                ),
            ),
            pool_max: gauge(
                "order_server_database_connections_max",
                "most database connections the pool opens",
            ),
            commits: Mutex::new([
                registered(
                    &registry,
                    IntCounter::new(
                        "order_server_commits_total",
                        "transactions the group commit committed with at least one call's write",
                    ),
                ),
                registered(
                    &registry,
                    IntCounter::new(
                        "order_server_committed_writes_total",
                        "calls' writes committed: divided by order_server_commits_total, the \
                         writes sharing one commit",
                    ),
                ),
            ]),
            dropped_lines: Mutex::new(registered(
                &registry,
                IntCounter::new(
                    "order_server_log_lines_dropped_total",
                    "log lines dropped because stderr was not read fast enough",
                ),
            )),
        };
        Arc::new(Self {
            registry,
            families,
            methods,
            other,
            open_streams,
            store,
            connections: OnceLock::new(),
            gauges,
        })
    }

    /// Reports `open()`, the client connections open, in `order_server_open_connections` from
    /// now on. (The server counts them, above this layer: it hands over the count, not itself.)
    pub(crate) fn count_connections(&self, open: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.connections.set(Box::new(open));
    }

    /// The metrics as `/metrics` answers them.
    pub(crate) fn render(&self) -> String {
        let gauges = &self.gauges;
        let open = self.connections.get().map_or(0, |open| open());
        gauges.connections.set(saturating_i64(open));
        gauges
            .streams
            .set(saturating_i64(self.open_streams.count()));
        gauges
            .writes
            .set(saturating_i64(self.store.writes_running()));
        let pool = self.store.pool_use();
        gauges
            .pool
            .with_label_values(&["idle"])
            .set(i64::from(pool.idle));
        gauges
            .pool
            .with_label_values(&["in_use"])
            .set(i64::from(pool.open.saturating_sub(pool.idle)));
        gauges.pool_max.set(i64::from(pool.max));
        {
            let counters = gauges.commits.lock().unwrap_or_else(|e| e.into_inner());
            let done = self.store.commits();
            for (counter, total) in counters.iter().zip([done.commits, done.writes]) {
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        {
            let dropped = gauges
                .dropped_lines
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let total = crate::telemetry::dropped_lines() as u64;
            dropped.inc_by(total.saturating_sub(dropped.get()));
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the text format can encode every metric")
    }

    /// Counts the call `request` begins, and starts its clock.
    pub(crate) fn begin<B>(self: &Arc<Self>, request: &mut Request<B>) -> Call {
        let index = self
            .methods
            .iter()
            .position(|method| *method.path == *request.uri().path());
        let method = index.map_or(&self.other, |index| &self.methods[index]);
        method.started.inc();
        if method.unary {
            method.messages.received();
        } else {
            request.extensions_mut().insert(method.messages.clone());
        }
        Call {
            metrics: self.clone(),
            index,
            start: Instant::now(),
        }
    }

    fn handled<'a>(&self, method: &'a MethodMetrics, code: Code) -> &'a IntCounter {
        let code = (code as usize).min(CODE_NAMES.len() - 1);
        method.handled[code].get_or_init(|| {
            let [kind, service, name] = &method.labels;
            self.families.handled.with_label_values(&[
                kind.as_str(),
                service,
                name,
                CODE_NAMES[code],
            ])
        })
    }
}

/// `made`, registered in `registry`: the metrics' names, labels and buckets are fixed here, so
/// either step failing is a bug.
fn registered<C>(registry: &Registry, made: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    const VALID: &str = "the metrics' names, labels and buckets are valid and registered once";
    let collector = made.expect(VALID);
    registry.register(Box::new(collector.clone())).expect(VALID);
    collector
}

fn saturating_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl MethodMetrics {
    fn new(families: &CallFamilies, method: &GrpcMethod) -> Self {
        let labels = [
            method.kind.as_str().to_owned(),
            method.service.clone(),
            method.name.clone(),
        ];
        Self::with_labels(families, method.path(), method.kind == Kind::Unary, labels)
    }

    /// The one series of every call to reflection or to an unknown service: counted and timed,
    /// its messages not (whether they stream is not known here).
    fn other(families: &CallFamilies) -> Self {
        let labels = ["unknown", "other", "other"].map(String::from);
        Self::with_labels(families, String::new(), false, labels)
    }

    fn with_labels(
        families: &CallFamilies,
        path: String,
        unary: bool,
        labels: [String; 3],
    ) -> Self {
        let values = [labels[0].as_str(), &labels[1], &labels[2]];
        Self {
            path: path.into(),
            unary,
            started: families.started.with_label_values(&values),
            handled: Default::default(),
            seconds: families.seconds.with_label_values(&values),
            messages: Messages::new(
                families.received.with_label_values(&values),
                families.sent.with_label_values(&values),
            ),
            labels,
        }
    }
}

/// One call being measured; recorded once, with its code, when it ends.
pub(crate) struct Call {
    metrics: Arc<Metrics>,
    /// Into `methods`; `None` for `other`.
    index: Option<usize>,
    start: Instant,
}

impl Call {
    /// The call ended before it answered: its client reset the stream or went away.
    pub(crate) fn cancelled(self) {
        self.end(Code::Cancelled);
    }

    fn end(self, code: Code) {
        let metrics = &self.metrics;
        let method = self
            .index
            .map_or(&metrics.other, |index| &metrics.methods[index]);
        metrics.handled(method, code).inc();
        method.seconds.observe(self.start.elapsed().as_secs_f64());
        if code == Code::Ok && method.unary {
            method.messages.sent();
        }
    }
}

/// The code in `grpc-status`, if there is one.
fn code_in(headers: &HeaderMap) -> Option<Code> {
    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    let value = scan_header(headers, &GRPC_STATUS)?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The first value of the header `name` in `headers`, found by a scan. `grpc-status` is looked
/// up in every call's trailers, which hold a handful of headers: comparing names costs a few instructions each,
/// where hashing a custom name costs about 150, found or not.
fn scan_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    headers
        .iter()
        .find_map(|(found, value)| (found == name).then_some(value))
}

/// `response` with its call's measurement ended at its end: at once for a trailers-only answer
/// (every error tonic or the edge sends at once: an empty body and `grpc-status` in the
/// headers), at the trailers or when the body is dropped for any other.
pub(crate) fn measured<B>(response: Response<B>, mut call: Option<Call>) -> Response<GrpcBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    // A trailers-only answer ends here. Any other answer has its code in its trailers, so its
    // headers are not searched.
    if response.body().is_end_stream() {
        if let Some(code) = code_in(response.headers()) {
            if let Some(call) = call.take() {
                call.end(code);
            }
        }
    }
    response.map(|body| match call {
        None => GrpcBody::new(body),
        Some(call) => GrpcBody::new(MeasuredBody {
            body,
            call: Some(call),
        }),
    })
}

pin_project_lite::pin_project! {
    /// A response body that ends its call's measurement at its trailers, or when it is dropped
    /// before them (the client went away: `Canceled`).
    struct MeasuredBody<B> {
        #[pin]
        body: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeasuredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.end(Code::Cancelled);
            }
        }
    }
}

impl<B: Body<Data = Bytes>> Body for MeasuredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    if let Some(call) = this.call.take() {
                        call.end(code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.end(Code::Internal);
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    call.end(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
