//! In-process tests of the HTTP application (`app().oneshot(..)`): the web page, 404s, path
//! traversal and CORS.

use axum::body::Body;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use order_server::{App, Config, OrderService, Store, StoreOptions};
use tower::ServiceExt;

const ALLOWED: &str = "http://allowed.test:8080";

/// The app on an in-memory SQLite database: these tests never reach the store's files.
async fn app_with(mut config: Config) -> App {
    config.database_url = "sqlite::memory:".into();
    let store = Store::open(&StoreOptions::of(&config))
        .await
        .expect("store");
    let orders = OrderService::new(store, config.batch_size);
    order_server::app(orders, &config).expect("app")
}

async fn test_app() -> App {
    let mut config = Config::for_tests();
    config.cors_origins = vec![ALLOWED.parse().unwrap()];
    app_with(config).await
}

async fn send(request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = test_app().await.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/OrderManagement/getOrder")
        .header(header::ORIGIN, origin)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-grpc-web,x-user-agent,grpc-timeout",
        )
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn the_page_is_served_at_the_root() {
    let (status, headers, body) = send(get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        body.contains("<html") || body.contains("<!doctype html"),
        "{body}"
    );
    let (status, _, index) = send(get("/index.html")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index, body);
}

#[tokio::test]
async fn unknown_pages_are_plain_404s() {
    for uri in ["/nope", "/nope/deeper.js", "/pkg/missing.wasm"] {
        let (status, headers, body) = send(get(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert_eq!(body, "404 not found\n");
    }
}

#[tokio::test]
async fn paths_cannot_climb_out_of_the_static_folder() {
    // Cargo.toml sits one level above static/.
    for uri in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/pkg/../../Cargo.toml",
        "/..%2fCargo.toml",
        "/%2e%2e%2fserver%2fCargo.toml",
    ] {
        let (status, _, body) = send(get(uri)).await;
        assert!(status.is_client_error(), "{uri}: {status}");
        assert!(!body.contains("[package]"), "{uri} leaked a file");
    }
}

#[tokio::test]
async fn allowed_origin_gets_a_full_preflight_answer() {
    let (status, headers, _) = send(preflight(ALLOWED)).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED);
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap();
    for name in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    assert!(headers[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap()
        .contains("POST"));
}

#[tokio::test]
async fn foreign_origin_gets_no_allow_origin() {
    let (_, headers, _) = send(preflight("http://evil.test")).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    // Nor does any origin when none is configured.
    let response = app_with(Config::for_tests())
        .await
        .oneshot(preflight(ALLOWED))
        .await
        .unwrap();
    assert!(!response
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

fn grpc_web_call(origin: &str, id: &str) -> Request<Body> {
    let mut body = vec![0, 0, 0, 0, 2 + id.len() as u8, 0x0a, id.len() as u8];
    body.extend_from_slice(id.as_bytes());
    Request::post("/OrderManagement/getOrder")
        .header(header::ORIGIN, origin)
        .header(header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn allowed_origin_can_read_the_grpc_status() {
    let (status, headers, _) = send(grpc_web_call(ALLOWED, "999")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], ALLOWED);
    assert_eq!(headers["grpc-status"], "5");
    let exposed = headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
}

#[tokio::test]
async fn foreign_origin_call_gets_no_cors_headers() {
    let (_, headers, _) = send(grpc_web_call("http://evil.test", "106")).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn page_responses_carry_no_cors_headers() {
    let request = Request::get("/")
        .header(header::ORIGIN, ALLOWED)
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn grpc_web_to_an_unknown_service_is_unimplemented_not_404() {
    let request = Request::post("/NoSuch/method")
        .header(header::CONTENT_TYPE, "application/grpc-web")
        .body(Body::from(vec![0, 0, 0, 0, 0]))
        .unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "12");
}

/// The app serving `dir` as its static folder.
async fn app_for(dir: &std::path::Path) -> App {
    let mut config = Config::for_tests();
    config.static_dir = dir.to_owned();
    app_with(config).await
}

async fn status_of(app: App, request: Request<Body>) -> (StatusCode, http::HeaderMap) {
    let response = app.oneshot(request).await.unwrap();
    (response.status(), response.headers().clone())
}

#[tokio::test]
async fn hostile_page_paths_get_4xx_never_5xx() {
    let long_name = format!("/{}", "a".repeat(300));
    let long_path = format!("/{}", "a/".repeat(3000));
    for (method, path) in [
        (Method::GET, long_name.as_str()),
        (Method::GET, long_path.as_str()),
        (Method::HEAD, "/%00"),
        (Method::GET, "/%0a"),
        (Method::GET, "/pkg/%00/x"),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let (status, _) = status_of(test_app().await, request).await;
        assert!(
            status.is_client_error(),
            "{method} {}…: {status}",
            &path[..path.len().min(20)]
        );
    }
}

#[tokio::test]
async fn dotfiles_and_symlinks_out_of_the_folder_are_not_served() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>hi</p>").unwrap();
    std::fs::write(site.path().join(".env"), "TOKEN=secret").unwrap();
    std::fs::create_dir(site.path().join(".git")).unwrap();
    std::fs::write(site.path().join(".git/config"), "secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        site.path().join("leak.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), site.path().join("out")).unwrap();
    std::fs::write(site.path().join("inside.txt"), "fine").unwrap();
    std::os::unix::fs::symlink(
        site.path().join("inside.txt"),
        site.path().join("alias.txt"),
    )
    .unwrap();
    for path in ["/.env", "/.git/config", "/leak.txt", "/out/secret.txt"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let (status, _) = status_of(app_for(site.path()).await, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // A symlink that stays inside the folder is fine.
    let request = Request::get("/alias.txt").body(Body::empty()).unwrap();
    assert_eq!(
        status_of(app_for(site.path()).await, request).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn redirects_stay_on_this_site() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("sub")).unwrap();
    std::fs::write(site.path().join("sub/index.html"), "<p>sub</p>").unwrap();

    // `//sub` would redirect to `//sub/`, which a browser reads as the host `sub`.
    let request = Request::get("//sub").body(Body::empty()).unwrap();
    let (status, headers) = status_of(app_for(site.path()).await, request).await;
    assert!(status.is_client_error(), "{status} {headers:?}");

    // An absolute-form request must not put its host into Location (on a server that answers
    // any host: a loopback one refuses evil.test outright).
    let request = Request::get("http://evil.test/sub")
        .body(Body::empty())
        .unwrap();
    let mut config = Config::for_tests();
    config.static_dir = site.path().to_owned();
    config.listen = "0.0.0.0:50051".parse().unwrap();
    let (status, headers) = status_of(app_with(config).await, request).await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(headers[header::LOCATION], "/sub/");
}

#[tokio::test]
async fn a_reload_gets_not_modified_for_a_file_it_has() {
    // What a browser sends on reload: the file's Last-Modified back as If-Modified-Since.
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("app.js"), "export {};").unwrap();
    let request = Request::get("/app.js").body(Body::empty()).unwrap();
    let (status, headers) = status_of(app_for(site.path()).await, request).await;
    assert_eq!(status, StatusCode::OK);
    let modified = headers[header::LAST_MODIFIED].clone();

    let request = Request::get("/app.js")
        .header(header::IF_MODIFIED_SINCE, modified)
        .body(Body::empty())
        .unwrap();
    let (status, _) = status_of(app_for(site.path()).await, request).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
}

/// What a DNS-rebinding page sends: its own name as Host, and as Origin, so CORS is satisfied.
const REBIND: &str = "rebind.attacker.example:50051";

#[tokio::test]
async fn dns_rebinding_page_gets_no_orders() {
    let origin = format!("http://{REBIND}");
    let mut call = grpc_web_call(&origin, "106");
    call.headers_mut()
        .insert(header::HOST, REBIND.parse().unwrap());
    let (status, headers, _) = send(call).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "7", "{headers:?}");
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("--allowed-host"), "{message}");

    // Nor the page that would make the calls.
    let page = Request::get("/")
        .header(header::HOST, REBIND)
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(page).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(body.contains("rebind.attacker.example"), "{body}");

    // The same call for localhost is answered.
    let mut call = grpc_web_call("http://localhost:50051", "106");
    call.headers_mut()
        .insert(header::HOST, "localhost:50051".parse().unwrap());
    let mut config = Config::for_tests();
    config.cors_origins = vec![ALLOWED.parse().unwrap()];
    let response = app_with(config).await.oneshot(call).await.unwrap();
    assert_eq!(response.headers().get("grpc-status"), None);
}

#[tokio::test]
async fn allowed_host_adds_a_name_to_a_loopback_server() {
    let mut config = Config::for_tests();
    config.allowed_hosts = vec!["rebind.attacker.example".into()];
    let page = Request::get("/")
        .header(header::HOST, REBIND)
        .body(Body::empty())
        .unwrap();
    let response = app_with(config).await.oneshot(page).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A request for `path` from a browser that accepts `encodings`.
fn get_accepting(path: &str, encodings: &str) -> Request<Body> {
    Request::get(path)
        .header(header::ACCEPT_ENCODING, encodings)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn built_files_go_precompressed_and_the_page_compressed_to_browsers_that_accept_it() {
    let site = tempfile::tempdir().unwrap();
    let script = "export const answer = 42;\n".repeat(200);
    std::fs::write(site.path().join("app.js"), &script).unwrap();
    std::fs::create_dir(site.path().join("pkg")).unwrap();
    let wasm = vec![7u8; 5000];
    std::fs::write(site.path().join("pkg/client.wasm"), &wasm).unwrap();
    std::fs::write(site.path().join("pkg/client.wasm.br"), b"brotli bytes").unwrap();
    std::fs::write(site.path().join("pkg/client.wasm.gz"), b"gzip bytes").unwrap();

    let body_of = |response: http::Response<_>| async move {
        let headers = response.headers().clone();
        let body: axum::body::Bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (headers, body)
    };
    // The precompressed copy of a built file, by the browser's preference.
    for (accepts, encoding, bytes) in [
        ("gzip, deflate, br, zstd", "br", &b"brotli bytes"[..]),
        ("gzip", "gzip", &b"gzip bytes"[..]),
    ] {
        let response = app_for(site.path())
            .await
            .oneshot(get_accepting("/pkg/client.wasm", accepts))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let (headers, body) = body_of(response).await;
        assert_eq!(headers[header::CONTENT_ENCODING], encoding, "{accepts}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/wasm");
        assert_eq!(&body[..], bytes);
        assert!(headers[header::VARY]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding"));
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "no-cache",
            "kept, revalidated"
        );
    }
    // A client that accepts nothing gets the file itself.
    let response = app_for(site.path())
        .await
        .oneshot(get("/pkg/client.wasm"))
        .await
        .unwrap();
    let (headers, body) = body_of(response).await;
    assert!(!headers.contains_key(header::CONTENT_ENCODING));
    assert_eq!(&body[..], &wasm[..]);

    // A file of the page with no copy beside it is compressed as it is sent.
    let response = app_for(site.path())
        .await
        .oneshot(get_accepting("/app.js", "gzip"))
        .await
        .unwrap();
    let (headers, body) = body_of(response).await;
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert!(body.len() < script.len() / 10, "{} bytes", body.len());
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, script);
}
