//! The open connections: how many may be open at once (`--max-connections`), which of them are
//! idle, and closing them all on shutdown.
//!
//! A connection is admitted with a [`Slot`]; when every slot is taken, an idle connection (no
//! call in flight; a half-open one first, that has made no call yet, such as a silent socket, a
//! TLS handshake or a request head begun and stopped; then the oldest) is told to close and the
//! new one takes its slot; when none is idle, the new
//! connection is refused at once (closed), so clients fail fast instead of queueing unseen in the
//! kernel's backlog. The default limit leaves a reserve of file descriptors for the database,
//! the page's files and the logs, so connections alone never exhaust them.
//!
//! Each call on a connection counts as in flight from the moment it arrives until its response
//! body has been sent or dropped ([`Counted`]), streams included.
//!
//! A connection that has made no call by `--handshake-timeout` is closed, and so is one with
//! nothing in flight for too long after that ([`Connection::close_when_quiet`]): a client that
//! went silent, sends a request head too slowly, or keeps an HTTP/1.1 connection idle. One
//! watcher task per connection checks a flag a few times per period, so a call costs one store,
//! where a timer armed for every request head (hyper's `header_read_timeout`) cost about 1 400
//! instructions per HTTP/1.1 call.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// How long a new connection waits for the idle connection it displaced to close: a half-open
/// one goes at once, an idle one within `QUIET_CLOSE_GRACE` (1 s, in `server.rs`).
const SHED_WAIT: Duration = Duration::from_secs(2);

/// `--max-connections`, or its default from the process's file-descriptor limit.
pub(crate) fn max_connections(config: &Config) -> usize {
    match config.max_connections {
        Some(max) => max.get(),
        None => {
            let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
            default_max_connections(soft)
        }
    }
}

/// The default `--max-connections` for a file-descriptor limit of `nofile`: all of it but a
/// reserve of a quarter (at most 256) for everything else the server opens.
pub(crate) fn default_max_connections(nofile: u64) -> usize {
    let reserve = (nofile / 4).min(256);
    usize::try_from(nofile - reserve)
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

/// Every open connection, and the limit on them.
pub(crate) struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    open: Mutex<Vec<Weak<Connection>>>,
    /// The server is stopping: every connection, and any admitted from now on, is told to close.
    closing: AtomicBool,
    /// Signalled whenever a connection closes.
    closed: Notify,
}

/// One open connection, as [`Connections`] sees it.
pub(crate) struct Connection {
    in_flight: AtomicUsize,
    /// Has had a call: a client that uses it, not a socket that only holds a place.
    used: AtomicBool,
    /// A call has started since the quiet watcher last looked.
    active: AtomicBool,
    /// Has had an HTTP/2 call: its keep-alive pings tell a dead peer, and an idle HTTP/2
    /// connection is a client's channel kept for its next call, so it is not closed for quiet.
    http2: AtomicBool,
    /// Closed by the quiet watcher: a connection in the middle of nothing, not waited for.
    quiet_too_long: AtomicBool,
    /// Picked to close to make room.
    shed: AtomicBool,
    /// Told to close: shed, or the server is stopping.
    close: AtomicBool,
    /// What wakes the connection's task when it is told to close.
    waker: Mutex<Option<Waker>>,
}

