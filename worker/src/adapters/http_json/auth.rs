//! OAuth2 client credentials: an access token per stream, token URL and client, fetched when
//! first needed, kept until shortly before it expires, and dropped when the API refuses it.
//! One fetch at a time per token: the pages of a parallel run wait for the same token rather
//! than each asking for one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalogue::http_json::{Auth, Method};
use common::SecretKey;
use protocol::FailureClass;
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::call::{Call, CallKind};
use super::Ctx;
use crate::adapters::{AdapterError, Retry};

/// The most a token is refreshed ahead of its expiry.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Tokens by stream, token URL and client id.
#[derive(Default)]
pub(super) struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    stream_id: Uuid,
    token_url: String,
    client_id: String,
}

#[derive(Clone)]
struct Token {
    value: SecretKey,
    /// When to fetch a new one; `None`: the token server gave no lifetime, so until refused.
    refresh_at: Option<Instant>,
}

impl TokenCache {
    fn slot(&self, key: TokenKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Tokens of streams that are gone would stay forever: drop the expired ones nobody is
        // fetching whenever a new stream's slot is made.
        if !slots.contains_key(&key) {
            let now = Instant::now();
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(token) => token
                    .as_ref()
                    .is_some_and(|t| t.refresh_at.is_none_or(|at| at > now)),
                Err(_) => true,
            });
        }
        slots.entry(key).or_default().clone()
    }
}

/// When to refresh a token that lives `lifetime`: a tenth of its life ahead, at most 30 s.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

impl Ctx<'_> {
    fn token_key(&self) -> Option<TokenKey> {
        match &self.spec.request.auth {
            Auth::Oauth2ClientCredentials {
                token_url,
                client_id,
                ..
            } => Some(TokenKey {
                stream_id: self.run.cfg.stream_id,
                token_url: token_url.clone(),
                client_id: client_id.clone(),
            }),
            _ => None,
        }
    }

    /// The stream's access token: the cached one while it is fresh, else a new one.
    pub(super) async fn token(&self) -> Result<SecretKey, AdapterError> {
        let Some(key) = self.token_key() else {
            return Err(AdapterError::new(
                FailureClass::Auth,
                "no OAuth2 client credentials in request.auth",
                Retry::StopStream,
            ));
        };
        let slot = self.adapter.tokens.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.refresh_at.is_none_or(|at| Instant::now() < at) {
                return Ok(token.value.clone());
            }
        }
        // Boxed: fetching a token is itself a call, and a call may need a token.
        let token = Box::pin(self.fetch_token()).await?;
        *cached = Some(token.clone());
        Ok(token.value)
    }

    /// The API refused `used`: forget it, unless another page already replaced it.
    pub(super) async fn drop_token(&self, used: &SecretKey) {
        let Some(key) = self.token_key() else {
            return;
        };
        let slot = self.adapter.tokens.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|t| &t.value == used) {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, AdapterError> {
        let Auth::Oauth2ClientCredentials {
            token_url,
            client_id,
            scope,
        } = &self.spec.request.auth
        else {
            return Err(AdapterError::new(
                FailureClass::Auth,
                "no OAuth2 client credentials in request.auth",
                Retry::StopStream,
            ));
        };
        let url = Url::parse(token_url).map_err(|err| {
            AdapterError::new(
                FailureClass::Auth,
                format!("request.auth.token_url is not a URL ({err}); fix the stream"),
                Retry::StopStream,
            )
        })?;
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", client_id.clone()),
            (
                "client_secret",
                self.run.cfg.secret_key.expose().to_string(),
            ),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope.clone()));
        }
        let call = Call {
            what: "the OAuth2 token request".to_string(),
            method: Method::Post,
            url,
            headers: vec![("Accept".to_string(), "application/json".to_string())],
            body: None,
            form: Some(form),
            kind: CallKind::Token,
        };
        let answer = self.call(&call).await?;
        let invalid = |what: &str| {
            AdapterError::new(
                FailureClass::InvalidBody,
                format!(
                    "the OAuth2 token answer from {} {what}: {}",
                    self.shown(&answer.url),
                    self.excerpt(&answer.body)
                ),
                Retry::NextTick,
            )
        };
        let json: Value =
            serde_json::from_slice(&answer.body).map_err(|_| invalid("is not JSON"))?;
        let value = json
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("has no access_token"))?;
        let lifetime = json.get("expires_in").and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
        let refresh_at = lifetime
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Instant::now() + refresh_after(Duration::from_secs_f64(s.min(1e9))));
        tracing::debug!(
            stream_id = %self.run.cfg.stream_id,
            lifetime_s = lifetime,
            "fetched an OAuth2 access token"
        );
        Ok(Token {
            value: SecretKey::new(value),
            refresh_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_a_little_ahead() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3570)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(54)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_millis(1800)
        );
    }
}
