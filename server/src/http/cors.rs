//! CORS for gRPC-Web from pages on other origins: an explicit allowlist from the configuration,
//! header sets as named constants. Pages never get CORS headers; only the gRPC side does.

use std::time::Duration;

use http::{header, HeaderName, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;

/// Request headers a gRPC-Web client in a browser sends and CORS must allow (`authorization`
/// carries its token, `idempotency-key` a write's key).
pub const CORS_ALLOW_HEADERS: [HeaderName; 13] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static("x-grpc-web"),
    HeaderName::from_static("x-user-agent"),
    HeaderName::from_static("grpc-timeout"),
    HeaderName::from_static(crate::orders::service::IDEMPOTENCY_KEY),
    HeaderName::from_static("grpc-encoding"),
    HeaderName::from_static("grpc-accept-encoding"),
    // The Connect protocol's.
    header::CONTENT_ENCODING,
    HeaderName::from_static("connect-protocol-version"),
    HeaderName::from_static("connect-timeout-ms"),
    HeaderName::from_static("connect-content-encoding"),
    HeaderName::from_static("connect-accept-encoding"),
];

/// Response headers a browser client must be able to read: the call's status is in them.
pub const CORS_EXPOSE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("grpc-status"),
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-status-details-bin"),
];

/// How long a browser may cache a preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The CORS layer of the gRPC side: the configured origins, POST (and GET, for Connect's), the
/// gRPC-Web and Connect headers.
pub(crate) fn cors(config: &Config) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.iter().cloned()))
        .allow_methods([Method::POST, Method::GET])
        .allow_headers(CORS_ALLOW_HEADERS)
        .expose_headers(CORS_EXPOSE_HEADERS)
        .max_age(CORS_MAX_AGE)
}
