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
//! `order_server_database_connections{state="idle"|"in_use"}`,
//! `order_server_database_connections_max`, `order_server_log_lines_dropped_total`.
//!
//! The call metrics are recorded by [`MetricsLayer`], in the one gRPC stack, through handles
//! registered once, so a call costs a few atomic operations. Unknown services and reflection
//! share one `grpc_service="other"` series, so a client cannot create series at will.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;
use tonic::{body::Body as GrpcBody, Code};
use tower::{Layer, Service};

use crate::{
    connections::Connections,
    route::{served_methods, GrpcMethod, Kind},
    store::Store,
    streams::OpenStreams,
};

/// Upper bounds of the latency histogram's buckets, in seconds: from a cached read (well under a
/// millisecond) to the default `--max-call-duration`.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 300.0,
];

/// How often histogram samples are folded in. Until then each sample is queued (8 bytes and
/// change), so at 140 000 calls a second every 5 s would hold about 9 MB; every 100 ms holds
/// under 200 KB, and folding costs about 10 ns a sample.
const UPKEEP_EVERY: Duration = Duration::from_millis(100);

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

/// Everything measured, and the registry it is rendered from. One per [`crate::App`].
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    methods: Box<[MethodMetrics]>,
    other: MethodMetrics,
    open_streams: OpenStreams,
    store: Store,
    connections: OnceLock<Weak<Connections>>,
    gauges: ServerGauges,
}

/// The handles of one method's series.
struct MethodMetrics {
    path: Box<str>,
    /// One message each way: counted here, not by the RPC.
    unary: bool,
    labels: [Label; 3],
    started: Counter,
    handled: [OnceLock<Counter>; 17],
    seconds: Histogram,
    messages: Messages,
}

struct ServerGauges {
    connections: Gauge,
    streams: Gauge,
    pool_idle: Gauge,
    pool_in_use: Gauge,
    pool_max: Gauge,
    dropped_lines: Counter,
}

/// A method's message counters, which streaming RPCs find in their request's extensions and
/// count with as messages come and go. Without the metrics layer they count nothing.
#[derive(Clone)]
pub(crate) struct Messages {
    received: Counter,
    sent: Counter,
}

impl Messages {
    /// The counters of the call `request` belongs to.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Messages {
        request
            .extensions()
            .get::<Messages>()
            .cloned()
            .unwrap_or_else(|| Messages {
                received: Counter::noop(),
                sent: Counter::noop(),
            })
    }

    pub(crate) fn received(&self) {
        self.received.increment(1);
    }

    pub(crate) fn sent(&self) {
        self.sent.increment(1);
    }
}

impl Metrics {
    /// The registry, with a series set for each method the server serves.
    pub(crate) fn new(store: Store, open_streams: OpenStreams) -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let methods = served_methods()
            .iter()
            .map(|method| MethodMetrics::new(&recorder, method))
            .collect();
        let other = MethodMetrics::other(&recorder);
        let gauge = |name: &'static str, labels: Vec<Label>| {
            recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
        };
        let state = |state: &'static str| vec![Label::new("state", state)];
        let gauges = ServerGauges {
            connections: gauge("order_server_open_connections", vec![]),
            streams: gauge("order_server_open_streams", vec![]),
            pool_idle: gauge("order_server_database_connections", state("idle")),
            pool_in_use: gauge("order_server_database_connections", state("in_use")),
            pool_max: gauge("order_server_database_connections_max", vec![]),
            dropped_lines: recorder.register_counter(
                &Key::from_name("order_server_log_lines_dropped_total"),
                &METADATA,
            ),
        };
        Arc::new(Self {
            recorder,
            handle,
            methods,
            other,
            open_streams,
            store,
            connections: OnceLock::new(),
            gauges,
        })
    }

    /// Counts `connections` in `order_server_open_connections` from now on.
    pub(crate) fn watch_connections(&self, connections: &Arc<Connections>) {
        let _ = self.connections.set(Arc::downgrade(connections));
    }

    /// The metrics as `/metrics` answers them.
    pub(crate) fn render(&self) -> String {
        let gauges = &self.gauges;
        let open = self
            .connections
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |connections| connections.open());
        gauges.connections.set(open as f64);
        gauges.streams.set(self.open_streams.count() as f64);
        let pool = self.store.pool_use();
        gauges.pool_idle.set(f64::from(pool.idle));
        gauges
            .pool_in_use
            .set(f64::from(pool.open.saturating_sub(pool.idle)));
        gauges.pool_max.set(f64::from(pool.max));
        gauges
            .dropped_lines
            .absolute(crate::telemetry::dropped_lines() as u64);
        self.handle.render()
    }

    /// Folds histogram samples in every few seconds, for as long as the server runs.
    pub(crate) async fn upkeep(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.handle.run_upkeep();
        }
    }

    fn handled<'a>(&self, method: &'a MethodMetrics, code: Code) -> &'a Counter {
        let code = (code as usize).min(CODE_NAMES.len() - 1);
        method.handled[code].get_or_init(|| {
            let mut labels = method.labels.to_vec();
            labels.push(Label::new("grpc_code", CODE_NAMES[code]));
            self.recorder.register_counter(
                &Key::from_parts("grpc_server_handled_total", labels),
                &METADATA,
            )
        })
    }
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);

fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        ("grpc_server_started_total", "gRPC calls begun"),
        ("grpc_server_handled_total", "gRPC calls ended, by code"),
        ("grpc_server_msg_received_total", "gRPC messages received"),
        ("grpc_server_msg_sent_total", "gRPC messages sent"),
        (
            "order_server_log_lines_dropped_total",
            "log lines dropped because stderr was not read fast enough",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), None, help.into());
    }
    recorder.describe_histogram(
        "grpc_server_handling_seconds".into(),
        Some(Unit::Seconds),
        "how long gRPC calls take, until their last byte".into(),
    );
    let gauges = [
        ("order_server_open_connections", "client connections open"),
        ("order_server_open_streams", "server response streams open"),
        (
            "order_server_database_connections",
            "database connections open, by state",
        ),
        (
            "order_server_database_connections_max",
            "most database connections the pool opens",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(name.into(), None, help.into());
    }
}

impl MethodMetrics {
    fn new(recorder: &PrometheusRecorder, method: &GrpcMethod) -> Self {
        let labels = [
            Label::new("grpc_type", method.kind.as_str()),
            Label::new("grpc_service", method.service.clone()),
            Label::new("grpc_method", method.name.clone()),
        ];
        Self::with_labels(recorder, method.path(), method.kind == Kind::Unary, labels)
    }

    /// The one series of every call to reflection or to an unknown service: counted and timed,
    /// its messages not (whether they stream is not known here).
    fn other(recorder: &PrometheusRecorder) -> Self {
        let labels = [
            Label::new("grpc_type", "unknown"),
            Label::new("grpc_service", "other"),
            Label::new("grpc_method", "other"),
        ];
        Self::with_labels(recorder, String::new(), false, labels)
    }

    fn with_labels(
        recorder: &PrometheusRecorder,
        path: String,
        unary: bool,
        labels: [Label; 3],
    ) -> Self {
        let counter = |name: &'static str| {
            recorder.register_counter(&Key::from_parts(name, labels.to_vec()), &METADATA)
        };
        Self {
            path: path.into(),
            unary,
            started: counter("grpc_server_started_total"),
            handled: Default::default(),
            seconds: recorder.register_histogram(
                &Key::from_parts("grpc_server_handling_seconds", labels.to_vec()),
                &METADATA,
            ),
            messages: Messages {
                received: counter("grpc_server_msg_received_total"),
                sent: counter("grpc_server_msg_sent_total"),
            },
            labels,
        }
    }
}

/// Measures every gRPC call below it (see the module's doc).
#[derive(Clone)]
pub(crate) struct MetricsLayer(pub(crate) Option<Arc<Metrics>>);

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            metrics: self.0.clone(),
            inner,
        }
    }
}

/// The service [`MetricsLayer`] makes.
#[derive(Clone)]
pub(crate) struct MetricsService<S> {
    metrics: Option<Arc<Metrics>>,
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<GrpcBody>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let call = self.metrics.as_ref().map(|metrics| {
            let index = metrics
                .methods
                .iter()
                .position(|method| *method.path == *request.uri().path());
            let method = index.map_or(&metrics.other, |index| &metrics.methods[index]);
            method.started.increment(1);
            if method.unary {
                method.messages.received.increment(1);
            } else {
                request.extensions_mut().insert(method.messages.clone());
            }
            Call {
                metrics: metrics.clone(),
                index,
                start: Instant::now(),
            }
        });
        MetricsFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

/// One call being measured; recorded once, with its code, when it ends.
struct Call {
    metrics: Arc<Metrics>,
    /// Into `methods`; `None` for `other`.
    index: Option<usize>,
    start: Instant,
}

impl Call {
    fn end(self, code: Code) {
        let metrics = &self.metrics;
        let method = self
            .index
            .map_or(&metrics.other, |index| &metrics.methods[index]);
        metrics.handled(method, code).increment(1);
        method.seconds.record(self.start.elapsed().as_secs_f64());
        if code == Code::Ok && method.unary {
            method.messages.sent.increment(1);
        }
    }
}

/// The code in `grpc-status`, if there is one.
fn code_in(headers: &HeaderMap) -> Option<Code> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let value = headers.get(GRPC_STATUS)?;
    Some(Code::from_bytes(value.as_bytes()))
}

pin_project_lite::pin_project! {
    /// The response future of [`MetricsService`].
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> std::future::Future for MetricsFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Output = Result<Response<GrpcBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let mut call = this.call.take();
        // A trailers-only answer (every error tonic or a layer sends at once: an empty body and
        // `grpc-status` in the headers) ends here. Any other answer has its code in its trailers,
        // so its headers are not searched.
        if response.body().is_end_stream() {
            if let Some(code) = code_in(response.headers()) {
                if let Some(call) = call.take() {
                    call.end(code);
                }
            }
        }
        Poll::Ready(Ok(response.map(|body| match call {
            None => GrpcBody::new(body),
            Some(call) => GrpcBody::new(MeasuredBody {
                body,
                call: Some(call),
            }),
        })))
    }
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
