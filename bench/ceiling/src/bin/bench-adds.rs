//! `bench-adds`: durable `addOrder` calls per second from a tonic client, with or without an
//! idempotency key on every call, for `make bench` (h2load sends the same headers with every
//! request, so it cannot give each call a key of its own).
//!
//! Usage: `bench-adds URL SECONDS CONNECTIONS STREAMS [--keys]`. Opens CONNECTIONS HTTP/2
//! connections with STREAMS calls in flight on each, for SECONDS, and prints one line:
//! `done=N failed=M rps=R`. Every call adds the benchmark's order (`Bench item`, to `Bench, CA`);
//! with `--keys` each carries a random key of its own (a UUID), as `order-client` sends them.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use order_api::pb::{order_management_client::OrderManagementClient, Order};
use tonic::{transport::Channel, Request};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-adds URL SECONDS CONNECTIONS STREAMS [--keys]";
    let [_, url, seconds, connections, streams, rest @ ..] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parse = |value: &str| -> u64 { value.parse().unwrap_or_else(|_| panic!("{usage}")) };
    let duration = Duration::from_secs(parse(seconds));
    let keys = rest.iter().any(|arg| arg == "--keys");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..parse(connections) {
        let channel = Channel::from_shared(url.clone())
            .expect("a URL")
            .connect()
            .await
            .expect("connect");
        for _ in 0..parse(streams) {
            let client = OrderManagementClient::new(channel.clone());
            let (done, failed) = (done.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                while Instant::now() < end {
                    let mut request = Request::new(Order {
                        id: String::new(),
                        items: vec!["Bench item".into()],
                        description: String::new(),
                        price: 1.0,
                        destination: "Bench, CA".into(),
                    });
                    if keys {
                        let key = uuid::Uuid::new_v4().to_string();
                        request
                            .metadata_mut()
                            .insert("idempotency-key", key.parse().expect("a key"));
                    }
                    match client.add_order(request).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("a load task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    println!(
        "done={done} failed={} rps={:.0}",
        failed.load(Ordering::Relaxed),
        done as f64 / elapsed
    );
}
