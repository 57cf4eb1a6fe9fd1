//! One call of a run, start to answer: a permit from the key's budget, the credentials, the
//! request, and what the answer means — retried here while it is worth it (network trouble, 5xx,
//! 408, a 429 whose wait ends before the deadline, a 401 that a fresh OAuth2 token may cure),
//! classified otherwise. Every answer's `X-RateLimit-*` headers are heeded, success or not.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use catalogue::http_json::{Auth, Method};
use chrono::Utc;
use common::SecretKey;
use protocol::FailureClass;
use reqwest::header::HeaderMap;
use reqwest::Url;
use serde_json::Value;
use tokio::time::Instant;

use super::Ctx;
use crate::adapters::{AdapterError, Retry};

/// Longest excerpt of an answer's body quoted in a message.
const MAX_EXCERPT_CHARS: usize = 160;

/// One request to make, before credentials. (`Debug` by hand: the token request's form holds
/// the client secret, and a URL the API gave may hold the key.)
#[derive(Clone)]
pub(super) struct Call {
    /// What it is, for messages: `page 3`, `the job submission`.
    pub what: String,
    pub method: Method,
    pub url: Url,
    /// Rendered headers, without the credentials.
    pub headers: Vec<(String, String)>,
    /// A JSON body.
    pub body: Option<Value>,
    /// A form body instead (the OAuth2 token request).
    pub form: Option<Vec<(&'static str, String)>>,
    pub kind: CallKind,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("what", &self.what)
            .field("method", &self.method)
            // Without the query: a next-page URL the API gave may echo the key.
            .field(
                "url",
                &format_args!(
                    "{}{}",
                    self.url.origin().ascii_serialization(),
                    self.url.path()
                ),
            )
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field(
                "form",
                &self
                    .form
                    .as_ref()
                    .map(|form| form.iter().map(|(name, _)| *name).collect::<Vec<_>>()),
            )
            .field("kind", &self.kind)
            .finish()
    }
}

/// Who the call is for, which decides the credentials and what a refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallKind {
    /// A call to the API: the stream's credentials go with it when it is on the endpoint's
    /// origin.
    Api,
    /// The OAuth2 token request: the client credentials are in its form.
    Token,
}

