//! An async report job: submit it, poll its status until it is done (or failed, or past its
//! deadline: then it is submitted again, once), then download its result as a listing of pages.
//! Each state is reported to the run's record when it changes.

use catalogue::http_json::{render_json, Job, Method, Template};
use protocol::{FailureClass, JobState};
use reqwest::Url;
use serde_json::Value;
use tokio::time::{Duration, Instant};

use super::call::{set_query, Call, CallKind};
use super::{Ctx, FirstPage};
use crate::adapters::{AdapterError, Retry, RunEnd};

/// How one submission ended.
enum Polled {
    /// Done: the result is at this URL.
    Done(Url),
    /// Its deadline passed first.
    Late,
}

impl Ctx<'_> {
    /// Submit, wait, download.
    pub(super) async fn run_job(&self, job: &Job) -> Result<RunEnd, AdapterError> {
        let mut state = None;
        let mut report = |next: JobState| {
            if state != Some(next) {
                state = Some(next);
                self.run.sink.job_state(next);
            }
        };
        let mut result = None;
        for submission in 0..2 {
            if submission > 0 {
                report(JobState::Resubmitted);
            }
            let (status_url, queued) = self.submit(job).await?;
            if submission == 0 {
                report(JobState::Queued);
            }
            match self
                .poll(job, &status_url, queued.as_deref(), &mut report)
                .await?
            {
                Polled::Done(url) => {
                    result = Some(url);
                    break;
                }
                Polled::Late => continue,
            }
        }
        let Some(result_url) = result else {
            return Err(AdapterError::new(
                FailureClass::Timeout,
                format!(
                    "the report job was not done within job.deadline ({} ms), submitted twice",
                    job.deadline
                ),
                Retry::NextTick,
            ));
        };
        let end = self
            .fetch_pages(FirstPage {
                method: Method::Get,
                url: result_url,
                with_params: false,
                body: None,
            })
            .await?;
        report(JobState::Downloaded);
        Ok(end)
    }

    /// Submits the job; answers the URL of its status, and the status the submission's answer
    /// gave (at `status_pointer`), if any: the API's word for "queued".
    async fn submit(&self, job: &Job) -> Result<(Url, Option<String>), AdapterError> {
        let submit = &job.submit;
        let values = self.values(1, 0, None);
        let stop =
            |message: String| AdapterError::new(FailureClass::Http, message, Retry::StopStream);
        let mut url = match &submit.url {
            None => self.endpoint.clone(),
            Some(text) => {
                let text = Template::parse(text)
                    .map_err(|problem| stop(format!("job.submit.url: {problem}; fix the stream")))?
                    .render(&values);
                Url::parse(&text).map_err(|err| {
                    stop(format!(
                        "job.submit.url {:?} is not a URL ({err}); fix the stream",
                        self.excerpt(text.as_bytes())
                    ))
                })?
            }
        };
        // The stream's params (its window, typically) go with the submission.
        let query: Vec<(String, String)> = self
            .params
            .iter()
            .map(|(name, template)| (name.clone(), template.render(&values)))
            .collect();
        set_query(&mut url, &query);
        let mut headers = self.render_headers(&self.headers, &values);
        for (name, text) in &submit.headers {
            let value = Template::parse(text)
                .map_err(|problem| {
                    stop(format!(
                        "job.submit.headers.{name}: {problem}; fix the stream"
                    ))
                })?
                .render(&values);
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.clone(), value));
        }
        let body =
            match &submit.body {
                None => None,
                Some(body) => Some(render_json(body, &values).map_err(|problem| {
                    stop(format!("job.submit.body: {problem}; fix the stream"))
                })?),
            };
        let call = Call {
            what: "the job submission".to_string(),
            method: submit.method,
            url,
            headers,
            body,
            form: None,
            kind: CallKind::Api,
        };
        let answer = self.call(&call).await?;
        let json = self.json_of(&answer.url, &answer.body)?;
        let status_url = self.url_at(
            &json,
            &job.status_url_pointer,
            "job.status_url_pointer",
            &answer.url,
        )?;
        Ok((
            status_url,
            json.pointer(&job.status_pointer).and_then(status_text),
        ))
    }

    /// Polls the status every `poll_interval` until it is done, failed, or past the deadline.
    /// Any other status is `processing`, but for `queued` (the submission's own status), which
    /// leaves the job where it was.
    async fn poll(
        &self,
        job: &Job,
        status_url: &Url,
        queued: Option<&str>,
        report: &mut impl FnMut(JobState),
    ) -> Result<Polled, AdapterError> {
        let late_at = Instant::now() + Duration::from_millis(job.deadline);
        let values = self.values(1, 0, None);
        loop {
            let wake = Instant::now() + Duration::from_millis(job.poll_interval);
            if wake > late_at {
                tokio::time::sleep_until(late_at).await;
                return Ok(Polled::Late);
            }
            tokio::time::sleep_until(wake).await;
            let call = Call {
                what: "a job status poll".to_string(),
                method: Method::Get,
                url: status_url.clone(),
                headers: self.render_headers(&self.headers, &values),
                body: None,
                form: None,
                kind: CallKind::Api,
            };
            let answer = self.call(&call).await?;
            let json = self.json_of(&answer.url, &answer.body)?;
            let status = match json.pointer(&job.status_pointer).and_then(status_text) {
                Some(status) => status,
                None => {
                    return Err(self.invalid(
                        &answer.url,
                        format!(
                            "has no status at job.status_pointer ({}): {}",
                            job.status_pointer,
                            self.excerpt(&answer.body)
                        ),
                    ))
                }
            };
            if job.done.contains(&status) {
                report(JobState::Success);
                return self
                    .url_at(
                        &json,
                        &job.result_url_pointer,
                        "job.result_url_pointer",
                        &answer.url,
                    )
                    .map(Polled::Done);
            }
            if job.failed.contains(&status) {
                report(JobState::Failed);
                return Err(AdapterError::new(
                    FailureClass::Api,
                    format!(
                        "the report job failed: status {status:?} at {}",
                        self.shown(&answer.url)
                    ),
                    Retry::NextTick,
                ));
            }
            if queued != Some(status.as_str()) {
                report(JobState::Processing);
            }
        }
    }

    /// The body as JSON, or `invalid_body`.
    fn json_of(&self, url: &Url, body: &[u8]) -> Result<Value, AdapterError> {
        serde_json::from_slice(body).map_err(|err| {
            self.invalid(
                url,
                format!(
                    "answered with a body that is not JSON ({err}): {}",
                    self.excerpt(body)
                ),
            )
        })
    }

    /// The URL at `pointer` in `json`, resolved against `base` (the answer's own URL).
    fn url_at(
        &self,
        json: &Value,
        pointer: &str,
        field: &str,
        base: &Url,
    ) -> Result<Url, AdapterError> {
        let text = json
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| self.invalid(base, format!("has no URL at {field} ({pointer})")))?;
        base.join(text.trim()).map_err(|err| {
            self.invalid(
                base,
                format!("has no usable URL at {field} ({pointer}): {err}"),
            )
        })
    }
}

/// A status as text: a string, or a number or boolean written out.
fn status_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
