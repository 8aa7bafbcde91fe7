//! `order-client`: the tutorial's client, in Rust. Calls an `order-server` (or any server of the
//! OrderManagement contract) over native gRPC.
//!
//! ```text
//! order-client get 106
//! order-client --addr http://127.0.0.1:50051 get 102
//! ```

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use order_api::pb::{order_management_client::OrderManagementClient, Order};
use tonic::transport::{Channel, Endpoint};

/// Call the OrderManagement service over native gRPC.
#[derive(Debug, Parser)]
#[command(name = "order-client", version, about, long_about = None)]
struct Cli {
    /// Address of the server.
    #[arg(long, env = "ORDER_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,

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
    let endpoint = Endpoint::from_shared(cli.addr.clone())
        .map_err(|e| format!("--addr {:?} is not a valid URL: {e}", cli.addr))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "cannot connect to {}: {} (is order-server running?)",
            cli.addr,
            source_chain(&e)
        )
    })?;
    let mut client = OrderManagementClient::new(channel);
    match cli.command {
        Command::Get { id } => get(&mut client, id).await,
    }
}

async fn get(client: &mut OrderManagementClient<Channel>, id: String) -> Result<(), String> {
    let order = client
        .get_order(id)
        .await
        .map_err(status_text)?
        .into_inner();
    print!("{}", format_order(&order));
    Ok(())
}

/// `NotFound: order "999" not found`: the gRPC code, then the server's message.
fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
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
