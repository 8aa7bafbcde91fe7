//! `bench-tonic`: what tonic alone costs on top of hyper, for `make bench` to compare against.
//!
//! The order service's generated tonic server (and tonic-web's translation for gRPC-Web calls),
//! with a handler that answers `getOrder("106")` with order 106 and nothing else: no store, no
//! layers (metrics, host check, authentication, deadlines), no logging. It is served the way
//! `bench-ceiling` serves its bytes (hyper's auto builder, one task per connection, the same
//! runtime choice) and on `order-server`'s allocator (mimalloc), so the table reads as three
//! steps: hyper alone (`bench-ceiling`), plus tonic (this), plus everything `order-server` does.
//! Usage: `bench-tonic 127.0.0.1:PORT`.

use std::pin::Pin;

use futures::Stream;
use hyper_util::service::TowerToHyperService;
use order_api::pb::{
    order_management_server::{OrderManagement, OrderManagementServer},
    CombinedShipment, Order,
};
use tonic::{Request, Response, Status, Streaming};
use tower::Layer;

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers `getOrder("106")`; every other call is `UNIMPLEMENTED`.
struct Fixed(Order);

#[tonic::async_trait]
impl OrderManagement for Fixed {
    async fn get_order(&self, request: Request<String>) -> Result<Response<Order>, Status> {
        if request.get_ref() == &self.0.id {
            Ok(Response::new(self.0.clone()))
        } else {
            Err(Status::not_found("only order 106 is here"))
        }
    }

    async fn add_order(&self, _: Request<Order>) -> Result<Response<String>, Status> {
        Err(Status::unimplemented("getOrder only"))
    }

    type searchOrdersStream = Answers<Order>;

    async fn search_orders(
        &self,
        _: Request<String>,
    ) -> Result<Response<Self::searchOrdersStream>, Status> {
        Err(Status::unimplemented("getOrder only"))
    }

    async fn update_orders(
        &self,
        _: Request<Streaming<Order>>,
    ) -> Result<Response<String>, Status> {
        Err(Status::unimplemented("getOrder only"))
    }

    async fn add_orders(&self, _: Request<Streaming<Order>>) -> Result<Response<String>, Status> {
        Err(Status::unimplemented("getOrder only"))
    }

    type processOrdersStream = Answers<CombinedShipment>;

    async fn process_orders(
        &self,
        _: Request<Streaming<String>>,
    ) -> Result<Response<Self::processOrdersStream>, Status> {
        Err(Status::unimplemented("getOrder only"))
    }
}

/// mimalloc, as in `order-server`: with the system allocator, tonic alone spent about 3 600
/// instructions a call more in malloc and free (41 800 against 38 200 under callgrind), which made
/// `order-server` (on mimalloc) look closer to it than its own work allows.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    // tonic-web passes native gRPC calls straight through and translates gRPC-Web ones.
    let service = tonic_web::GrpcWebLayer::new().layer(OrderManagementServer::new(Fixed(
        bench_ceiling::order_106(),
    )));
    bench_ceiling::run(
        "bench-tonic",
        "127.0.0.1:50053",
        TowerToHyperService::new(service),
    )
}
