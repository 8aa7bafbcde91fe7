//! Authentication: JWT bearer tokens (`authorization: Bearer …`), checked once, at the edge of
//! every gRPC stack ([`crate::grpc::edge`]), so no RPC can be reached around it.
//!
//! Scopes are in the `scope` claim, space-separated: `orders:read` for `getOrder` and
//! `searchOrders`, `orders:write` (which includes read) for every other order RPC. Health and
//! reflection need no token. A missing or invalid token is `UNAUTHENTICATED`, a valid one without
//! the scope `PERMISSION_DENIED`; the message says which, never echoing the token.

use std::{
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Validation};
use tonic::Status;

use crate::{
    call::{Caller, READ_SCOPE, WRITE_SCOPE},
    config::Config,
};

/// The order RPCs that only read; every other order RPC writes. A test checks this against the
/// descriptor, so a new RPC is a write until someone says otherwise.
const READ_METHODS: [&str; 2] = ["getOrder", "searchOrders"];

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: health, reflection, unknown services.
    Nothing,
    /// `orders:read` or `orders:write`.
    Read,
    /// `orders:write`.
    Write,
}

impl Need {
    /// What a call to `path` needs.
    pub(crate) fn of(path: &str) -> Need {
        match crate::grpc::methods::order_method(path) {
            None => Need::Nothing,
            Some(method) if READ_METHODS.contains(&method) => Need::Read,
            Some(_) => Need::Write,
        }
    }
}

/// Why the authentication configuration cannot be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key or secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing usable.
    #[error("{path} holds no usable key: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The claims the server reads.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    scope: String,
    /// Required (jsonwebtoken checks it); kept to bound how long the token stays verified.
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    /// Read to check that it is one string (jsonwebtoken also accepts an array of issuers).
    #[serde(default)]
    iss: Option<serde_json::Value>,
}

/// How tokens are checked.
#[derive(Clone)]
pub(crate) struct Auth {
    key: DecodingKey,
    validation: Validation,
    /// `--auth-issuer` is set: `iss` must be one string.
    issuer: bool,
    public_reads: bool,
    /// The callers of calls without a token: made once, so naming them copies nothing.
    nobody: Arc<str>,
    anonymous: Arc<str>,
    /// Tokens verified already, by their bytes: a client sends the same token with every call,
    /// and verifying its signature again each time cost a quarter of a cached `getOrder`. An entry
    /// is used only within its token's `nbf` and `exp` (with the leeway), so a token expires in
    /// the cache as it would without it; the key is read once at start, so no entry can outlive
    /// it.
    verified: Arc<quick_cache::sync::Cache<Token, Arc<Verified>>>,
}

/// A verified token's bytes, the key of the cache of verified tokens ([`TokenRef`] looks it up).
///
/// Hashed by its length and its last [`HASHED_BYTES`] bytes only, which for a JWT are its
/// signature's: unlike for the whole token (180 instructions for 200 characters), the time to hash
/// them does not grow with the claims. Equality is over every byte. Only verified tokens go into
/// the cache, so a client cannot fill it with tokens made to collide.
#[derive(PartialEq, Eq)]
struct Token(Box<[u8]>);

/// A token as sent, to look it up in the cache of verified tokens without copying it.
struct TokenRef<'a>(&'a [u8]);

/// How many of a token's last bytes its hash covers.
const HASHED_BYTES: usize = 16;

fn hash_token(token: &[u8], state: &mut impl Hasher) {
    state.write_usize(token.len());
    state.write(&token[token.len().saturating_sub(HASHED_BYTES)..]);
}

impl Hash for Token {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(&self.0, state);
    }
}

impl Hash for TokenRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_token(self.0, state);
    }
}

impl quick_cache::Equivalent<Token> for TokenRef<'_> {
    fn equivalent(&self, key: &Token) -> bool {
        *self.0 == *key.0
    }
}

