//! Who may use the API: with `DATA_STREAMS_API_TOKEN` set, a request needs the token as
//! `Authorization: Bearer`, or a console session.
//!
//! A session is what the console gets for the token, once (`POST /session`): an HttpOnly,
//! SameSite=Strict cookie `ds_session` holding its expiry and a nonce, signed with a key derived
//! from the token (HMAC-SHA256), so any replica with the same token accepts it and a restart
//! keeps it. Changing the token ends every session. A state-changing request that rests on the
//! cookie alone must also carry `X-CSRF-Token`, a second MAC of the cookie that only a page of
//! this origin can read (from `GET /session`): SameSite keeps other sites' requests from sending
//! the cookie, and the header keeps out whatever slips past that. Bearer requests need no CSRF
//! token: a browser never adds that header by itself.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::SecretKey;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::{ApiError, ApiJson, AppState};
use crate::stream::Rfc3339;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ds_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts, in seconds (12 h).
const SESSION_SECS: i64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// The API's credentials: the token's digest (compared in constant time, so neither the token
/// nor its length leaks through timing) and the key that signs sessions.
#[derive(Clone, Default)]
pub struct Auth {
    token: Option<[u8; 32]>,
    session_key: [u8; 32],
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// No token is configured: the API is open.
    Open,
    Bearer,
    /// A valid session cookie, with its value.
    Session(String),
}

impl Auth {
    /// Credentials for `token`; `None` leaves the API open.
    pub fn new(token: Option<&SecretKey>) -> Self {
        let Some(token) = token else {
            return Auth::default();
        };
        let mut key = Sha256::new();
        key.update(b"data-streams console session v1\0");
        key.update(token.expose().as_bytes());
        Auth {
            token: Some(token.digest()),
            session_key: key.finalize().into(),
        }
    }

    /// No API token is configured: the API, the ingest routes included, is open.
    pub(crate) fn is_open(&self) -> bool {
        self.token.is_none()
    }

    /// `token` is the API token (compared in constant time).
    pub(crate) fn is_api_token(&self, token: &str) -> bool {
        self.token.is_some_and(|expected| {
            bool::from(SecretKey::new(token.trim()).digest().ct_eq(&expected))
        })
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.session_key).expect("any key length");
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session cookie value (`<expires ms>.<nonce>.<mac>`) and its expiry.
    fn new_session(&self) -> (String, i64) {
        let expires_ms = common::now_ms() + SESSION_SECS * 1000;
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let head = format!("{expires_ms}.{nonce}");
        let mac = self.mac(&[b"session", head.as_bytes()]);
        (format!("{head}.{mac}"), expires_ms)
    }

    /// The expiry of a session cookie value that this key signed and that has not expired.
    fn session_expiry(&self, value: &str) -> Option<i64> {
        let (head, mac) = value.rsplit_once('.')?;
        let expected = self.mac(&[b"session", head.as_bytes()]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let expires_ms: i64 = head.split_once('.')?.0.parse().ok()?;
        (expires_ms > common::now_ms()).then_some(expires_ms)
    }

    /// The CSRF token of a session.
    fn csrf(&self, session: &str) -> String {
        self.mac(&[b"csrf", session.as_bytes()])
    }

    /// What `headers` prove: `Ok(None)` for nothing at all, an error for a wrong bearer token.
    fn credential(&self, headers: &HeaderMap) -> Result<Option<Credential>, ApiError> {
        if self.is_open() {
            return Ok(Some(Credential::Open));
        }
        if let Some(token) = bearer(headers) {
            return if self.is_api_token(token) {
                Ok(Some(Credential::Bearer))
            } else {
                Err(ApiError::Unauthorized(
                    "the bearer token is not valid".into(),
                ))
            };
        }
        Ok(session_cookie(headers)
            .filter(|value| self.session_expiry(value).is_some())
            .map(|value| Credential::Session(value.to_owned())))
    }
}

/// The token of a request's `Authorization: Bearer`, trimmed, if it sent one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The `ds_session` cookie of a request, if it sent one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })
}

