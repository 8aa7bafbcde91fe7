//! Where a request goes: a gRPC target in one of its transports, or the page.
//!
//! Requests are split by what they are, not by path: gRPC and gRPC-Web are recognised by content
//! type on any path (so an unknown service gets `UNIMPLEMENTED`, as any gRPC client expects, never
//! a 404), CORS preflights go to the gRPC side (only gRPC-Web needs CORS), everything else is a
//! page request. The order service's name and which of its methods are unary come from the
//! generated code and the embedded descriptor set, never from literals here.

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use order_api::pb::order_management_server::SERVICE_NAME;
use prost::Message;

/// Which gRPC service takes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// `OrderManagement`: the hot path, straight to its tonic service.
    Orders,
    /// Health, reflection, or an unknown service (`UNIMPLEMENTED`): through tonic's `Routes`.
    Other,
}

/// How the call arrived, which decides its layers (see [`crate::grpc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Native gRPC over HTTP/2.
    Native,
    /// gRPC-Web from a client that sent no `Origin`: not a browser, so no CORS. Also native gRPC
    /// over HTTP/1.1, which tonic-web answers with 400.
    Web,
    /// gRPC-Web (or a CORS preflight) from a page, which always sends `Origin`.
    Browser,
    /// The Connect protocol ([`crate::connect`]), from a page or not.
    Connect,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A gRPC call (or a preflight for one).
    Grpc(Target, Transport),
    /// A page request: the static files.
    Page,
}

/// Some of the served methods (of the order service and of the health service), as wire paths
/// (`/OrderManagement/getOrder`). A handful of paths, so a scan (length first) beats hashing.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodPaths(Vec<String>);

impl MethodPaths {
    /// The unary methods: their gRPC-Web answers are sent whole (see [`crate::body`]).
    pub(crate) fn unary() -> Self {
        Self::of(|kind| kind == Kind::Unary)
    }

    /// The methods whose response is a stream (server and bidirectional streaming): their
    /// requests carry their deadline (see [`crate::deadline`]).
    pub(crate) fn response_streams() -> Self {
        Self::of(|kind| matches!(kind, Kind::ServerStream | Kind::BidiStream))
    }

    /// Every method this server has: the order service's, health's and reflection's. A call to
    /// any other is refused at the edge ([`crate::edge`]).
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

/// The first value of the header `name` in `headers`, found by a scan. gRPC's own headers
/// (`grpc-timeout` in a request, `grpc-status` in trailers) are looked up on every call, and a
/// request or trailers hold a handful of headers: comparing names costs a few instructions each,
/// where hashing a custom name costs about 150, found or not.
pub(crate) fn scan_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    headers
        .iter()
        .find_map(|(found, value)| (found == name).then_some(value))
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

impl Route {
    /// Decides where `request` goes, from its content type, method, version, `Origin` and path.
    pub(crate) fn of<B>(request: &Request<B>) -> Route {
        let headers = request.headers();
        let target = if order_method(request.uri().path()).is_some() {
            Target::Orders
        } else {
            Target::Other
        };
        match headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) {
            Some(content_type) if content_type.starts_with(b"application/grpc") => {
                let transport = if content_type.starts_with(b"application/grpc-web") {
                    if headers.contains_key(header::ORIGIN) {
                        Transport::Browser
                    } else {
                        Transport::Web
                    }
                } else if request.version() == Version::HTTP_2 {
                    Transport::Native
                } else {
                    // Native gRPC needs HTTP/2; tonic-web answers this with 400.
                    Transport::Web
                };
                Route::Grpc(target, transport)
            }
            _ if crate::connect::Shape::of(request).is_some() => {
                Route::Grpc(target, Transport::Connect)
            }
            _ if request.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) =>
            {
                Route::Grpc(target, Transport::Browser)
            }
            _ => Route::Page,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP_11: Version = Version::HTTP_11;
    const HTTP_2: Version = Version::HTTP_2;

    fn request(
        method: Method,
        path: &str,
        content_type: Option<&str>,
        version: Version,
        origin: bool,
    ) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(path).version(version);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        if origin {
            builder = builder.header(header::ORIGIN, "http://127.0.0.1:50051");
        }
        builder.body(()).unwrap()
    }

    fn orders_descriptor() -> prost_types::FileDescriptorSet {
        prost_types::FileDescriptorSet::decode(order_api::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn every_rpc_of_the_contract_is_routed_to_the_order_service_on_every_transport() {
        let rpcs: Vec<_> = methods(&orders_descriptor())
            .into_iter()
            .filter(|method| method.service == SERVICE_NAME)
            .collect();
        assert_eq!(rpcs.len(), 6, "{rpcs:?}");
        for method in rpcs {
            let path = method.path();
            let cases = [
                ("application/grpc", HTTP_2, false, Transport::Native),
                ("application/grpc+proto", HTTP_2, false, Transport::Native),
                ("application/grpc-web", HTTP_11, false, Transport::Web),
                ("application/grpc-web-text", HTTP_2, false, Transport::Web),
                (
                    "application/grpc-web+proto",
                    HTTP_11,
                    true,
                    Transport::Browser,
                ),
            ];
            for (content_type, version, origin, transport) in cases {
                let request = request(Method::POST, &path, Some(content_type), version, origin);
                assert_eq!(
                    Route::of(&request),
                    Route::Grpc(Target::Orders, transport),
                    "{path} {content_type} {version:?} origin={origin}"
                );
            }
        }
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

    #[test]
    fn other_requests_are_routed_by_kind() {
        let get: &str = &format!("/{SERVICE_NAME}/getOrder");
        let cases = [
            // Native gRPC needs HTTP/2: tonic-web answers the HTTP/1.1 attempt with 400.
            (
                Method::POST,
                get,
                Some("application/grpc"),
                HTTP_11,
                false,
                Route::Grpc(Target::Orders, Transport::Web),
            ),
            (
                Method::POST,
                "/grpc.health.v1.Health/Check",
                Some("application/grpc"),
                HTTP_2,
                false,
                Route::Grpc(Target::Other, Transport::Native),
            ),
            (
                Method::POST,
                "/Nope/x",
                Some("application/grpc-web"),
                HTTP_11,
                false,
                Route::Grpc(Target::Other, Transport::Web),
            ),
            (
                Method::POST,
                "/OrderManagementX/getOrder",
                Some("application/grpc"),
                HTTP_2,
                false,
                Route::Grpc(Target::Other, Transport::Native),
            ),
            (
                Method::POST,
                get,
                Some("text/plain"),
                HTTP_11,
                false,
                Route::Page,
            ),
            (Method::GET, get, None, HTTP_11, false, Route::Page),
            (Method::GET, "/", None, HTTP_2, false, Route::Page),
        ];
        for (method, path, content_type, version, origin, route) in cases {
            let request = request(method.clone(), path, content_type, version, origin);
            assert_eq!(
                Route::of(&request),
                route,
                "{method} {path} {content_type:?} {version:?}"
            );
        }
        let mut preflight = request(Method::OPTIONS, get, None, HTTP_11, true);
        preflight.headers_mut().insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        assert_eq!(
            Route::of(&preflight),
            Route::Grpc(Target::Orders, Transport::Browser)
        );
    }
}