/// What a verified token says: enough to check a call's scope and to name its caller.
#[derive(Debug)]
struct Verified {
    subject: Arc<str>,
    /// The `scope` claim, for a refusal's message.
    scope: String,
    /// It holds `orders:read` or `orders:write`.
    reads: bool,
    /// It holds `orders:write`.
    writes: bool,
    /// Unix seconds.
    exp: u64,
    nbf: Option<u64>,
}

/// Most verified tokens remembered (the least used go first).
const VERIFIED_TOKENS: usize = 10_000;

/// Where the keys come from, and what the claims must say.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthConfig {
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) public_key: Option<PathBuf>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    /// Clock difference allowed for `exp` and `nbf`.
    pub(crate) leeway: Duration,
    pub(crate) public_reads: bool,
}

impl AuthConfig {
    /// What authentication needs of `config`.
    pub(crate) fn of(config: &Config) -> AuthConfig {
        AuthConfig {
            secret_file: config.auth_secret_file.clone(),
            public_key: config.auth_public_key.clone(),
            issuer: config.auth_issuer.clone(),
            audience: config.auth_audience.clone(),
            leeway: config.auth_leeway,
            public_reads: config.public_reads,
        }
    }
}

/// The secret of an HS256 secret file: its bytes, a trailing newline stripped.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut secret = std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })?;
    while secret.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(AuthError::Key {
            path: path.display().to_string(),
            reason: "the secret is empty".into(),
        });
    }
    Ok(secret)
}

impl Auth {
    /// The checker `config` asks for, or `None` when no key is given (authentication off).
    pub(crate) fn new(config: &AuthConfig) -> Result<Option<(Self, Algorithm)>, AuthError> {
        let (key, algorithm) = match (&config.secret_file, &config.public_key) {
            (Some(path), _) => (
                DecodingKey::from_secret(&read_secret(path)?),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|source| AuthError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                    (key, Algorithm::EdDSA)
                } else {
                    return Err(AuthError::Key {
                        path: path.display().to_string(),
                        reason: "expected a PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)".into(),
                    });
                }
            }
            (None, None) => return Ok(None),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = config.leeway.as_secs();
        // jsonwebtoken checks `iss` and `aud` only when a token has them, unless they are
        // required: a configured issuer or audience is required.
        let mut required = vec!["exp"];
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some((
            Self {
                key,
                validation,
                issuer: config.issuer.is_some(),
                public_reads: config.public_reads,
                nobody: Arc::from(""),
                anonymous: Arc::from("anonymous"),
                verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)),
            },
            algorithm,
        )))
    }

    /// Checks the call's `authorization` header against what `need` asks.
    pub(crate) fn check(&self, headers: &http::HeaderMap, need: Need) -> Result<Caller, Status> {
        if need == Need::Nothing {
            return Ok(Caller {
                subject: self.nobody.clone(),
            });
        }
        let Some(header) = headers.get(http::header::AUTHORIZATION) else {
            if need == Need::Read && self.public_reads {
                return Ok(Caller {
                    subject: self.anonymous.clone(),
                });
            }
            return Err(Status::unauthenticated(
                "no token: send `authorization: Bearer <token>`",
            ));
        };
        // Bytes, not `to_str`: a token the cache knows was checked when it was verified.
        let token = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .map(<[u8]>::trim_ascii)
            .filter(|token| !token.is_empty())
            .ok_or_else(malformed)?;
        let claims = self.verify(token, unix_now())?;
        let allowed = claims.writes || (need == Need::Read && claims.reads);
        if !allowed {
            let wanted = match need {
                Need::Read => format!("{READ_SCOPE} or {WRITE_SCOPE}"),
                _ => WRITE_SCOPE.to_owned(),
            };
            return Err(Status::permission_denied(format!(
                "this call needs the {wanted} scope; the token has {}",
                if claims.scope.split_whitespace().next().is_none() {
                    "none".to_owned()
                } else {
                    format!("\"{}\"", claims.scope.chars().take(100).collect::<String>())
                }
            )));
        }
        Ok(Caller {
            subject: claims.subject.clone(),
        })
    }

    /// The claims of `token` if it is valid at `now` (Unix seconds): from the cache of verified
    /// tokens while it is within its `nbf` and `exp`, else verified (signature, `exp`, `nbf`,
    /// `iss`, `aud`) and remembered. A cached token past its `exp` gets the refusal it would get
    /// without the cache.
    fn verify(&self, token: &[u8], now: u64) -> Result<Arc<Verified>, Status> {
        let leeway = self.validation.leeway;
        if let Some(verified) = self.verified.get(&TokenRef(token)) {
            if verified.exp.saturating_add(leeway) < now {
                self.verified.remove(&TokenRef(token));
                return Err(Status::unauthenticated(refusal(
                    &ErrorKind::ExpiredSignature,
                )));
            }
            if verified
                .nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(leeway))
            {
                return Ok(verified);
            }
            // Not valid yet: the full check says so.
        }
        // What `HeaderValue::to_str` accepts: visible ASCII and tabs.
        let token = token
            .iter()
            .all(|&byte| byte == b'\t' || (b' '..=b'~').contains(&byte))
            .then(|| std::str::from_utf8(token).ok())
            .flatten()
            .ok_or_else(malformed)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| Status::unauthenticated(refusal(error.kind())))?
            .claims;
        if self.issuer
            && !claims
                .iss
                .as_ref()
                .is_some_and(serde_json::Value::is_string)
        {
            return Err(Status::unauthenticated(
                "the token's issuer (iss) must be one string",
            ));
        }
        let has = |wanted: &str| claims.scope.split_whitespace().any(|scope| scope == wanted);
        let writes = has(WRITE_SCOPE);
        let verified = Arc::new(Verified {
            subject: claims.sub.chars().take(100).collect::<String>().into(),
            reads: writes || has(READ_SCOPE),
            writes,
            scope: claims.scope,
            exp: claims.exp,
            nbf: claims.nbf,
        });
        self.verified
            .insert(Token(token.as_bytes().into()), verified.clone());
        Ok(verified)
    }
}

