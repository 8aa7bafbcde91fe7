//! Which `Host`s this server answers: the defence against DNS rebinding.
//!
//! A page on `http://rebind.attacker.example:50051` whose name the attacker points at 127.0.0.1
//! is same-origin with itself, so CORS lets it call a server on the loopback address. What gives
//! it away is its `Host`. A server listening on a loopback address therefore answers only
//! `localhost`, `127.0.0.1` and `[::1]` (any port) and the names `--allowed-host` adds; a server
//! listening on any other address answers any `Host` unless `--allowed-host` restricts it.
//! Requests without a `Host` (HTTP/1.0 tools) are answered: browsers always send one.
//!
//! Refused: `PERMISSION_DENIED` for gRPC and gRPC-Web (at the edge, [`crate::grpc::edge`]), 421
//! Misdirected Request for the page ([`Hosts::check`] in [`crate::http::files`]).

use std::{net::SocketAddr, sync::Arc};

use http::{header, Request};

/// The names a loopback server answers without `--allowed-host`.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The `Host`s allowed, or `None` for any.
#[derive(Debug, Clone)]
pub(crate) struct Hosts(Option<Arc<Allowed>>);

#[derive(Debug)]
struct Allowed {
    /// Lowercase, without a trailing dot.
    names: Vec<String>,
    /// Each name as most requests spell their authority, alone and with the port this server
    /// listens on: compared whole, before the authority is taken apart.
    usual: Vec<String>,
}

impl Hosts {
    /// What a server listening on `listen` answers, with `extra` names from `--allowed-host`.
    pub(crate) fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let mut names: Vec<String> = extra.iter().map(|name| normalise(name)).collect();
        if listen.ip().is_loopback() {
            names.extend(LOOPBACK_NAMES.map(String::from));
        } else if names.is_empty() {
            return Self(None);
        }
        let mut usual = names.clone();
        if listen.port() != 0 {
            usual.extend(names.iter().map(|name| format!("{name}:{}", listen.port())));
        }
        Self(Some(Arc::new(Allowed { names, usual })))
    }

    /// `Ok` if `request` may be answered, else the refused host name for the message.
    pub(crate) fn check<B>(&self, request: &Request<B>) -> Result<(), String> {
        let Some(allowed) = &self.0 else {
            return Ok(());
        };
        let authority = match authority_of(request) {
            Authority::Absent => return Ok(()),
            Authority::Name(authority) => authority,
            // A `Host` that is not ASCII text names no host this server could answer for (a
            // name outside ASCII travels as punycode): refused, never taken for an absent one.
            Authority::Unreadable(bytes) => {
                return Err(String::from_utf8_lossy(bytes).chars().take(64).collect())
            }
        };
        if allowed.usual.iter().any(|usual| *usual == authority) {
            return Ok(());
        }
        let host = host_of(authority);
        // Compared in place: the host is lowercased into a String only when it is refused.
        let host = &host[..host.len() - host.bytes().rev().take_while(|&b| b == b'.').count()];
        if allowed
            .names
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
        {
            Ok(())
        } else {
            Err(normalise(host))
        }
    }
}

/// What a request says of its authority.
enum Authority<'a> {
    /// No authority and no `Host`: not a browser.
    Absent,
    Name(&'a str),
    /// A `Host` header that is not visible ASCII.
    Unreadable(&'a [u8]),
}

/// The request's authority: from the URI (HTTP/2's `:authority`, or an absolute-form HTTP/1.1
/// request) or the `Host` header.
fn authority_of<B>(request: &Request<B>) -> Authority<'_> {
    if let Some(authority) = request.uri().authority() {
        return Authority::Name(authority.as_str());
    }
    match request.headers().get(header::HOST) {
        None => Authority::Absent,
        Some(host) => match host.to_str() {
            Ok(host) => Authority::Name(host),
            Err(_) => Authority::Unreadable(host.as_bytes()),
        },
    }
}

/// The host name in `authority`, without user information or port.
fn host_of(authority: &str) -> &str {
    // Byte searches rather than `str` patterns: this runs on every call, and the char searchers
    // cost several hundred instructions for a name of a dozen bytes. Every byte looked for is
    // ASCII, so each index is a char boundary.
    let host_port = authority
        .bytes()
        .rposition(|b| b == b'@')
        .map_or(authority, |at| &authority[at + 1..]);
    let bytes = host_port.as_bytes();
    if bytes.first() == Some(&b'[') {
        // `[::1]:50051`: the brackets are part of the name.
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(host_port, |end| &host_port[..=end])
    } else {
        bytes
            .iter()
            .position(|&b| b == b':')
            .map_or(host_port, |colon| &host_port[..colon])
    }
}

/// Names compare without case and without a trailing dot (`LocalHost.` is `localhost`).
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why a request was refused, for the client.
pub(crate) fn refusal(host: &str) -> String {
    format!(
        "this server does not answer for the host {host:?}; if that name is meant to reach it, \
         start it with --allowed-host {host}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<()> {
        Request::get("/")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    fn loopback(extra: &[&str]) -> Hosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Hosts::new("127.0.0.1:50051".parse().unwrap(), &extra)
    }

    #[test]
    fn a_loopback_server_answers_only_loopback_names_on_any_port() {
        let hosts = loopback(&[]);
        for ok in [
            "localhost",
            "localhost:50051",
            "127.0.0.1:8080",
            "[::1]:50051",
            "LocalHost.",
            "[::1]",
            "user@localhost:50051",
        ] {
            assert_eq!(hosts.check(&with_host(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "rebind.attacker.example:50051",
            "localhost.attacker.example",
            "127.0.0.2",
            "[::2]:50051",
            "localhost@rebind.attacker.example",
            "[::1",
        ] {
            assert!(hosts.check(&with_host(refused)).is_err(), "{refused}");
        }
        // HTTP/2 carries the host in the URI, not the header.
        let h2 = Request::get("http://rebind.attacker.example:50051/x")
            .body(())
            .unwrap();
        assert_eq!(hosts.check(&h2), Err("rebind.attacker.example".to_string()));
        // No Host at all: not a browser.
        assert_eq!(hosts.check(&Request::get("/").body(()).unwrap()), Ok(()));
        // A Host that is not ASCII text is refused, not taken for an absent one.
        for bytes in [&b"localhost\xff"[..], "l\u{f6}calhost".as_bytes()] {
            let request = Request::get("/")
                .header(header::HOST, http::HeaderValue::from_bytes(bytes).unwrap())
                .body(())
                .unwrap();
            assert!(hosts.check(&request).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn allowed_hosts_add_to_loopback_and_restrict_others() {
        assert_eq!(
            loopback(&["Orders.Example"]).check(&with_host("orders.example:443")),
            Ok(())
        );
        let any: Hosts = Hosts::new("0.0.0.0:50051".parse().unwrap(), &[]);
        assert_eq!(any.check(&with_host("whatever.example")), Ok(()));
        let only = Hosts::new(
            "0.0.0.0:50051".parse().unwrap(),
            &["orders.example".to_string()],
        );
        assert_eq!(only.check(&with_host("orders.example")), Ok(()));
        assert!(only.check(&with_host("localhost")).is_err());
    }
}
