//! Where a request goes: a gRPC target in one of its transports, or the page.
//!
//! Requests are split by what they are, not by path: gRPC and gRPC-Web are recognised by content
//! type on any path (so an unknown service gets `UNIMPLEMENTED`, as any gRPC client expects, never
//! a 404), CORS preflights go to the gRPC side (only gRPC-Web needs CORS), everything else is a
//! page request. Which calls are the order service's comes from the generated code
//! ([`crate::grpc::methods`]), never from literals here.

use http::{header, Method, Request, Version};

use crate::grpc::methods::order_method;

/// Which gRPC service takes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// `OrderManagement`: the hot path, straight to its tonic service.
    Orders,
    /// Health, reflection, or an unknown service (`UNIMPLEMENTED`): through tonic's `Routes`.
    Other,
}

/// How the call arrived, which decides its layers (see [`crate::grpc::stack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Native gRPC over HTTP/2.
    Native,
    /// gRPC-Web from a client that sent no `Origin`: not a browser, so no CORS. Also native gRPC
    /// over HTTP/1.1, which tonic-web answers with 400.
    Web,
    /// gRPC-Web (or a CORS preflight) from a page, which always sends `Origin`.
    Browser,
    /// The Connect protocol ([`crate::grpc::connect`]), from a page or not.
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
            _ if crate::grpc::connect::Shape::of(request).is_some() => {
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
    use crate::grpc::methods::methods;
    use order_api::pb::order_management_server::SERVICE_NAME;
    use prost::Message;

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
