//! `order-client`: the tutorial's client, in Rust. Calls an `order-server` (or any server of the
//! OrderManagement contract) over native gRPC, gRPC-Web or the Connect protocol (`--protocol`),
//! in all four RPC modes. Its own crate, depending on `order-api` only; orders are JSON through
//! the serde impls `order-api` generates (protobuf's JSON mapping).
//!
//! ```text
//! order-client get 106
//! order-client add --item "Pixel 9" --item "Case" --destination "Seattle, WA" --price 549
//! order-client search Google
//! order-client update '{"id":"102","items":["Pixel 9"],"destination":"Mountain View, CA","price":999}'
//! order-client process 102 103 104 105 106
//! ```
//!
//! Every write (`add`, `update`, `import`) carries an idempotency key, fresh for each command
//! (or `--idempotency-key`), and is retried with the same key when its outcome is unknown
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `UNKNOWN`): the server applies it once, however
//! many attempts reach it.

mod protocol;

use std::{io::BufRead, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use order_api::pb::{order_management_client::OrderManagementClient, CombinedShipment, Order};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

/// Sends the bearer token, if any, with every call.
#[derive(Clone)]
struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The generated client over a channel, in the chosen protocol, that sends the token.
type Client = OrderManagementClient<InterceptedService<protocol::Transport, Token>>;
use tonic_types::StatusExt;

/// Call the OrderManagement service over native gRPC, gRPC-Web or the Connect protocol.
#[derive(Debug, Parser)]
#[command(name = "order-client", version, about, long_about = None)]
struct Cli {
    /// Address of the server.
    #[arg(long, env = "ORDER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,

    /// The protocol to call it by: native gRPC, gRPC-Web (as browsers) or Connect (as `curl` and
    /// Connect-ES), each over HTTP/2. The server speaks all three on the same port.
    #[arg(long, env = "ORDER_PROTOCOL", value_enum, default_value_t = protocol::Protocol::Grpc)]
    protocol: protocol::Protocol,

    /// Bearer token sent with every call, for a server that checks tokens (see `order-server
    /// token`).
    #[arg(long, env = "ORDER_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// PEM certificate of the CA (or the self-signed certificate) an https:// server's
    /// certificate must chain to. Without it, the system's trusted CAs.
    #[arg(long, env = "ORDER_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,

    /// Deadline of each call, in seconds (sent to the server as grpc-timeout).
    #[arg(long, env = "ORDER_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,

    /// How many times a write is tried again when its outcome is unknown (UNAVAILABLE,
    /// DEADLINE_EXCEEDED, ABORTED, UNKNOWN), with the same idempotency key, after waits that
    /// double from 100 ms up to 2 s (with jitter). 0: never.
    #[arg(long, env = "ORDER_RETRIES", default_value_t = 4)]
    retries: u32,

    /// The idempotency key of a write (add, update, import): the same key and request again, even
    /// from another run of this command, is answered from the first, never applied twice. A fresh
    /// random key by default.
    #[arg(long, env = "ORDER_IDEMPOTENCY_KEY")]
    idempotency_key: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the order with this ID (getOrder).
    Get {
        /// The order's ID, e.g. 106.
        id: String,
    },
    /// Store a new order and print its ID (addOrder).
    Add {
        /// The order's ID; leave it out and the server assigns one.
        #[arg(long, default_value = "")]
        id: String,
        /// An item of the order; repeat for several.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Where the order goes, e.g. "Seattle, WA".
        #[arg(long)]
        destination: String,
        /// The order's price.
        #[arg(long, allow_negative_numbers = true)]
        price: f32,
        /// A free-text description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Print every order with an item containing TEXT, ignoring case, as they stream in
    /// (searchOrders).
    Search {
        /// Text to look for in the items, e.g. Google.
        text: String,
    },
    /// Replace existing orders, all or nothing (updateOrders). Each ORDER is a JSON object such as
    /// {"id":"102","items":["Pixel 9"],"destination":"Mountain View, CA","price":999}; with `-`,
    /// one object per line is read from standard input.
    Update {
        /// The replacement orders, as JSON, or `-` for standard input.
        #[arg(required = true)]
        orders: Vec<String>,
    },
    /// Store new orders, all or nothing (addOrders): IDs left out are assigned by the server, and
    /// one bad order (each is named) stores none. ORDERs as for `update`, or `-` to read one JSON
    /// object per line from standard input, such as a JSON-lines file.
    Import {
        /// The new orders, as JSON, or `-` for standard input.
        #[arg(required = true)]
        orders: Vec<String>,
    },
    /// Group these orders by destination into shipments, printed as each is complete
    /// (processOrders).
    Process {
        /// The orders' IDs, e.g. 102 103 104.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> Result<(), String> {
    let timeout = Duration::try_from_secs_f64(cli.timeout)
        .map_err(|_| format!("--timeout {} is not a number of seconds", cli.timeout))?;
    // Read local input before connecting, so its mistakes are reported first.
    let orders_given = match &cli.command {
        Command::Update { orders } | Command::Import { orders } => Some(parse_orders(orders)?),
        _ => None,
    };
    let mut endpoint = Endpoint::from_shared(cli.addr.clone())
        .map_err(|e| format!("--addr {:?} is not a valid URL: {e}", cli.addr))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if cli.addr.starts_with("https://") {
        let tls = match &cli.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("cannot set up TLS: {}", source_chain(&e)))?;
    }
    let token = cli
        .token
        .as_deref()
        .map(|token| {
            format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "--token has characters a token cannot have".to_owned())
        })
        .transpose()?;
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot connect to {}: {} (is order-server running?)",
            cli.addr,
            source_chain(&e)
        )
    })?;
    let transport = protocol::transport(channel, cli.protocol);
    let mut client = OrderManagementClient::with_interceptor(transport, Token(token));
    let key = match cli.idempotency_key {
        Some(key) => key,
        None => new_key(),
    };
    let key: MetadataValue<Ascii> = key
        .parse()
        .map_err(|_| format!("--idempotency-key {key:?} has characters a key cannot have"))?;
    let writes = Retries {
        key,
        retries: cli.retries,
    };
    match cli.command {
        Command::Get { id } => {
            let order = client.get_order(id).await.map_err(status_text)?;
            print!("{}", format_order(&order.into_inner()));
        }
        Command::Add {
            id,
            items,
            destination,
            price,
            description,
        } => {
            let order = Order {
                id,
                items,
                description,
                price,
                destination,
            };
            let id = writes
                .run(|keyed| {
                    let (mut client, request) = (client.clone(), keyed(order.clone()));
                    async move { client.add_order(request).await }
                })
                .await?;
            println!("added order {id}");
        }
        Command::Search { text } => search(&mut client, text).await?,
        Command::Update { .. } | Command::Import { .. } => {
            let update = matches!(cli.command, Command::Update { .. });
            let orders = orders_given.unwrap_or_default();
            let summary = writes
                .run(|keyed| {
                    let request = keyed(futures::stream::iter(orders.clone()));
                    let mut client = client.clone();
                    async move {
                        match update {
                            true => client.update_orders(request).await,
                            false => client.add_orders(request).await,
                        }
                    }
                })
                .await?;
            println!("{summary}");
        }
        Command::Process { ids } => process(&mut client, ids).await?,
    }
    Ok(())
}

