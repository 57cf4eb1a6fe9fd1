//! The six ways a data route can want credentials (named by the path's first segment), the
//! OAuth2 client-credentials token endpoint and the tokens it hands out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use tokio::time::Instant;

use super::error::ApiError;
use super::JsonSimState;

/// The user name HTTP Basic wants (the password is the secret).
pub const BASIC_USER: &str = "sim";
/// The OAuth2 client id `/oauth/token` wants (the client secret is the secret).
pub const OAUTH_CLIENT_ID: &str = "sim-client";

/// How a data route wants to be called: the first path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// `/none/…`: no credentials.
    None,
    /// `/bearer/…`: `Authorization: Bearer <secret>`.
    Bearer,
    /// `/header/…`: `X-Api-Key: <secret>`.
    Header,
    /// `/query/…`: `?api_key=<secret>`.
    Query,
    /// `/basic/…`: `Authorization: Basic base64(sim:<secret>)`.
    Basic,
    /// `/oauth2/…`: `Authorization: Bearer <token from POST /oauth/token>`.
    OAuth2,
}

impl AuthKind {
    /// Every kind, in documentation order.
    pub const ALL: [AuthKind; 6] = [
        AuthKind::None,
        AuthKind::Bearer,
        AuthKind::Header,
        AuthKind::Query,
        AuthKind::Basic,
        AuthKind::OAuth2,
    ];

    /// The path segment naming it.
    pub fn segment(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Bearer => "bearer",
            AuthKind::Header => "header",
            AuthKind::Query => "query",
            AuthKind::Basic => "basic",
            AuthKind::OAuth2 => "oauth2",
        }
    }

    /// The kind a path segment names.
    pub fn parse(segment: &str) -> Option<AuthKind> {
        AuthKind::ALL.into_iter().find(|k| k.segment() == segment)
    }

    /// What to send, for the 401's `detail`.
    fn how(self) -> &'static str {
        match self {
            AuthKind::None => "nothing",
            AuthKind::Bearer => "send Authorization: Bearer <secret>",
            AuthKind::Header => "send X-Api-Key: <secret>",
            AuthKind::Query => "add the query parameter api_key=<secret>",
            AuthKind::Basic => "send Authorization: Basic base64(sim:<secret>)",
            AuthKind::OAuth2 => {
                "send Authorization: Bearer <access_token> with a token from POST /oauth/token"
            }
        }
    }
}

/// Checks a data request's credentials for `kind`; the answer to send when they are missing or
/// wrong.
pub(crate) fn check(
    state: &JsonSimState,
    kind: AuthKind,
    headers: &HeaderMap,
    query: &str,
) -> Result<(), ApiError> {
    let secret = state.inner.secret.expose();
    let unauthorized = |challenge: Option<&'static str>| {
        let error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized").with(
            "detail",
            format!("missing or wrong credentials: {}", kind.how()),
        );
        match challenge {
            Some(challenge) => error.challenge(challenge),
            None => error,
        }
    };
    let accepted = match kind {
        AuthKind::None => true,
        AuthKind::Bearer => bearer(headers) == Some(secret),
        AuthKind::Header => headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(secret),
        AuthKind::Query => query_values(query, "api_key").any(|v| v == secret),
        AuthKind::Basic => {
            let accepted = basic(headers)
                .is_some_and(|(user, password)| user == BASIC_USER && password == secret);
            if !accepted {
                return Err(unauthorized(Some("Basic realm=\"json-sim\"")));
            }
            true
        }
        AuthKind::OAuth2 => {
            let Some(token) = bearer(headers) else {
                return Err(unauthorized(Some("Bearer realm=\"json-sim\"")));
            };
            if !state.inner.tokens.is_valid(token) {
                return Err(ApiError::invalid_token());
            }
            true
        }
    };
    match accepted {
        true => Ok(()),
        false if kind == AuthKind::Bearer => Err(unauthorized(Some("Bearer realm=\"json-sim\""))),
        false => Err(unauthorized(None)),
    }
}

/// The credential of an `Authorization: Bearer …` header (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The user and password of an `Authorization: Basic …` header.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The decoded values of parameter `name` in a raw query string.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space); bad escapes stay as they are.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i] {
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The access tokens handed out so far and when each expires.
#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    tokens: Mutex<HashMap<String, Instant>>,
}

