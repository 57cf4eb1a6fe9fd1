//! The HTTP client of the supervisor's API, the same for the in-process supervisor
//! ([`super::TestApp`] is one) and for the real binary ([`super::Supervisor`] has one).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use super::eventually;

/// A client of one supervisor's API, sending a bearer token when it has one.
#[derive(Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl Api {
    /// A client of the API at `addr` (`host:port`, with or without `http://`).
    pub fn new(addr: &str, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{}", addr.trim_start_matches("http://")),
            token: token.map(str::to_owned),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
        }
    }

    /// The same API with another token, or none.
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, carrying the token when this client has one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Send `request`; the status and the body as JSON (`Null` when empty, a string starting
    /// with `<not JSON>` when it is something else).
    async fn answer(request: RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("a request to the API");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(format!("<not JSON> {}", String::from_utf8_lossy(&bytes)))
            })
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(Method::GET, path)).await
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let response = self.request(Method::GET, path).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("a body").to_vec())
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.request(Method::POST, path).json(body)).await
    }

    /// A POST without a body (start/stop).
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(Method::POST, path)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.request(Method::PATCH, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(Method::DELETE, path)).await
    }

    /// A request with an arbitrary body and content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path).body(body);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        Self::answer(request).await
    }

    // --- Streams ---------------------------------------------------------------------------------

    /// Create a stream; returns its view.
    pub async fn create_stream(&self, body: &Value) -> Value {
        let (status, created) = self.post("/streams", body).await;
        assert_eq!(status, 201, "create: {created}");
        created
    }

    pub async fn stream(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/streams/{id}")).await;
        assert_eq!(status, 200, "GET /streams/{id}: {body}");
        body
    }

    /// Every result reference of a stream, following the cursor, newest first.
    pub async fn all_results(&self, stream_id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut path = format!("/streams/{stream_id}/results?limit=1000");
        loop {
            let (status, page) = self.get(&path).await;
            assert_eq!(status, 200, "{page}");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next"].as_str() {
                Some(next) => {
                    path = format!("/streams/{stream_id}/results?limit=1000&after={next}")
                }
                None => return items,
            }
        }
    }

    pub async fn result_count(&self, stream_id: &str) -> usize {
        self.all_results(stream_id).await.len()
    }

    /// Wait (at most `within`) until a stream has at least `n` results; returns how many.
    pub async fn results_at_least(&self, stream_id: &str, n: usize, within: Duration) -> usize {
        eventually(within, &format!("{n} results of {stream_id}"), || async {
            let count = self.result_count(stream_id).await;
            if count >= n {
                Ok(count)
            } else {
                Err(format!("{count} results"))
            }
        })
        .await
    }

    /// Stop a stream, let the runs in flight land, and wait (at most `within`) for a reconciler
    /// pass that began after that; returns `GET /reconciler` of that pass.
    pub async fn stop_and_settle(&self, stream_id: &str, within: Duration) -> Value {
        let (status, body) = self
            .post(&format!("/streams/{stream_id}/stop"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["success"], true, "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let since = chrono::Utc::now();
        eventually(within, "a reconciler pass", || async {
            let (_, body) = self.get("/reconciler").await;
            let at = chrono::DateTime::parse_from_rfc3339(body["last_run_at"].as_str()?).ok()?;
            (at > since).then_some(body)
        })
        .await
    }

    /// A counter or gauge without labels from `GET /metrics` (0 when it was never set).
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.get_bytes("/metrics").await;
        assert_eq!(status, 200);
        String::from_utf8(body)
            .expect("UTF-8 metrics")
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse::<f64>().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// `GET /audit` once it is clean (no orphans, dangling or duplicate references, as many
    /// references as objects), within `within`; the last unclean one in the panic otherwise.
    pub async fn clean_audit(&self, within: Duration) -> Value {
        eventually(within, "a clean audit", || async {
            let (status, audit) = self.get("/audit").await;
            let clean = status == 200
                && audit["orphans"] == 0
                && audit["dangling"] == 0
                && audit["duplicates"] == 0
                && audit["objects"] == audit["references"];
            if clean {
                Ok(audit)
            } else {
                Err(audit.to_string())
            }
        })
        .await
    }

    /// Waits (at most `within`) until every stream of `ids` runs on `worker`.
    pub async fn all_running_on(&self, ids: &[String], worker: &str, within: Duration) {
        eventually(
            within,
            &format!("every stream running on {worker}"),
            || async {
                for id in ids {
                    let stream = self.stream(id).await;
                    if stream["status"] != "running" || stream["worker_id"] != worker {
                        return Err(format!(
                            "{id}: {} on {}",
                            stream["status"], stream["worker_id"]
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    /// `GET /workers` as (id → (connected, streams)).
    pub async fn workers(&self) -> BTreeMap<String, (bool, i64)> {
        let (status, body) = self.get("/workers").await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .expect("a list")
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().expect("id").to_owned(),
                    (
                        w["connected"].as_bool().expect("connected"),
                        w["streams"].as_i64().expect("streams"),
                    ),
                )
            })
            .collect()
    }
}