/// How a write is sent: with its idempotency key, tried again while its outcome is unknown.
struct Retries {
    key: MetadataValue<Ascii>,
    retries: u32,
}

/// Shortest and longest wait before a retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Retries {
    /// Runs `call` (given a function that makes its request carry the key) until it succeeds,
    /// fails for good, or the retries run out.
    async fn run<T, R, F>(
        &self,
        mut call: impl FnMut(&dyn Fn(R) -> tonic::Request<R>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let keyed = |message: R| {
            let mut request = tonic::Request::new(message);
            request
                .metadata_mut()
                .insert("idempotency-key", self.key.clone());
            request
        };
        let mut attempt = 0;
        loop {
            match call(&keyed).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if attempt < self.retries && outcome_unknown(status.code()) => {
                    attempt += 1;
                    let wait = backoff(attempt);
                    eprintln!(
                        "{}; trying again in {} ms with the same idempotency key (retry {attempt} of {})",
                        status_text(status),
                        wait.as_millis(),
                        self.retries
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(status) => return Err(status_text(status)),
            }
        }
    }
}

/// Codes after which a write may or may not have been applied, or was not and may be tried
/// again: with its key, a retry is safe.
fn outcome_unknown(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | DeadlineExceeded | Aborted | Unknown)
}

/// The wait before retry `attempt` (1, 2, …): "full jitter", a random time up to 100 ms doubled
/// each attempt, at most 2 s, so that clients that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF);
    ceiling.mul_f64(fastrand::f64().max(0.1))
}