impl Connection {
    /// Completes once the connection should close: the server is stopping, or another
    /// connection needs its slot.
    ///
    /// The connection's task polls this every time it wakes, once per HTTP/1.1 request: a poll
    /// is one load of a flag and a comparison of wakers, with no lock unless the task's waker
    /// changed (a `Notify` and a `watch` took about 180 instructions a request).
    pub(crate) fn told_to_close(&self) -> impl Future<Output = ()> + '_ {
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(move |cx| {
            if self.close.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                registered = Some(cx.waker().clone());
                *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = registered.clone();
                // Told between the first check and the waker being stored: nobody woke it.
                if self.close.load(Ordering::Acquire) {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
    }

    /// Tells the connection to close if it has had no call by `half_open_until` (a TLS handshake
    /// or a first request head not done in time), and after that once nothing has been in flight
    /// on it for `limit` (and it has had no HTTP/2 call), from a task of its own that looks every
    /// quarter of `limit`: so after between `limit` and 1.25 times `limit` of quiet. The task ends
    /// with the connection, or at its first HTTP/2 call, after which it is never closed for quiet.
    pub(crate) fn close_when_quiet(
        self: &Arc<Self>,
        half_open_until: tokio::time::Instant,
        limit: Duration,
    ) {
        const LOOKS: u32 = 4;
        let connection = Arc::downgrade(self);
        let every = (limit / LOOKS).max(Duration::from_millis(1));
        tokio::spawn(async move {
            tokio::time::sleep_until(half_open_until).await;
            match connection.upgrade() {
                None => return,
                Some(connection) if !connection.used() => {
                    tracing::debug!(
                        "no TLS handshake and request head within --handshake-timeout: closing"
                    );
                    // With nothing in flight, it is closed without waiting (see `idle`).
                    connection.tell_to_close();
                    return;
                }
                Some(_) => {}
            }
            let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut quiet_looks = 0;
            loop {
                looks.tick().await;
                let Some(connection) = connection.upgrade() else {
                    return;
                };
                if connection.http2.load(Ordering::Acquire) {
                    return;
                }
                let quiet = connection.in_flight.load(Ordering::Acquire) == 0
                    && !connection.active.swap(false, Ordering::AcqRel);
                quiet_looks = if quiet { quiet_looks + 1 } else { 0 };
                if quiet_looks >= LOOKS {
                    connection.quiet_too_long.store(true, Ordering::Release);
                    connection.tell_to_close();
                    return;
                }
            }
        });
    }

    /// Whether it has had a call: a complete request head. Until then it is half-open.
    pub(crate) fn used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    /// Whether it has no call in flight.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether [`Self::close_when_quiet`] closed it.
    pub(crate) fn quiet_too_long(&self) -> bool {
        self.quiet_too_long.load(Ordering::Acquire)
    }

    fn tell_to_close(&self) {
        self.close.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            waker.wake();
        }
    }
}

/// A connection's place among the open ones: its slot is given back when this is dropped.
pub(crate) struct Slot {
    pub(crate) connection: Arc<Connection>,
    connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.closed.notify_waiters();
    }
}

impl Connections {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            open: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        })
    }

    /// How many connections are open.
    pub(crate) fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A slot for a new connection: a free one, or one an idle connection gives up (waiting at
    /// most [`SHED_WAIT`] for it to close). `None`: every connection is busy, refuse this one.
    pub(crate) async fn admit(self: &Arc<Self>) -> Option<Slot> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.shed_one_idle() {
                    return None;
                }
                tokio::time::timeout(SHED_WAIT, self.slots.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let connection = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            active: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            quiet_too_long: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            close: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let mut open = self.open.lock().expect("not poisoned");
        // Under the lock `close_all` takes too: either it sees this connection, or this sees
        // that the server is stopping.
        if self.closing.load(Ordering::Acquire) {
            connection.tell_to_close();
        }
        // Closed connections are pruned once they outnumber the open ones: amortized, not a scan
        // of every connection on every accept.
        if open.len() >= 2 * self.open().max(16) {
            open.retain(|connection| connection.strong_count() > 0);
        }
        open.push(Arc::downgrade(&connection));
        drop(open);
        Some(Slot {
            connection,
            connections: self.clone(),
            _permit: permit,
        })
    }

    /// Tells an idle connection (no call in flight) to close: one that never had a call if there
    /// is one, else the oldest.
    fn shed_one_idle(&self) -> bool {
        let open = self.open.lock().expect("not poisoned");
        let idle = |never_used: bool| {
            open.iter().filter_map(Weak::upgrade).find(|connection| {
                connection.in_flight.load(Ordering::Acquire) == 0
                    && !(never_used && connection.used.load(Ordering::Acquire))
                    && !connection.shed.swap(true, Ordering::AcqRel)
            })
        };
        let idle = idle(true).or_else(|| idle(false));
        match idle {
            Some(connection) => {
                tracing::debug!("every connection slot is taken: closing an idle connection");
                connection.tell_to_close();
                true
            }
            None => false,
        }
    }

    /// Tells every connection to close (each finishes the calls it has in flight first).
    pub(crate) fn close_all(&self) {
        let open = self.open.lock().expect("not poisoned");
        self.closing.store(true, Ordering::Release);
        for connection in open.iter().filter_map(Weak::upgrade) {
            connection.tell_to_close();
        }
    }

    /// Completes once every connection has closed.
    pub(crate) async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Completes once some connection closes (or after `at_most`).
    pub(crate) async fn one_closed(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.closed.notified()).await;
    }
}

/// A connection's service: counts each call in flight on `connection` until its response body
/// is done.
#[derive(Clone)]
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) connection: Arc<Connection>,
}

