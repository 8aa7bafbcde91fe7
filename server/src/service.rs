//! The `OrderManagement` gRPC service: each RPC converts its request, acts on the [`Store`] and
//! converts the result back.

use order_api::pb::{order_management_server::OrderManagement, Order};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::{
    error::{Echo, Error},
    store::Store,
};

/// The implementation of `OrderManagement` behind both native gRPC and gRPC-Web.
#[derive(Debug, Clone)]
pub struct OrderService {
    store: Store,
}

impl OrderService {
    /// A service answering from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl OrderManagement for OrderService {
    #[instrument(skip_all, fields(order_id = %Echo(request.get_ref())))]
    async fn get_order(&self, request: Request<String>) -> Result<Response<Order>, Status> {
        let id = request.into_inner();
        if id.is_empty() {
            return Err(Error::Empty("order id").into());
        }
        match self.store.get(&id) {
            Some(order) => Ok(Response::new(order)),
            None => Err(Error::NotFound(id).into()),
        }
    }
}
