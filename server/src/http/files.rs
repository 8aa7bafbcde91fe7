//! The web page: files of the static folder, `index.html` for folders, plain 404s otherwise, 421
//! for a host this server does not answer ([`crate::grpc::host`]). gRPC-Web and CORS never wrap it.
//!
//! `ServeDir` refuses paths that climb out of the folder (`..`); in front of it a guard answers
//! 4xx, never 5xx, for anything a hostile client can send: dotfiles, symlinks that lead out of the
//! folder, control characters, over-long names, `//` paths (which a browser would read as another
//! host in a redirect); and redirects only ever name a path on this site.
//!
//! Compressed for browsers that accept it: a built file (`pkg/`) goes as the brotli or gzip copy
//! `make wasm` wrote beside it, any other as it is sent (`Vary: Accept-Encoding` either way). Every
//! file is `Cache-Control: no-cache`: a browser keeps it and asks before each use whether it
//! changed (`If-Modified-Since`, answered 304 with no body), so a repeat visit costs a few
//! hundred bytes a file and a new build is seen at once.

use std::{convert::Infallible, path::PathBuf, sync::Arc};

use axum::{
    extract::Request,
    http::{header, HeaderValue, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tower::{service_fn, ServiceExt};
use tower_http::{compression::CompressionLayer, services::ServeDir, trace::TraceLayer};
use tracing::debug;

use crate::{config::Config, grpc::host::Hosts, grpc::metrics::Metrics};

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest path served, in bytes: longer ones get 414.
const MAX_PATH_BYTES: usize = 1024;
/// Longest name in a path (what file systems allow): longer ones cannot exist, 404.
const MAX_NAME_BYTES: usize = 255;

/// The static side of the app and `/metrics`, behind the host check, with an HTTP trace span per
/// request.
pub(crate) fn files(config: &Config, hosts: Hosts, metrics: Option<Arc<Metrics>>) -> Router {
    let files = ServeDir::new(&config.static_dir)
        .append_index_html_on_directories(true)
        .precompressed_br()
        .precompressed_gzip()
        .not_found_service(service_fn(|_: Request| async {
            Ok::<_, Infallible>(not_found())
        }));
    // Symlinks are judged against the real folder; a folder that is not there serves nothing.
    let root = Arc::new(
        std::fs::canonicalize(&config.static_dir).unwrap_or_else(|_| config.static_dir.clone()),
    );
    let guarded = service_fn(move |request: Request| {
        let (files, root) = (files.clone(), root.clone());
        async move { Ok::<_, Infallible>(guard(request, files, root).await) }
    });
    let mut router = Router::new();
    if let Some(metrics) = metrics {
        router = router.route(
            "/metrics",
            get(move || async move {
                let text = metrics.render();
                ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text)
            }),
        );
    }
    router
        .fallback_service(guarded)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let host = hosts.check(&request);
            async move {
                match host {
                    Ok(()) => next.run(request).await,
                    Err(host) => misdirected(&host),
                }
            }
        }))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
}

/// The answer for a host this server does not serve (see [`crate::grpc::host`]).
fn misdirected(host: &str) -> Response {
    debug!(%host, "page request for a host not served: refused");
    let body = format!("421 {}\n", crate::grpc::host::refusal(host));
    (StatusCode::MISDIRECTED_REQUEST, body).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 not found\n").into_response()
}

/// Answers what `ServeDir` should never see itself, then hands the rest to it.
async fn guard<S>(request: Request, files: S, root: Arc<PathBuf>) -> Response
where
    S: tower::Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    let path = request.uri().path().to_owned();
    if path.len() > MAX_PATH_BYTES {
        return (StatusCode::URI_TOO_LONG, "414 path too long\n").into_response();
    }
    let decoded = percent_encoding::percent_decode_str(&path).decode_utf8_lossy();
    if decoded.chars().any(char::is_control) {
        return (StatusCode::BAD_REQUEST, "400 bad path\n").into_response();
    }
    // `//name`: a redirect to `//name/` would send a browser to the host `name`.
    let hidden_or_impossible = decoded.starts_with("//")
        || decoded
            .split('/')
            .any(|name| name.starts_with('.') || name.len() > MAX_NAME_BYTES);
    if hidden_or_impossible {
        return not_found();
    }
    // A symlink may lead out of the folder: only files really inside it are served.
    let candidate = root.join(decoded.trim_start_matches('/'));
    if let Ok(real) = tokio::fs::canonicalize(&candidate).await {
        if !real.starts_with(&*root) {
            debug!(path = %path, "refused: leads out of the static folder");
            return not_found();
        }
    }
    let mut response = match files.oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    };
    if matches!(response.status(), StatusCode::OK | StatusCode::NOT_MODIFIED) {
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if !headers.contains_key(header::VARY) {
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
    }
    if response.status().is_server_error() {
        // The file system refused the name (too long, invalid…): for the client, it is not there.
        debug!(path = %path, status = %response.status(), "file error answered as 404");
        return not_found();
    }
    // A redirect (not 304 Not Modified, which a reload gets and which carries no Location)
    // only ever names a path on this site, never a host taken from the request.
    let redirect =
        response.status().is_redirection() && response.status() != StatusCode::NOT_MODIFIED;
    if redirect {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<Uri>().ok())
            .and_then(|uri| uri.path_and_query().map(|p| p.as_str().to_owned()))
            .filter(|p| p.starts_with('/') && !p.starts_with("//"));
        match location.and_then(|p| HeaderValue::from_str(&p).ok()) {
            Some(location) => {
                response.headers_mut().insert(header::LOCATION, location);
            }
            None => return not_found(),
        }
    }
    response
}