/// A complete answer with a success status.
#[derive(Debug)]
pub(super) struct Answer {
    /// The URL answered (after redirects).
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What one attempt came to.
enum Attempt {
    Answer(Answer),
    /// A 401 with an OAuth2 token sent: the token may have expired early or been revoked.
    TokenRefused(SecretKey),
    Failed(Failure),
}

/// An attempt that did not succeed, and what to do about it.
enum Failure {
    /// Worth another try after a backoff.
    Transient(FailureClass, String),
    /// A 429: try again once the wait is over.
    RateLimited {
        message: String,
        wait: Option<Duration>,
    },
    /// Final.
    Final(AdapterError),
}

impl Ctx<'_> {
    /// Makes `call`, retrying what is worth retrying while the run's time lasts; every attempt
    /// takes a permit first.
    pub(super) async fn call(&self, call: &Call) -> Result<Answer, AdapterError> {
        let deadline = self.run.deadline;
        let mut transient_attempts = 0u32;
        let mut limited_attempts = 0u32;
        let mut refreshed = false;
        loop {
            self.run.budget.permit().await?;
            let attempt = match tokio::time::timeout_at(deadline, self.attempt(call)).await {
                Ok(attempt) => attempt,
                Err(_) => {
                    return Err(AdapterError::new(
                        FailureClass::Timeout,
                        format!(
                            "no answer to {} ({} {}) before the run's timeout ({} ms)",
                            call.what,
                            call.method,
                            self.shown(&call.url),
                            self.run.cfg.timeout_ms
                        ),
                        Retry::NextTick,
                    ))
                }
            };
            let failure = match attempt {
                Attempt::Answer(answer) => return Ok(answer),
                Attempt::TokenRefused(token) if !refreshed => {
                    // Once: drop the token and try again with a fresh one.
                    refreshed = true;
                    self.drop_token(&token).await;
                    continue;
                }
                Attempt::TokenRefused(_) => {
                    return Err(AdapterError::new(
                        FailureClass::Auth,
                        format!(
                            "HTTP 401 from {} {} with a freshly issued OAuth2 token; check the \
                             client's permissions",
                            call.method,
                            self.shown(&call.url)
                        ),
                        Retry::StopStream,
                    ))
                }
                Attempt::Failed(failure) => failure,
            };
            match failure {
                Failure::Final(err) => return Err(err),
                Failure::Transient(class, message) => {
                    let wait = self.adapter.retry.delay(transient_attempts);
                    transient_attempts += 1;
                    if Instant::now() + wait >= deadline {
                        return Err(AdapterError::new(
                            class,
                            format!("{message} (gave up after {transient_attempts} attempts)"),
                            Retry::NextTick,
                        ));
                    }
                    tracing::debug!(
                        stream_id = %self.run.cfg.stream_id,
                        wait_ms = wait.as_millis() as u64,
                        "retrying: {message}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Failure::RateLimited { message, wait } => {
                    let wait = wait.unwrap_or_else(|| self.adapter.retry.delay(limited_attempts));
                    limited_attempts += 1;
                    let until = Instant::now() + wait;
                    if until >= deadline {
                        return Err(AdapterError::new(
                            FailureClass::RateLimited,
                            format!(
                                "{message}; the wait ({} ms) ends after the run's timeout",
                                wait.as_millis()
                            ),
                            Retry::NextTick,
                        ));
                    }
                    // Every stream on the key waits; the next permit comes after it.
                    self.run.budget.block_until(until);
                }
            }
        }
    }

    /// One attempt: credentials, request, answer, classification.
    async fn attempt(&self, call: &Call) -> Attempt {
        let mut url = call.url.clone();
        let mut token: Option<SecretKey> = None;
        let secret = &self.run.cfg.secret_key;
        let auth = &self.spec.request.auth;
        let with_credentials = call.kind == CallKind::Api && self.same_origin(&url);
        if with_credentials {
            if let Auth::Query { name } = auth {
                set_query(&mut url, &[(name.clone(), secret.expose().to_string())]);
            }
            if let Auth::Oauth2ClientCredentials { .. } = auth {
                match self.token().await {
                    Ok(value) => token = Some(value),
                    Err(err) => return Attempt::Failed(Failure::Final(err)),
                }
            }
        }
        let method = match call.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let mut request = self.adapter.client.request(method, url);
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if with_credentials {
            request = match auth {
                Auth::Bearer => request.bearer_auth(secret.expose()),
                Auth::Header { name } => request.header(name, secret.expose()),
                Auth::Basic { username } => request.basic_auth(username, Some(secret.expose())),
                Auth::Oauth2ClientCredentials { .. } => match &token {
                    Some(token) => request.bearer_auth(token.expose()),
                    None => request,
                },
                Auth::None | Auth::Query { .. } => request,
            };
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(form) = &call.form {
            request = request.form(form);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Attempt::Failed(self.transport(call, err)),
        };
        let status = response.status().as_u16();
        let answered = response.url().clone();
        let headers = response.headers().clone();
        // Heeded whatever the status: the API says when the key's next call may go.
        self.heed_rate_limit(&headers);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => return Attempt::Failed(self.transport(call, err)),
        };
        tracing::debug!(
            stream_id = %self.run.cfg.stream_id,
            status,
            bytes = body.len(),
            "{} {} answered",
            call.method,
            self.shown(&answered)
        );
        if (200..300).contains(&status) {
            return Attempt::Answer(Answer {
                url: answered,
                headers,
                body,
            });
        }
        if status == 401 && call.kind == CallKind::Api {
            if let Some(token) = token {
                return Attempt::TokenRefused(token);
            }
        }
        Attempt::Failed(self.classify(call, status, &headers, &body))
    }

    /// A status that is not a success, classified.
    fn classify(&self, call: &Call, status: u16, headers: &HeaderMap, body: &[u8]) -> Failure {
        let mut message = format!(
            "HTTP {status} from {} {} ({})",
            call.method,
            self.shown(&call.url),
            call.what
        );
        let excerpt = self.excerpt(body);
        if !excerpt.is_empty() {
            let _ = write!(message, ": {excerpt}");
        }
        match (status, call.kind) {
            (408 | 500..=599, _) => Failure::Transient(FailureClass::Http, message),
            (429, _) => Failure::RateLimited {
                message,
                wait: retry_after(headers),
            },
            (400 | 401 | 403, CallKind::Token) => Failure::Final(AdapterError::new(
                FailureClass::Auth,
                format!(
                    "the OAuth2 token endpoint refused the client credentials ({message}); \
                     check request.auth.client_id and the stream's secret_key"
                ),
                Retry::StopStream,
            )),
            (401 | 403, CallKind::Api) => Failure::Final(AdapterError::new(
                FailureClass::Auth,
                format!("{message}; check the stream's secret_key and request.auth"),
                Retry::StopStream,
            )),
            _ => Failure::Final(AdapterError::new(
                FailureClass::Http,
                message,
                Retry::NextTick,
            )),
        }
    }

    /// A request that got no complete answer.
    fn transport(&self, call: &Call, err: reqwest::Error) -> Failure {
        let class = if err.is_timeout() {
            FailureClass::Timeout
        } else {
            FailureClass::Network
        };
        // reqwest prints the URL, which may carry the key: drop it, and add the causes, which
        // say what happened ("Connection refused").
        let err = err.without_url();
        let mut message = format!(
            "{} {} ({}): {err}",
            call.method,
            self.shown(&call.url),
            call.what
        );
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                let _ = write!(message, ": {cause_text}");
            }
            source = cause.source();
        }
        Failure::Transient(class, redact(&message, &self.run.cfg.secret_key))
    }

    /// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset`: no call on the key until then.
    fn heed_rate_limit(&self, headers: &HeaderMap) {
        let remaining = header_text(headers, "x-ratelimit-remaining");
        if remaining.map(str::trim) != Some("0") {
            return;
        }
        let Some(reset) = header_text(headers, "x-ratelimit-reset")
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|reset| reset.is_finite() && *reset >= 0.0)
        else {
            return;
        };
        // Epoch seconds; a small number is seconds from now.
        let wait_s = if reset < 1e9 {
            reset
        } else {
            reset - Utc::now().timestamp_millis() as f64 / 1000.0
        };
        if wait_s > 0.0 {
            let wait = Duration::from_secs_f64(wait_s.min(86_400.0 * 31.0));
            self.run.budget.block_until(Instant::now() + wait);
        }
    }

    /// Whether `url` is on the endpoint's origin (scheme, host and port), where the stream's
    /// credentials may go.
    pub(super) fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    /// `url` for a message: the secret, should it be in the query, as `***`.
    pub(super) fn shown(&self, url: &Url) -> String {
        redact(url.as_str(), &self.run.cfg.secret_key)
    }

    /// The start of a body for a message, on one line, secret-free.
    pub(super) fn excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.chars().count() > MAX_EXCERPT_CHARS {
            line = line.chars().take(MAX_EXCERPT_CHARS).collect::<String>() + "…";
        }
        redact(&line, &self.run.cfg.secret_key)
    }
}

