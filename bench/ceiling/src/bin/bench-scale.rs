//! `bench-scale`: the client side of `make bench`'s scale table (`bench/scale.py`).
//!
//! - `bench-scale load URL N`: adds N orders through `addOrders`, 10 000 a call (the server's
//!   limit per call), and prints `seconds=S`. Every third order has the item `Common widget`, the
//!   one in the middle `Zanzibar teapot`; the others one of a few plain items, each numbered.
//! - `bench-scale search URL TERM RUNS`: runs `searchOrders(TERM)` RUNS times, one after the
//!   other, and prints the medians of the time to the whole answer and to its first order:
//!   `whole_ms=W first_ms=F found=N` (`first_ms` is the whole answer's time when nothing matches).
//! - `bench-scale ready URL`: calls `getOrder("102")` until it answers, and prints `ms=T`, the
//!   time that took.

use std::time::{Duration, Instant};

use order_api::pb::{order_management_client::OrderManagementClient, Order};
use tonic::transport::Channel;

/// The most orders one `addOrders` call may carry.
const PER_CALL: usize = 10_000;

/// The rare term: in exactly one order.
pub const RARE: &str = "Zanzibar teapot";
/// The common term: in every third order.
pub const COMMON: &str = "Common widget";

fn order(n: usize, total: usize) -> Order {
    const PLAIN: [&str; 5] = [
        "Desk lamp",
        "Oak chair",
        "Coffee mug",
        "Bookshelf",
        "Phone case",
    ];
    let item = if n == total / 2 {
        RARE.to_owned()
    } else if n.is_multiple_of(3) {
        format!("{COMMON} {n}")
    } else {
        format!("{} {n}", PLAIN[n % PLAIN.len()])
    };
    Order {
        id: String::new(),
        items: vec![item],
        description: format!("scale order {n}"),
        price: 10.0,
        destination: "Scale, CA".into(),
    }
}

async fn client(url: &str) -> OrderManagementClient<Channel> {
    let channel = Channel::from_shared(url.to_owned())
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    OrderManagementClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-scale load URL N | search URL TERM RUNS | ready URL";
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "load", url, n] => {
            let total: usize = n.parse().expect(usage);
            let mut client = client(url).await;
            let start = Instant::now();
            for first in (0..total).step_by(PER_CALL) {
                let last = (first + PER_CALL).min(total);
                let orders: Vec<Order> = (first..last).map(|n| order(n, total)).collect();
                client
                    .add_orders(futures::stream::iter(orders))
                    .await
                    .expect("addOrders");
            }
            println!("seconds={:.3}", start.elapsed().as_secs_f64());
        }
        [_, "search", url, term, runs] => {
            let runs: usize = runs.parse().expect(usage);
            let mut client = client(url).await;
            let (mut whole, mut first, mut found) = (Vec::new(), Vec::new(), 0);
            for _ in 0..runs {
                let start = Instant::now();
                let mut answer = client
                    .search_orders(term.to_string())
                    .await
                    .expect("searchOrders")
                    .into_inner();
                let mut first_at = None;
                found = 0;
                while answer.message().await.expect("a search answer").is_some() {
                    first_at.get_or_insert_with(|| ms(start));
                    found += 1;
                }
                let all = ms(start);
                whole.push(all);
                first.push(first_at.unwrap_or(all));
            }
            println!(
                "whole_ms={:.3} first_ms={:.3} found={found}",
                median(whole),
                median(first)
            );
        }
        [_, "ready", url] => {
            let start = Instant::now();
            loop {
                if let Ok(channel) = Channel::from_shared(url.to_string())
                    .expect(usage)
                    .connect()
                    .await
                {
                    let mut client = OrderManagementClient::new(channel);
                    if client.get_order("102".to_string()).await.is_ok() {
                        break;
                    }
                }
                if start.elapsed() > Duration::from_secs(120) {
                    eprintln!("no answer in 120 s");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("ms={:.1}", ms(start));
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