/// A new random idempotency key, in the UUID format (version 4).
fn new_key() -> String {
    let bits = (fastrand::u128(..) & !(0xf000 << 64) & !(0xc << 60)) | (0x4000 << 64) | (0x8 << 60);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

async fn search(client: &mut Client, text: String) -> Result<(), String> {
    let mut orders = client
        .search_orders(text.clone())
        .await
        .map_err(status_text)?
        .into_inner();
    let mut found = 0;
    while let Some(order) = orders.message().await.map_err(status_text)? {
        found += 1;
        print!("{}", format_order(&order));
    }
    if found == 0 {
        println!("no order has an item containing {text:?}");
    }
    Ok(())
}

async fn process(client: &mut Client, ids: Vec<String>) -> Result<(), String> {
    let mut shipments = client
        .process_orders(futures::stream::iter(ids))
        .await
        .map_err(status_text)?
        .into_inner();
    while let Some(shipment) = shipments.message().await.map_err(status_text)? {
        println!("{}", format_shipment(&shipment));
    }
    Ok(())
}

fn parse_orders(args: &[String]) -> Result<Vec<Order>, String> {
    let mut texts = Vec::new();
    for arg in args {
        if arg == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| format!("cannot read standard input: {e}"))?;
                if !line.trim().is_empty() {
                    texts.push(line);
                }
            }
        } else {
            texts.push(arg.clone());
        }
    }
    texts
        .iter()
        .map(|text| {
            // JSON in the proto's field names, as `buf curl` prints orders (serde derives that
            // order-api generates with its `serde` feature).
            serde_json::from_str::<Order>(text)
                .map_err(|e| format!("{text:?} is not an order: {e}"))
        })
        .collect()
}

/// `NotFound: order "999" not found`: the gRPC code, then the server's message, then any
/// field violations the server attached.
fn status_text(status: tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad_request) = status.get_details_bad_request() {
        for violation in bad_request.field_violations {
            text.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
    }
    text
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn format_order(order: &Order) -> String {
    let mut text = format!("Order {}\n", order.id);
    text.push_str("  items:\n");
    for item in &order.items {
        text.push_str(&format!("    - {item}\n"));
    }
    if !order.description.is_empty() {
        text.push_str(&format!("  description: {}\n", order.description));
    }
    text.push_str(&format!("  price: {:.2}\n", order.price));
    text.push_str(&format!("  destination: {}\n", order.destination));
    text
}

fn format_shipment(shipment: &CombinedShipment) -> String {
    let destination = shipment
        .orders_list
        .first()
        .map_or("", |order| order.destination.as_str());
    let ids: Vec<&str> = shipment.orders_list.iter().map(|o| o.id.as_str()).collect();
    format!(
        "{} ({}) to {destination}: orders {}",
        shipment.id,
        shipment.status,
        ids.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_uuids() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn backoff_grows_to_its_ceiling() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            let ceiling = (FIRST_BACKOFF * 2u32.pow((attempt - 1).min(10))).min(MAX_BACKOFF);
            assert!(wait <= ceiling, "retry {attempt}: {wait:?}");
        }
    }
}