/// The gate in front of every protected route (the live channel included).
pub(super) async fn require_auth(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let credential = match state.auth.credential(request.headers()) {
        Ok(Some(credential)) => credential,
        Ok(None) => {
            return ApiError::Unauthorized(
                "an Authorization: Bearer token is required (or a console session)".into(),
            )
            .into_response()
        }
        Err(err) => return err.into_response(),
    };
    if let Credential::Session(session) = &credential {
        let safe = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        let presented = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let expected = state.auth.csrf(session);
        if !safe && !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::Forbidden(format!(
                "a change made with a console session needs the {CSRF_HEADER} header from GET /session"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

/// `POST /session`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    /// The API token (`DATA_STREAMS_API_TOKEN`).
    #[schema(value_type = String, format = Password)]
    token: SecretKey,
}

/// A console session as its page sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionView {
    /// True when no API token is configured: no session is needed.
    open: bool,
    /// Send this as `X-CSRF-Token` with every change made on the session; `null` for an open
    /// API or a bearer token.
    csrf: Option<String>,
    /// When the session ends; `null` when there is none.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Rfc3339>,
}

fn cookie(value: &str, max_age: i64) -> HeaderValue {
    let text =
        format!("{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    // Cookie values are hex and digits only.
    HeaderValue::from_str(&text).expect("an ASCII cookie")
}

/// `POST /session`: trade the API token for a session cookie (the console's login).
#[utoipa::path(
    post, path = "/session", operation_id = "login", tag = "console",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in: the cookie is set", body = SessionView),
        (status = 400, description = "Malformed body", body = super::docs::ErrorBody),
        (status = 401, description = "Wrong token", body = super::docs::ErrorBody),
        (status = 413, description = "Body too large", body = super::docs::ErrorBody),
        (status = 415, description = "Not JSON", body = super::docs::ErrorBody),
    ),
    security(())
)]
pub(super) async fn login(
    State(state): State<AppState>,
    ApiJson(login): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let auth = &state.auth;
    let Some(expected) = auth.token else {
        let open = SessionView {
            open: true,
            csrf: None,
            expires_at: None,
        };
        return Ok(Json(open).into_response());
    };
    if !bool::from(login.token.digest().ct_eq(&expected)) {
        tracing::warn!("console login with a wrong token");
        return Err(ApiError::Unauthorized("the token is not valid".into()));
    }
    let (session, expires_ms) = auth.new_session();
    let view = SessionView {
        open: false,
        csrf: Some(auth.csrf(&session)),
        expires_at: Some(Rfc3339(expires_ms)),
    };
    let mut response = Json(view).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&session, SESSION_SECS));
    Ok(response)
}

/// `GET /session`: whether this browser (or bearer) may use the API, and the CSRF token of its
/// session.
#[utoipa::path(
    get, path = "/session", operation_id = "get_session", tag = "console",
    responses(
        (status = 200, description = "Allowed", body = SessionView),
        (status = 401, description = "No valid token or session", body = super::docs::ErrorBody),
    ),
    security(())
)]
pub(super) async fn session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let auth = &state.auth;
    let view = match auth.credential(&headers)? {
        Some(Credential::Open) => SessionView {
            open: true,
            csrf: None,
            expires_at: None,
        },
        Some(Credential::Bearer) => SessionView {
            open: false,
            csrf: None,
            expires_at: None,
        },
        Some(Credential::Session(value)) => SessionView {
            open: false,
            csrf: Some(auth.csrf(&value)),
            expires_at: auth.session_expiry(&value).map(Rfc3339),
        },
        None => {
            return Err(ApiError::Unauthorized(
                "no session: log in with POST /session".into(),
            ))
        }
    };
    Ok(Json(view))
}

/// `DELETE /session`: forget the cookie in this browser.
#[utoipa::path(
    delete, path = "/session", operation_id = "logout", tag = "console",
    responses((status = 204, description = "The cookie is cleared")),
    security(())
)]
pub(super) async fn logout() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn sessions_are_signed_with_the_token_and_expire() {
        let auth = Auth::new(Some(&SecretKey::new("token-a")));
        let (session, expires) = auth.new_session();
        assert_eq!(auth.session_expiry(&session), Some(expires));
        let cookie = format!("theme=dark; {SESSION_COOKIE}={session}");
        assert_eq!(
            auth.credential(&headers(&[("cookie", &cookie)])).unwrap(),
            Some(Credential::Session(session.clone()))
        );
        let other = Auth::new(Some(&SecretKey::new("token-b")));
        assert_eq!(other.session_expiry(&session), None, "another token's key");
        let (head, _) = session.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", "0".repeat(64));
        assert_eq!(auth.session_expiry(&forged), None);
        let past = format!("1000.{}", "ab".repeat(16));
        let mac = auth.mac(&[b"session", past.as_bytes()]);
        assert_eq!(
            auth.session_expiry(&format!("{past}.{mac}")),
            None,
            "expired"
        );
        assert_ne!(auth.csrf(&session), auth.csrf(&auth.new_session().0));
    }

    #[test]
    fn bearer_tokens_are_checked_and_an_open_api_needs_nothing() {
        let auth = Auth::new(Some(&SecretKey::new("token-a")));
        let ok = headers(&[("authorization", "Bearer token-a")]);
        assert_eq!(auth.credential(&ok).unwrap(), Some(Credential::Bearer));
        let wrong = headers(&[("authorization", "Bearer nope")]);
        assert!(auth.credential(&wrong).is_err());
        assert_eq!(auth.credential(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            Auth::new(None).credential(&HeaderMap::new()).unwrap(),
            Some(Credential::Open)
        );
    }
}