/// `Retry-After` as a wait: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = header_text(headers, "retry-after")?.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0 * 31.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait_ms = at.timestamp_millis() - Utc::now().timestamp_millis();
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `url` with each of `pairs` set: earlier pairs of the same name are replaced.
pub(super) fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        return;
    }
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !pairs.iter().any(|(name, _)| name == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut query = url.query_pairs_mut();
    query.clear();
    for (k, v) in kept.iter().chain(pairs) {
        query.append_pair(k, v);
    }
}

/// `text` with the secret (raw, percent-encoded or form-encoded) replaced by `***`.
pub(super) fn redact(text: &str, secret: &SecretKey) -> String {
    secret.redacted(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn redacts_the_secret_in_every_encoding() {
        let secret = SecretKey::new("s3cret key/+");
        let text = "a s3cret key/+ b s3cret%20key%2F%2B c s3cret+key%2F%2B";
        assert_eq!(redact(text, &secret), "a *** b *** c ***");
        assert_eq!(redact("ab", &SecretKey::new("ab")), "ab");
    }

    #[test]
    fn set_query_replaces_and_keeps() {
        let mut url = Url::parse("http://h/p?a=1&page=2&b=x%20y").unwrap();
        set_query(
            &mut url,
            &[("page".into(), "3".into()), ("c".into(), "&".into())],
        );
        assert_eq!(url.as_str(), "http://h/p?a=1&b=x+y&page=3&c=%26");
        let mut url = Url::parse("http://h/p").unwrap();
        set_query(&mut url, &[]);
        assert_eq!(url.as_str(), "http://h/p");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after", HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
        let soon = Utc::now() + chrono::Duration::seconds(30);
        let date = soon.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        headers.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).expect("a date");
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