/// The refusal of an `authorization` header that holds no bearer token.
fn malformed() -> Status {
    Status::unauthenticated("the authorization header must be `Bearer <token>`")
}

/// Now, in seconds since the Unix epoch, as jsonwebtoken reads it.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Why a token was refused, for the client.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
        ErrorKind::InvalidIssuer => {
            "the token's issuer (iss) is not the one this server accepts".into()
        }
        ErrorKind::InvalidAudience => {
            "the token's audience (aud) is not the one this server accepts".into()
        }
        ErrorKind::InvalidAlgorithm => {
            "the token is signed with another algorithm than this server's".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => "the token is malformed".into(),
    }
}

/// Signs a token with an HS256 secret: what `order-server token` prints.
pub fn sign_token(
    secret: &[u8],
    subject: &str,
    scope: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let mut claims = serde_json::json!({
        "sub": subject,
        "scope": scope,
        "iat": now,
        "nbf": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(issuer) = issuer {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = audience {
        claims["aud"] = audience.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_api::pb::order_management_server::SERVICE_NAME;
    use prost::Message;

    #[test]
    fn every_order_rpc_needs_a_scope_and_only_the_reads_need_less_than_write() {
        let set = prost_types::FileDescriptorSet::decode(order_api::FILE_DESCRIPTOR_SET).unwrap();
        let service = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == SERVICE_NAME)
            .unwrap();
        for method in &service.method {
            let need = Need::of(&format!("/{SERVICE_NAME}/{}", method.name()));
            let reads = READ_METHODS.contains(&method.name());
            assert_eq!(
                need,
                if reads { Need::Read } else { Need::Write },
                "{}",
                method.name()
            );
        }
        for read in READ_METHODS {
            assert!(
                service.method.iter().any(|m| m.name() == read),
                "{read} is not an RPC of the contract"
            );
        }
        assert_eq!(Need::of("/grpc.health.v1.Health/Check"), Need::Nothing);
        assert_eq!(
            Need::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Need::Nothing
        );
    }

    fn auth_with_secret(dir: &tempfile::TempDir) -> Auth {
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "cache test secret\n").unwrap();
        let config = AuthConfig {
            secret_file: Some(secret),
            leeway: Duration::from_secs(5),
            ..AuthConfig::default()
        };
        Auth::new(&config).unwrap().unwrap().0
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn a_token_is_verified_once_and_still_expires_on_time() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth_with_secret(&dir);
        let ttl = Duration::from_secs(100);
        let token = sign_token(
            b"cache test secret",
            "alice",
            "orders:read",
            ttl,
            None,
            None,
        )
        .unwrap();
        let now = unix_now();
        let first = auth.verify(token.as_bytes(), now).unwrap();
        let again = auth.verify(token.as_bytes(), now).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "verified twice");
        assert_eq!(&*again.subject, "alice");
        // Within the leeway after exp it still passes, past it it is refused as without a cache.
        assert!(auth.verify(token.as_bytes(), first.exp + 5).is_ok());
        let expired = auth.verify(token.as_bytes(), first.exp + 6).unwrap_err();
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert_eq!(expired.message(), "the token has expired");
        assert!(
            auth.verified.get(&TokenRef(token.as_bytes())).is_none(),
            "kept after it expired"
        );
    }

    #[test]
    fn a_cached_token_gets_the_same_scope_refusal_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth_with_secret(&dir);
        let ttl = Duration::from_secs(100);
        let token =
            sign_token(b"cache test secret", "bob", "orders:read", ttl, None, None).unwrap();
        let refusals: Vec<_> = (0..2)
            .map(|_| auth.check(&bearer(&token), Need::Write).unwrap_err())
            .collect();
        assert_eq!(refusals[0].code(), tonic::Code::PermissionDenied);
        assert_eq!(refusals[0].message(), refusals[1].message());
        assert!(refusals[0].message().contains("\"orders:read\""));
        assert_eq!(
            &*auth.check(&bearer(&token), Need::Read).unwrap().subject,
            "bob"
        );
        // Another signature is another token: verified, and refused.
        let at = token.len() - 10;
        let other = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{other}{}", &token[..at], &token[at + 1..]);
        let status = auth.check(&bearer(&forged), Need::Read).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_header_that_holds_no_bearer_token_is_refused_with_a_token_cached_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let auth = auth_with_secret(&dir);
        let ttl = Duration::from_secs(100);
        let token =
            sign_token(b"cache test secret", "eve", "orders:read", ttl, None, None).unwrap();
        let with = |value: Vec<u8>| {
            let mut headers = http::HeaderMap::new();
            let value = http::HeaderValue::from_bytes(&value).unwrap();
            headers.insert(http::header::AUTHORIZATION, value);
            auth.check(&headers, Need::Read)
        };
        for cached in [false, true] {
            let padded = format!("Bearer \t {token} ").into_bytes();
            let refused = [
                [b"Bearer ", token.as_bytes(), b"\xff"].concat(),
                [b"Bearer \xff", &token.as_bytes()[1..]].concat(),
                format!("bearer {token}").into_bytes(),
                b"Bearer \t ".to_vec(),
                token.clone().into_bytes(),
            ];
            for value in refused {
                let status = with(value.clone()).unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value:?}");
                assert_eq!(
                    status.message(),
                    "the authorization header must be `Bearer <token>`",
                    "cached: {cached}, {value:?}"
                );
            }
            assert_eq!(&*with(padded).unwrap().subject, "eve", "cached: {cached}");
        }
    }
}
