//! Fetching a general JSON API (`HTTP_JSON`): the stream's [`Spec`] (catalogue) says what to
//! call; this engine makes the calls — templated query, headers and body, the auth, the pages
//! in order or in parallel, an async report job first when there is one — through the run's
//! call budget, and hands each page to the run's sink as soon as it arrives.
//!
//! - [`call`]: one call with its permit, auth, retries and classification.
//! - [`auth`]: the credentials, and the OAuth2 token cache.
//! - [`paging`]: the pages of one listing.
//! - [`job`]: submit, poll, then download.
//! - [`link`]: the `Link` header.
//! - [`sparse`]: a page's JSON without its records (counted, not built).
//!
//! The stream's secret goes only to the endpoint's own origin (and to the OAuth2 token URL):
//! a next-page, status or result URL on another host (a pre-signed download, say) is called
//! without it. No message, log line or stored value carries the secret.

mod auth;
mod call;
mod job;
pub mod link;
mod paging;
mod sparse;

use catalogue::http_json::{Spec, Template, TemplateValues};
use futures::future::BoxFuture;
use protocol::{FailureClass, StreamConfig};
use reqwest::Url;

use super::{Adapter, AdapterError, FetchRequest, Fetched, PagedAdapter, PagedRun, Retry, RunEnd};
use crate::runner::RetryPolicy;

pub use catalogue::http_json::NAME;

/// The `HTTP_JSON` adapter: the shared HTTP client, and the OAuth2 tokens of the streams that
/// use them.
pub struct HttpJson {
    client: reqwest::Client,
    tokens: auth::TokenCache,
    retry: RetryPolicy,
}

impl HttpJson {
    /// An adapter sending through `client` (which may carry a connect timeout, but should not
    /// carry a total timeout: the run's deadline bounds every call).
    pub fn new(client: reqwest::Client) -> Self {
        HttpJson {
            client,
            tokens: auth::TokenCache::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// The same adapter with another backoff between retries of transient errors.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    async fn run_spec(&self, run: PagedRun<'_>) -> Result<RunEnd, AdapterError> {
        let ctx = Ctx::new(self, &run)?;
        match &ctx.spec.job {
            None => {
                let first = ctx.data_request();
                ctx.fetch_pages(first).await
            }
            Some(job) => ctx.run_job(job).await,
        }
    }
}

impl Adapter for HttpJson {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Never called by the runner (an `HTTP_JSON` run is paged, [`Adapter::paged`]).
    fn fetch<'a>(&'a self, req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
        let _ = req;
        Box::pin(async {
            Err(AdapterError::new(
                FailureClass::Api,
                "HTTP_JSON runs are paged (many pages, jobs): run them through \
                 Runner::run, which drives the adapter's paged form",
                Retry::NextTick,
            ))
        })
    }

    fn paged(&self, cfg: &StreamConfig) -> Option<&dyn PagedAdapter> {
        let _ = cfg;
        Some(self)
    }
}

impl PagedAdapter for HttpJson {
    fn run<'a>(&'a self, run: PagedRun<'a>) -> BoxFuture<'a, Result<RunEnd, AdapterError>> {
        Box::pin(self.run_spec(run))
    }
}

/// One run: the spec, its templates parsed once, and the run's budget, sink and deadline.
struct Ctx<'r> {
    adapter: &'r HttpJson,
    run: &'r PagedRun<'r>,
    spec: Spec,
    endpoint: Url,
    params: Vec<(String, Template)>,
    headers: Vec<(String, Template)>,
}

/// The first page's request of a listing (the data request, or a job's result), before the
/// pagination's own parameters.
#[derive(Debug, Clone)]
struct FirstPage {
    method: catalogue::http_json::Method,
    url: Url,
    /// Add the stream's templated `params` to each page's query (the data request does; a
    /// result URL the API gave is called as given).
    with_params: bool,
    body: Option<serde_json::Value>,
}

impl<'r> Ctx<'r> {
    fn new(adapter: &'r HttpJson, run: &'r PagedRun<'r>) -> Result<Self, AdapterError> {
        let cfg = run.cfg;
        let stop =
            |message: String| AdapterError::new(FailureClass::Http, message, Retry::StopStream);
        let spec = Spec::parse(&cfg.source).map_err(|problems| {
            stop(format!(
                "the stream's HTTP_JSON spec is not valid: {}; fix the stream",
                problems.join("; ")
            ))
        })?;
        let endpoint = Url::parse(&cfg.endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                stop(format!(
                    "the endpoint {:?} is not an http(s) URL; fix the stream",
                    call::redact(&cfg.endpoint, &cfg.secret_key)
                ))
            })?;
        let mut problems = Vec::new();
        let mut parse = |field: String, text: &str| match Template::parse(text) {
            Ok(template) => Some(template),
            Err(problem) => {
                problems.push(format!("{field}: {problem}"));
                None
            }
        };
        let params = cfg
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), parse(format!("params.{k}"), v)?)))
            .collect();
        let headers = spec
            .request
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), parse(format!("request.headers.{k}"), v)?)))
            .collect();
        if !problems.is_empty() {
            return Err(stop(format!(
                "the stream's parameters are not valid: {}; fix the stream",
                problems.join("; ")
            )));
        }
        Ok(Ctx {
            adapter,
            run,
            spec,
            endpoint,
            params,
            headers,
        })
    }

    /// The values of the run's templates for a page at `page`, `offset` and `cursor`.
    fn values(&self, page: u64, offset: u64, cursor: Option<String>) -> TemplateValues {
        TemplateValues {
            window_start_ms: self.run.window.start_ms,
            window_end_ms: self.run.window.end_ms,
            slot_ms: self.run.slot_ms,
            page,
            offset,
            cursor,
        }
    }

    /// The stream's own data request: the endpoint, its method and body.
    fn data_request(&self) -> FirstPage {
        FirstPage {
            method: self.spec.request.method,
            url: self.endpoint.clone(),
            with_params: true,
            body: self.spec.request.body.clone(),
        }
    }
}
