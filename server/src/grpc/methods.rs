//! The gRPC methods this server serves, as the descriptor sets embedded at build time declare
//! them: their wire paths, which side of each streams, and their message types. Every per-call
//! check (the edge's known methods, deadlines, scopes, metrics, the Connect protocol) asks here,
//! never a literal.

use order_api::pb::order_management_server::SERVICE_NAME;
use prost::Message;

/// Some of the served methods (of the order service and of the health service), as wire paths
/// (`/OrderManagement/getOrder`). A handful of paths, so a scan (length first) beats hashing.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodPaths(Vec<String>);

impl MethodPaths {
    /// The unary methods: their gRPC-Web answers are sent whole (see [`crate::grpc::body`]).
    pub(crate) fn unary() -> Self {
        Self::of(|kind| kind == Kind::Unary)
    }

    /// The methods whose response is a stream (server and bidirectional streaming): their
    /// requests carry their deadline (see [`crate::grpc::deadline`]).
    pub(crate) fn response_streams() -> Self {
        Self::of(|kind| matches!(kind, Kind::ServerStream | Kind::BidiStream))
    }

    /// Every method this server has: the order service's, health's and reflection's. A call to
    /// any other is refused at the edge ([`crate::grpc::edge`]).
    pub(crate) fn all() -> Self {
        let mut paths = Self::of(|_| true);
        let reflection = methods_of(&[
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        paths.0.extend(reflection.iter().map(GrpcMethod::path));
        paths
    }

    fn of(wanted: impl Fn(Kind) -> bool) -> Self {
        // In the descriptor's order, so that `getOrder`, the first, is found first.
        Self(
            served_methods()
                .into_iter()
                .filter(|method| wanted(method.kind))
                .map(|method| method.path())
                .collect(),
        )
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|method| method == path)
    }
}

/// Which side of a call streams, named as gRPC's metrics name it (`grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ClientStream => "client_stream",
            Kind::ServerStream => "server_stream",
            Kind::BidiStream => "bidi_stream",
        }
    }
}

/// One gRPC method of a descriptor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcMethod {
    /// The service's full name (`OrderManagement`, `grpc.health.v1.Health`).
    pub(crate) service: String,
    /// The method's name (`getOrder`).
    pub(crate) name: String,
    pub(crate) kind: Kind,
    /// Its message types' full names (`.Order`, `.google.protobuf.StringValue`).
    pub(crate) input: String,
    pub(crate) output: String,
}

impl GrpcMethod {
    /// Its wire path, `/service/method`.
    pub(crate) fn path(&self) -> String {
        format!("/{}/{}", self.service, self.name)
    }
}

/// Every method this server serves: the order service's and the health service's (reflection
/// is left out: tools call it, it has no answers to send whole and nothing to measure).
pub(crate) fn served_methods() -> Vec<GrpcMethod> {
    methods_of(&[
        order_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ])
}

/// Every method of the encoded descriptor sets embedded at build time.
fn methods_of(encoded: &[&[u8]]) -> Vec<GrpcMethod> {
    encoded
        .iter()
        .flat_map(|encoded| {
            let set = prost_types::FileDescriptorSet::decode(*encoded)
                .expect("the descriptor sets embedded at build time are valid");
            methods(&set)
        })
        .collect()
}

/// Every method of every service in `set`.
pub(crate) fn methods(set: &prost_types::FileDescriptorSet) -> Vec<GrpcMethod> {
    let mut found = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let full_name = match file.package() {
                "" => service.name().to_owned(),
                package => format!("{package}.{}", service.name()),
            };
            for method in &service.method {
                let kind = match (method.client_streaming(), method.server_streaming()) {
                    (false, false) => Kind::Unary,
                    (true, false) => Kind::ClientStream,
                    (false, true) => Kind::ServerStream,
                    (true, true) => Kind::BidiStream,
                };
                found.push(GrpcMethod {
                    service: full_name.clone(),
                    name: method.name().to_owned(),
                    kind,
                    input: method.input_type().to_owned(),
                    output: method.output_type().to_owned(),
                });
            }
        }
    }
    found
}

/// The method of a call to the order service (`/OrderManagement/<method>`), if it is one.
pub(crate) fn order_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_prefix(SERVICE_NAME))
        .and_then(|rest| rest.strip_prefix('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders_descriptor() -> prost_types::FileDescriptorSet {
        prost_types::FileDescriptorSet::decode(order_api::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn unary_methods_come_from_the_descriptor() {
        let unary = MethodPaths::unary();
        let streams = MethodPaths::response_streams();
        for method in methods(&orders_descriptor()) {
            let path = method.path();
            assert_eq!(unary.contains(&path), method.kind == Kind::Unary, "{path}");
            let streamed = matches!(method.kind, Kind::ServerStream | Kind::BidiStream);
            assert_eq!(streams.contains(&path), streamed, "{path}");
        }
        assert!(unary.contains(&format!("/{SERVICE_NAME}/getOrder")));
        assert!(!unary.contains(&format!("/{SERVICE_NAME}/searchOrders")));
        assert!(unary.contains("/grpc.health.v1.Health/Check"));
        assert!(!unary.contains("/grpc.health.v1.Health/Watch"));
    }
}
