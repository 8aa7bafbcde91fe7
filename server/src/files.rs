//! The web page: files of the static folder, `index.html` for folders, plain 404s otherwise.
//! `ServeDir` refuses paths that climb out of the folder (`..`). gRPC-Web and CORS never wrap it.

use std::convert::Infallible;

use axum::{http::StatusCode, response::IntoResponse, Router};
use tower::service_fn;
use tower_http::{services::ServeDir, trace::TraceLayer};

use crate::config::Config;

/// The static side of the app, with an HTTP trace span per request.
pub(crate) fn files(config: &Config) -> Router {
    let files = ServeDir::new(&config.static_dir)
        .append_index_html_on_directories(true)
        .not_found_service(service_fn(|_: axum::extract::Request| async {
            Ok::<_, Infallible>((StatusCode::NOT_FOUND, "404 not found\n").into_response())
        }));
    Router::new()
        .fallback_service(files)
        .layer(TraceLayer::new_for_http())
}
