//! What the benchmark's reference servers share: order 106, the runtime choice and the way
//! connections are served, so `bench-ceiling` and `bench-tonic` differ only in what answers.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

/// The order every reference server answers with: the tutorial's order 106.
pub fn order_106() -> order_api::pb::Order {
    order_api::pb::Order {
        id: "106".into(),
        items: vec!["Amazon Echo".into(), "Apple iPhone XS".into()],
        description: String::new(),
        price: 300.0,
        destination: "Mountain View, CA".into(),
    }
}

/// Serves `service` on the address in the first argument (`default` without one) until the
/// process is stopped, each connection on its own task with hyper's auto builder (HTTP/1.1 and
/// h2c). The runtime is `order-server`'s choice: single-threaded when the process may use one CPU
/// (as under the benchmark's taskset), so every server is compared on equal terms.
pub fn run<S, B>(name: &str, default: &str, service: S) -> std::io::Result<()>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let runtime = match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("{name} listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