/// A call in flight; the count goes down when it is dropped.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn new(connection: &Arc<Connection>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        connection.used.store(true, Ordering::Release);
        connection.active.store(true, Ordering::Release);
        Self(connection.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B, ResBody> hyper::service::Service<Request<B>> for Counted<S>
where
    S: hyper::service::Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, request: Request<B>) -> Self::Future {
        if request.version() == Version::HTTP_2 {
            self.connection.http2.store(true, Ordering::Release);
        }
        CountedFuture {
            in_flight: Some(InFlight::new(&self.connection)),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Counted`]: hands the in-flight count on to the body.
    pub(crate) struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, ResBody, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<CountedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(response.map(|response| {
            response.map(|body| CountedBody {
                body,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted in flight until it is dropped.
    pub(crate) struct CountedBody<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    #[test]
    fn the_default_limit_leaves_a_reserve() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(64), 48);
        assert_eq!(default_max_connections(1_048_576), 1_048_576 - 256);
        assert_eq!(default_max_connections(1), 1);
    }

    /// Whether `slot`'s connection has been told to close.
    fn told(slot: &Slot) -> bool {
        slot.connection.close.load(Ordering::Acquire)
    }

    const LIMIT: Duration = Duration::from_secs(8);

    /// A connection that has made a call (its request head came in time), watched for quiet.
    async fn used_and_watched(connections: &Arc<Connections>) -> Slot {
        let slot = connections.admit().await.unwrap();
        drop(InFlight::new(&slot.connection));
        slot.connection
            .close_when_quiet(tokio::time::Instant::now(), LIMIT);
        slot
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_call_by_the_handshake_deadline_is_closed_then() {
        let connections = Connections::new(4);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let half_open = connections.admit().await.unwrap();
        half_open.connection.close_when_quiet(deadline, LIMIT);
        let used = connections.admit().await.unwrap();
        used.connection.close_when_quiet(deadline, LIMIT);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!told(&half_open), "closed before its deadline");
        drop(InFlight::new(&used.connection));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            told(&half_open),
            "half-open after its deadline, and still open"
        );
        assert!(
            !told(&used),
            "a connection that made a call is not half-open"
        );
    }

    // Paused time: the watcher's looks come as the runtime idles, without waiting.
    #[tokio::test(start_paused = true)]
    async fn a_connection_with_nothing_in_flight_is_closed_after_its_limit() {
        let connections = Connections::new(4);
        let slot = used_and_watched(&connections).await;
        tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
        assert!(!told(&slot), "closed before its limit");
        tokio::time::sleep(LIMIT / 4 + Duration::from_secs(2)).await;
        assert!(told(&slot), "still open a look after its limit");
        assert!(slot.connection.quiet_too_long());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_or_just_ended_keep_a_connection_open() {
        let connections = Connections::new(4);
        let slot = used_and_watched(&connections).await;
        // A long call (a stream, a slow upload): in flight for many limits.
        let call = InFlight::new(&slot.connection);
        tokio::time::sleep(LIMIT * 5).await;
        assert!(!told(&slot), "closed with a call in flight");
        drop(call);
        // Short calls, one a little more often than the limit: never quiet for the limit.
        for _ in 0..5 {
            tokio::time::sleep(LIMIT / 2).await;
            drop(InFlight::new(&slot.connection));
        }
        assert!(!told(&slot), "closed between calls");
        tokio::time::sleep(LIMIT + LIMIT / 2).await;
        assert!(told(&slot), "still open a look after its limit of quiet");
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_had_a_call_is_not_closed_for_quiet() {
        let connections = Connections::new(4);
        let slot = used_and_watched(&connections).await;
        let counted = Counted {
            inner: hyper::service::service_fn(|_: Request<Empty<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
            }),
            connection: slot.connection.clone(),
        };
        let mut request = Request::new(Empty::new());
        *request.version_mut() = Version::HTTP_2;
        let response = hyper::service::Service::call(&counted, request)
            .await
            .unwrap();
        drop(response);
        // Its keep-alive pings tell whether the peer is there; idle, it is a channel kept open.
        tokio::time::sleep(LIMIT * 5).await;
        assert!(!told(&slot), "an idle HTTP/2 channel was closed");
    }

    #[tokio::test]
    async fn a_full_server_sheds_an_idle_connection_and_refuses_when_none_is() {
        let connections = Connections::new(2);
        let busy = connections.admit().await.unwrap();
        let _call = InFlight::new(&busy.connection);
        let idle = connections.admit().await.unwrap();
        assert_eq!(connections.open(), 2);

        // Full: the idle one is told to close; once it has, the newcomer gets its slot.
        let idle_closes = async {
            idle.connection.told_to_close().await;
            drop(idle);
        };
        let (admitted, ()) = tokio::join!(connections.admit(), idle_closes);
        let newcomer = admitted.expect("took the idle connection's slot");
        assert_eq!(connections.open(), 2);

        // Now one is busy and the other is the newcomer, not yet told to close but idle too.
        let _newcomer_call = InFlight::new(&newcomer.connection);
        assert!(connections.admit().await.is_none(), "every connection busy");
    }
}