impl TokenStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // One insert, retain or clear at a time: never half changed.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new random token valid for `ttl`.
    pub fn issue(&self, ttl: Duration) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let mut tokens = self.lock();
        // Keeps a long benchmark with short-lived tokens from growing the map for ever.
        if tokens.len() >= 10_000 {
            tokens.retain(|_, expires| *expires > now);
        }
        tokens.insert(token.clone(), now + ttl);
        token
    }

    /// Whether `token` was issued, is not revoked and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        self.lock()
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    /// Invalidates every token issued so far; returns how many were known.
    pub fn revoke_all(&self) -> usize {
        let mut tokens = self.lock();
        let revoked = tokens.len();
        tokens.clear();
        revoked
    }
}

/// The form of `POST /oauth/token`.
#[derive(Debug, Default)]
pub(crate) struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// `POST /oauth/token`: the client-credentials grant (RFC 6749 §4.4), the client authenticated
/// by HTTP Basic or by the form's `client_id`/`client_secret`.
pub(crate) async fn token(
    State(state): State<JsonSimState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form: TokenForm = match parse_form(&body) {
        Ok(form) => form,
        Err(detail) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request")
                .with("detail", detail)
                .into_response()
        }
    };
    let sim = &state.inner;
    let (client_id, client_secret) = match basic(&headers) {
        Some((id, secret)) => (Some(percent_decode(&id)), Some(percent_decode(&secret))),
        None => (form.client_id.clone(), form.client_secret.clone()),
    };
    let client_ok = client_id.as_deref() == Some(OAUTH_CLIENT_ID)
        && client_secret.as_deref() == Some(sim.secret.expose());
    if !client_ok {
        sim.observe.unauthorized.fetch_add(1, Ordering::Relaxed);
        return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client")
            .with(
                "detail",
                "client_id must be sim-client and client_secret the simulator's secret (form fields or HTTP Basic)",
            )
            .challenge("Basic realm=\"json-sim\"")
            .into_response();
    }
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        None => {
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request")
                .with(
                    "detail",
                    "grant_type is missing; send grant_type=client_credentials",
                )
                .into_response()
        }
        Some(other) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "unsupported_grant_type")
                .with(
                    "detail",
                    format!(
                        "grant_type {other:?} is not supported; send grant_type=client_credentials"
                    ),
                )
                .into_response()
        }
    }
    let ttl = sim.tunables.token_ttl();
    let access_token = sim.tokens.issue(ttl);
    sim.observe.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": form.scope.unwrap_or_default(),
    }))
    .into_response();
    // RFC 6749 §5.1: token answers must not be cached.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Parses a form body (four known fields, the rest ignored) by hand, so that any body, even one
/// that is not a form, gets an OAuth2 error body rather than axum's plain-text rejection.
fn parse_form(body: &str) -> Result<TokenForm, String> {
    let mut form = TokenForm::default();
    for pair in body.trim().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = Some(percent_decode(value));
        match percent_decode(key).as_str() {
            "grant_type" => form.grant_type = value,
            "client_id" => form.client_id = value,
            "client_secret" => form.client_secret = value,
            "scope" => form.scope = value,
            _ => {}
        }
    }
    if body.trim_start().starts_with('{') {
        return Err("the body must be application/x-www-form-urlencoded, not JSON".into());
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%2Bd"), "a b c+d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let form =
            parse_form("grant_type=client_credentials&client_id=sim-client&scope=read+write")
                .unwrap();
        assert_eq!(form.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(form.scope.as_deref(), Some("read write"));
        assert!(parse_form("{\"grant_type\": 1}").is_err());
    }

    #[test]
    fn credentials_are_read_from_their_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        assert_eq!(basic(&headers), None);
        let encoded = format!("Basic {}", STANDARD.encode("sim:pa:ss"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&encoded).unwrap(),
        );
        assert_eq!(basic(&headers), Some(("sim".into(), "pa:ss".into())));
        assert_eq!(
            query_values("a=1&api_key=x%2By&api_key", "api_key").collect::<Vec<_>>(),
            ["x+y", ""]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_and_can_be_revoked() {
        let store = TokenStore::default();
        let token = store.issue(Duration::from_secs(10));
        assert!(store.is_valid(&token));
        assert!(!store.is_valid("made-up"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!store.is_valid(&token));
        let fresh = store.issue(Duration::from_secs(10));
        assert_eq!(store.revoke_all(), 2);
        assert!(!store.is_valid(&fresh));
    }
}
