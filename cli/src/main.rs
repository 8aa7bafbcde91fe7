//! `order-client`: the tutorial's client, in Rust. Calls an `order-server` (or any server of the
//! OrderManagement contract) over native gRPC, in all four RPC modes. Its own crate, depending on
//! `order-api` only; orders are JSON through the serde derives `order-api` generates.
//!
//! ```text
//! order-client get 106
//! order-client add --item "Pixel 9" --item "Case" --destination "Seattle, WA" --price 549
//! order-client search Google
//! order-client update '{"id":"102","items":["Pixel 9"],"destination":"Mountain View, CA","price":999}'
//! order-client process 102 103 104 105 106
//! ```

use std::{io::BufRead, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use order_api::pb::{order_management_client::OrderManagementClient, CombinedShipment, Order};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
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

/// The generated client over a channel that sends the token.
type Client = OrderManagementClient<InterceptedService<Channel, Token>>;
use tonic_types::StatusExt;

/// Call the OrderManagement service over native gRPC.
#[derive(Debug, Parser)]
#[command(name = "order-client", version, about, long_about = None)]
struct Cli {
    /// Address of the server.
    #[arg(long, env = "ORDER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,

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
    let mut client = OrderManagementClient::with_interceptor(channel, Token(token));
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
            let id = client.add_order(order).await.map_err(status_text)?;
            println!("added order {}", id.into_inner());
        }
        Command::Search { text } => search(&mut client, text).await?,
        Command::Update { .. } => {
            let orders = orders_given.unwrap_or_default();
            let summary = client
                .update_orders(futures::stream::iter(orders))
                .await
                .map_err(status_text)?;
            println!("{}", summary.into_inner());
        }
        Command::Import { .. } => {
            let orders = orders_given.unwrap_or_default();
            let summary = client
                .add_orders(futures::stream::iter(orders))
                .await
                .map_err(status_text)?;
            println!("{}", summary.into_inner());
        }
        Command::Process { ids } => process(&mut client, ids).await?,
    }
    Ok(())
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
