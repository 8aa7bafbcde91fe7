//! JWT authentication at the one gRPC stack: every refusal case, scopes, public reads, the
//! services that need no token, public keys by type (RS256 with the test keys in `tests/keys`),
//! and CORS on refusals.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::TestServer;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use order_api::pb::Order;
use order_server::Config;
use tonic::{transport::Channel, Code, Request};

const SECRET: &[u8] = b"a secret of the test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(scope: &str) -> serde_json::Value {
    serde_json::json!({ "sub": "alice", "scope": scope, "exp": now() + 600 })
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

struct AuthServer {
    server: TestServer,
    _dir: tempfile::TempDir,
}

/// A server that checks HS256 tokens (with a trailing newline in the secret file, as editors
/// leave it), changed by `adjust`.
async fn start(adjust: impl FnOnce(&mut Config)) -> AuthServer {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let mut config = Config::for_tests();
    config.auth_secret_file = Some(secret);
    config.cors_origins = vec!["http://page.test".parse().unwrap()];
    adjust(&mut config);
    AuthServer {
        server: TestServer::start_with(config).await,
        _dir: dir,
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// `claims` without `claim`.
fn without(mut claims: serde_json::Value, claim: &str) -> serde_json::Value {
    claims.as_object_mut().unwrap().remove(claim);
    claims
}

async fn get(server: &TestServer, token: Option<&str>) -> Result<Order, tonic::Status> {
    let mut client = server.native().await;
    Ok(client
        .get_order(with_token("106".to_string(), token))
        .await?
        .into_inner())
}

async fn add(server: &TestServer, token: Option<&str>) -> Result<String, tonic::Status> {
    let order = Order {
        items: vec!["Lamp".into()],
        destination: "Denver, CO".into(),
        price: 20.0,
        ..Order::default()
    };
    let mut client = server.native().await;
    Ok(client
        .add_order(with_token(order, token))
        .await?
        .into_inner())
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_and_the_message_says_why() {
    let auth = start(|config| {
        config.auth_issuer = Some("https://issuer.test".into());
        config.auth_audience = Some("orders".into());
    })
    .await;
    let good = |extra: serde_json::Value| {
        let mut claims = claims("orders:write");
        claims["iss"] = "https://issuer.test".into();
        claims["aud"] = "orders".into();
        for (key, value) in extra.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no token"),
        ("malformed", Some("not.a.jwt".into()), "malformed"),
        (
            "expired",
            Some(hs256(
                &good(serde_json::json!({ "exp": now() - 3600 })),
                SECRET,
            )),
            "expired",
        ),
        (
            "not yet valid",
            Some(hs256(
                &good(serde_json::json!({ "nbf": now() + 3600 })),
                SECRET,
            )),
            "not valid yet",
        ),
        (
            "bad signature",
            Some(hs256(&good(serde_json::json!({})), b"another secret")),
            "signature",
        ),
        (
            "wrong issuer",
            Some(hs256(
                &good(serde_json::json!({ "iss": "https://evil.test" })),
                SECRET,
            )),
            "issuer",
        ),
        (
            "wrong audience",
            Some(hs256(
                &good(serde_json::json!({ "aud": "billing" })),
                SECRET,
            )),
            "audience",
        ),
        // jsonwebtoken checks iss and aud only when a token has them, unless required.
        (
            "no audience",
            Some(hs256(&without(good(serde_json::json!({})), "aud"), SECRET)),
            "no aud claim",
        ),
        (
            "no issuer",
            Some(hs256(&without(good(serde_json::json!({})), "iss"), SECRET)),
            "no iss claim",
        ),
        (
            "issuer as an array naming the right one",
            Some(hs256(
                &good(serde_json::json!({ "iss": ["https://evil.test", "https://issuer.test"] })),
                SECRET,
            )),
            "one string",
        ),
        // Past the 5 s leeway (jsonwebtoken's own default is 60 s).
        (
            "expired 30 s ago",
            Some(hs256(
                &good(serde_json::json!({ "exp": now() - 30 })),
                SECRET,
            )),
            "expired",
        ),
    ];
    for (case, token, why) in cases {
        let status = get(&auth.server, token.as_deref()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(status.message().contains(why), "{case}: {status:?}");
        if let Some(token) = &token {
            assert!(
                !status.message().contains(token.as_str()),
                "{case} echoes the token"
            );
        }
    }
    // Not a bearer token at all.
    let mut request = Request::new("106".to_string());
    request
        .metadata_mut()
        .insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    let status = auth
        .server
        .native()
        .await
        .get_order(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{status:?}");

    // And the good one passes.
    let token = hs256(&good(serde_json::json!({})), SECRET);
    assert_eq!(get(&auth.server, Some(&token)).await.unwrap().id, "106");
}

#[tokio::test]
async fn a_read_token_reads_but_cannot_write_and_a_write_token_does_both() {
    let auth = start(|_| {}).await;
    let read = hs256(&claims("orders:read"), SECRET);
    let write = hs256(&claims("orders:write"), SECRET);
    let nothing = hs256(&claims(""), SECRET);

    assert_eq!(get(&auth.server, Some(&read)).await.unwrap().id, "106");
    let status = add(&auth.server, Some(&read)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("orders:write"), "{status:?}");

    let mut client = auth.server.native().await;
    let update = futures::stream::iter(Vec::<Order>::new());
    let status = client
        .update_orders(with_token(update, Some(&read)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let ids = futures::stream::iter(vec!["106".to_string()]);
    let status = client
        .process_orders(with_token(ids, Some(&read)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let search = client
        .search_orders(with_token("echo".to_string(), Some(&read)))
        .await;
    assert!(search.is_ok(), "{search:?}");

    assert!(!add(&auth.server, Some(&write)).await.unwrap().is_empty());
    assert_eq!(get(&auth.server, Some(&write)).await.unwrap().id, "106");

    let status = get(&auth.server, Some(&nothing)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// The server remembers the last few header literals a connection sent without indexing
/// (`vendor/h2/PATCH.md`), which is how clients send a bearer token: tokens of the same length
/// on one connection, sent never indexed (as nghttp2 and curl send `authorization`) and indexed,
/// each still mean what they say, in any order and more of them than it remembers.
#[tokio::test]
async fn tokens_sent_whole_on_one_connection_are_each_read_as_themselves() {
    let auth = start(|_| {}).await;
    let token = |sub: &str, scope: &str| {
        hs256(
            &serde_json::json!({ "sub": sub, "scope": scope, "exp": now() + 600 }),
            SECRET,
        )
    };
    let readers: Vec<String> = (1..=6)
        .map(|n| token(&format!("alice{n}"), "orders:read"))
        .collect();
    let nothing = token("alice1", "orders:none");
    let mut forged = readers[0].clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(readers
        .iter()
        .all(|reader| reader.len() == nothing.len() && reader.len() == forged.len()));

    let mut client = auth.server.native().await;
    let mut calls = 0;
    for round in 0..20 {
        for (token, expected) in readers.iter().map(|reader| (reader, Code::Ok)).chain([
            (&nothing, Code::PermissionDenied),
            (&forged, Code::Unauthenticated),
        ]) {
            let mut value: tonic::metadata::MetadataValue<_> =
                format!("Bearer {token}").parse().unwrap();
            value.set_sensitive(round % 2 == 0);
            let mut request = Request::new("106".to_string());
            request.metadata_mut().insert("authorization", value);
            let code = match client.get_order(request).await {
                Ok(order) => {
                    assert_eq!(order.into_inner().id, "106");
                    Code::Ok
                }
                Err(status) => status.code(),
            };
            assert_eq!(code, expected, "round {round}, call {calls}");
            calls += 1;
        }
    }
}

#[tokio::test]
async fn public_reads_let_anonymous_callers_read_and_nothing_more() {
    let auth = start(|config| config.public_reads = true).await;
    assert_eq!(get(&auth.server, None).await.unwrap().id, "106");
    let status = add(&auth.server, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A bad token is still refused, even for a read.
    let status = get(&auth.server, Some("bad")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let auth = start(|_| {}).await;
    let channel: Channel = auth.server.channel().await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "OrderManagement".into(),
        })
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1);
    let status = get(&auth.server, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn es256_and_eddsa_public_keys_are_recognised_by_type() {
    for (algorithm, key_type) in [
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(key_type).unwrap();
        let public = dir.path().join("public.pem");
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        let mut config = Config::for_tests();
        config.auth_public_key = Some(public);
        let server = TestServer::start_with(config).await;
        let private = pair.serialize_pem();
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            _ => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(algorithm), &claims("orders:read"), &key).unwrap();
        assert_eq!(
            get(&server, Some(&token)).await.unwrap().id,
            "106",
            "{algorithm:?}"
        );
        // An HS256 token made with anything is refused by a public-key server.
        let status = get(&server, Some(&hs256(&claims("orders:read"), SECRET)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{algorithm:?}");
    }
}

/// A test-only RSA key in `tests/keys` (see its README).
fn test_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

#[tokio::test]
async fn rs256_public_keys_are_recognised_in_both_pem_forms() {
    let private = std::fs::read(test_key("rs256-private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let rs256 = |scope: &str| {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(scope), &key).unwrap()
    };
    let other = std::fs::read(test_key("rs256-other-private.pem")).unwrap();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("orders:write"),
        &EncodingKey::from_rsa_pem(&other).unwrap(),
    )
    .unwrap();
    // `openssl pkey -pubout` (PUBLIC KEY) and `openssl rsa -RSAPublicKey_out` (RSA PUBLIC KEY).
    for public in ["rs256-public.pem", "rs256-public-pkcs1.pem"] {
        let mut config = Config::for_tests();
        config.auth_public_key = Some(test_key(public));
        let server = TestServer::start_with(config).await;

        let order = get(&server, Some(&rs256("orders:read"))).await;
        assert_eq!(order.unwrap().id, "106", "{public}");
        let status = add(&server, Some(&rs256("orders:read"))).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{public}: {status:?}"
        );
        assert!(
            add(&server, Some(&rs256("orders:write"))).await.is_ok(),
            "{public}"
        );

        // Signed by another RSA key, or HS256 with anything: refused.
        let status = add(&server, Some(&forged)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{public}: {status:?}");
        let status = get(&server, Some(&hs256(&claims("orders:read"), SECRET)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{public}: {status:?}");
    }
}

#[tokio::test]
async fn browsers_are_told_why_they_were_refused() {
    use http_body_util::BodyExt;
    let auth = start(|_| {}).await;
    let client = common::http1_client::<http_body_util::Full<bytes::Bytes>>();

    // The preflight needs no token and allows the authorization header.
    let preflight = http::Request::builder()
        .method("OPTIONS")
        .uri(format!("{}/OrderManagement/getOrder", auth.server.url()))
        .header("origin", "http://page.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web",
        )
        .body(Default::default())
        .unwrap();
    let answer = client.request(preflight).await.unwrap();
    assert!(answer.status().is_success());
    let allowed = answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allowed.contains("authorization"), "{allowed}");

    // A refused call still carries CORS headers, and exposes the status and message.
    let call = http::Request::post(format!("{}/OrderManagement/getOrder", auth.server.url()))
        .header("origin", "http://page.test")
        .header("content-type", "application/grpc-web+proto")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x05\x0a\x03106",
        )))
        .unwrap();
    let answer = client.request(call).await.unwrap();
    let headers = answer.headers().clone();
    let _ = answer.into_body().collect().await;
    assert_eq!(headers["access-control-allow-origin"], "http://page.test");
    assert_eq!(headers["grpc-status"], "16");
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );

    // The same call with a token goes through.
    let token = hs256(&claims("orders:read"), SECRET);
    let call = http::Request::post(format!("{}/OrderManagement/getOrder", auth.server.url()))
        .header("origin", "http://page.test")
        .header("content-type", "application/grpc-web+proto")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\x05\x0a\x03106",
        )))
        .unwrap();
    let answer = client.request(call).await.unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "http://page.test"
    );
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.windows(15).any(|w| w == b"Apple iPhone XS"),
        "{body:?}"
    );
}

/// How long the slow client of the refusal tests waits between its request's head and its body:
/// the network it stands for, not a wait for the server.
const SLOW_NETWORK: std::time::Duration = std::time::Duration::from_millis(100);

/// What a gRPC-Web `getOrder("106")` carries: one frame of 10 bytes.
const GET_106_FRAME: &[u8] = b"\0\0\0\0\x05\x0a\x03106";

/// One refused call from a client that sends its body after its head, over HTTP/1.1 on its own
/// connection (as Node's `http` does): the whole answer, or why it could not be read.
async fn refused_over_http1(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/grpc-web+proto\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        GET_106_FRAME.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The body in two packets, as a slow link delivers it.
    for part in GET_106_FRAME.chunks(5) {
        tokio::time::sleep(SLOW_NETWORK).await;
        stream
            .write_all(part)
            .await
            .map_err(|error| format!("writing the body: {error}"))?;
    }
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|error| format!("reading the answer: {error}"))?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The same over HTTP/2 (prior knowledge): the status the answer carries, or the reset or error
/// the client saw instead.
async fn refused_over_http2(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let (response, mut body) = common::raw_h2_call(addr, path).await;
    tokio::time::sleep(SLOW_NETWORK).await;
    body.send_data(bytes::Bytes::from_static(GET_106_FRAME), true)
        .map_err(|error| format!("sending the body: {error}"))?;
    let status = common::raw_h2_status(response).await?;
    // The stream ended cleanly: the server did not reset it once it had answered.
    if let std::task::Poll::Ready(reset) =
        futures::poll!(std::future::poll_fn(|cx| body.poll_reset(cx)))
    {
        return Err(format!("the server reset the stream: {reset:?}"));
    }
    Ok(status)
}

#[tokio::test]
async fn a_client_that_sends_its_body_after_its_head_reads_every_refusal() {
    let auth = start(|_| {}).await;
    let addr = auth.server.addr;
    // 50 at once over HTTP/1.1, each on its own connection: no token.
    let answers = futures::future::join_all(
        (0..50).map(|_| refused_over_http1(addr, "/OrderManagement/getOrder")),
    )
    .await;
    for answer in answers {
        let answer = answer.expect("the refusal is read");
        assert!(answer.contains("grpc-status: 16"), "{answer}");
        assert!(answer.contains("no%20token"), "{answer}");
    }
    // 50 at once over HTTP/2, on one connection each: no token, and an unknown method.
    for path in ["/OrderManagement/getOrder", "/OrderManagement/noSuchMethod"] {
        let answers =
            futures::future::join_all((0..50).map(|_| refused_over_http2(addr, path))).await;
        let expected = if path.ends_with("getOrder") {
            "16"
        } else {
            "12"
        };
        for answer in answers {
            assert_eq!(answer.as_deref(), Ok(expected), "{path}");
        }
    }
}
