//! The pages of one listing (the data request, or an async job's result), as the stream's
//! `pagination` says: numbered pages (`page`, `offset`) one after another, or all at once when
//! the first page tells how many there are; `cursor`, `link_header` and `next_url` one after
//! another. Each page goes to the sink as soon as it is read; at most `page_concurrency` pages
//! are in memory at once.

use bytes::Bytes;
use catalogue::http_json::{render_json, Pagination, Template};
use futures::{StreamExt, TryStreamExt};
use protocol::FailureClass;
use reqwest::Url;
use serde_json::Value;

use super::call::{set_query, Answer, Call, CallKind};
use super::link;
use super::sparse::{self, AtRecords};
use super::{Ctx, FirstPage};
use crate::adapters::{AdapterError, Retry, RunEnd};

/// Where a page is in its listing.
#[derive(Debug, Clone, Default)]
struct Position {
    /// From 0, in request order: the page number stored.
    index: u32,
    /// Its number as sent (`{{page}}`).
    page: u64,
    /// Its offset (`{{offset}}`).
    offset: u64,
    /// The cursor it is fetched with (`{{cursor}}`).
    cursor: Option<String>,
}

/// A page read.
struct Page {
    body: Bytes,
    json: Value,
    /// Records in it, where the spec says where they are (or the page is an array).
    records: Option<u64>,
    /// It holds no records: the listing has ended.
    empty: bool,
    url: Url,
    /// The `Link` header's `rel="next"` target, as written.
    link_next: Option<String>,
}

impl Ctx<'_> {
    /// Fetches every page of the listing that starts at `first`, storing each.
    pub(super) async fn fetch_pages(&self, first: FirstPage) -> Result<RunEnd, AdapterError> {
        match self.spec.pagination.clone() {
            Pagination::None => {
                let page = self.fetch_page(&first, &self.position(0, None)).await?;
                self.store(0, page).await?;
                Ok(RunEnd::default())
            }
            Pagination::Page {
                total_pages_pointer: total,
                ..
            } => self.numbered(&first, total.as_deref(), None).await,
            Pagination::Offset {
                total_pointer: total,
                limit,
                ..
            } => self.numbered(&first, total.as_deref(), Some(limit)).await,
            Pagination::Cursor { next_pointer, .. } => self.by_cursor(&first, &next_pointer).await,
            Pagination::LinkHeader => self.by_next_url(&first, None).await,
            Pagination::NextUrl { next_pointer } => {
                self.by_next_url(&first, Some(&next_pointer)).await
            }
        }
    }

    /// Page `index`'s position (numbers and offsets follow the pagination's).
    fn position(&self, index: u32, cursor: Option<String>) -> Position {
        let (page, offset) = match &self.spec.pagination {
            Pagination::Page { start, .. } => (start + u64::from(index), 0),
            Pagination::Offset { limit, .. } => (
                u64::from(index) + 1,
                u64::from(index).saturating_mul(*limit),
            ),
            _ => (u64::from(index) + 1, 0),
        };
        Position {
            index,
            page,
            offset,
            cursor,
        }
    }

    /// `page`, `offset`: the first page, then the rest — all at once when the first page says
    /// how many there are (`total` points at the page count, or for offsets (`limit` given)
    /// the record count), else one after another until an empty page.
    async fn numbered(
        &self,
        first: &FirstPage,
        total: Option<&str>,
        limit: Option<u64>,
    ) -> Result<RunEnd, AdapterError> {
        let max_pages = self.spec.max_pages;
        let page = self.fetch_page(first, &self.position(0, None)).await?;
        let announced = total.and_then(|pointer| page.json.pointer(pointer).and_then(whole_number));
        let pages_total = match (announced, limit) {
            (Some(records), Some(limit)) => Some(records.div_ceil(limit)),
            (count, _) => count,
        };
        let empty = page.empty;
        self.store(0, page).await?;
        if empty {
            return Ok(RunEnd::default());
        }
        if let Some(pages_total) = pages_total {
            let fetched = pages_total.min(u64::from(max_pages)) as u32;
            futures::stream::iter(1..fetched)
                .map(|index| async move {
                    let page = self.fetch_page(first, &self.position(index, None)).await?;
                    self.store(index, page).await
                })
                .buffer_unordered(self.spec.page_concurrency as usize)
                .try_collect::<()>()
                .await?;
            return Ok(self.end(pages_total > u64::from(max_pages)));
        }
        let mut index = 1u32;
        let mut last_records = None;
        while index < max_pages {
            let page = self.fetch_page(first, &self.position(index, None)).await?;
            if page.empty {
                return Ok(RunEnd::default());
            }
            last_records = page.records;
            self.store(index, page).await?;
            index += 1;
        }
        // The cap: a short last page (fewer records than a full one) was the end anyway.
        let size = match &self.spec.pagination {
            Pagination::Page { size, .. } => *size,
            _ => limit,
        };
        let more = match (last_records, size) {
            (Some(records), Some(size)) => records >= size,
            _ => true,
        };
        Ok(self.end(more))
    }

    /// `cursor`: the next page's cursor is in this page; none (null, absent, empty) ends it.
    async fn by_cursor(&self, first: &FirstPage, pointer: &str) -> Result<RunEnd, AdapterError> {
        let mut cursor: Option<String> = None;
        let mut index = 0u32;
        loop {
            let page = self
                .fetch_page(first, &self.position(index, cursor.clone()))
                .await?;
            if page.empty && index > 0 {
                return Ok(RunEnd::default());
            }
            let next = page.json.pointer(pointer).and_then(cursor_text);
            if next.is_some() && next == cursor {
                return Err(self.invalid(
                    &page.url,
                    format!("gave the same next cursor again (at {pointer}); stopping there"),
                ));
            }
            let empty = page.empty;
            self.store(index, page).await?;
            index += 1;
            match next {
                None => return Ok(RunEnd::default()),
                Some(_) if empty => return Ok(RunEnd::default()),
                Some(_) if index >= self.spec.max_pages => return Ok(self.end(true)),
                Some(next) => cursor = Some(next),
            }
        }
    }

    /// `link_header` (`pointer` `None`) or `next_url`: the next page's URL is in this page's
    /// `Link` header or body, relative to this page's URL; none ends it.
    async fn by_next_url(
        &self,
        first: &FirstPage,
        pointer: Option<&str>,
    ) -> Result<RunEnd, AdapterError> {
        let mut request = first.clone();
        let mut index = 0u32;
        loop {
            let position = self.position(index, None);
            let page = self.fetch_page(&request, &position).await?;
            if page.empty && index > 0 {
                return Ok(RunEnd::default());
            }
            let target = match pointer {
                Some(pointer) => page
                    .json
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
                    .map(str::to_owned),
                None => page.link_next.clone(),
            };
            let next = match &target {
                None => None,
                Some(target) => Some(page.url.join(target.trim()).map_err(|err| {
                    self.invalid(
                        &page.url,
                        format!("gave a next page URL that is not one ({err})"),
                    )
                })?),
            };
            if next.as_ref() == Some(&page.url) {
                return Err(self.invalid(
                    &page.url,
                    "gave its own URL as the next page's; stopping there".to_string(),
                ));
            }
            let empty = page.empty;
            self.store(index, page).await?;
            index += 1;
            match next {
                None => return Ok(RunEnd::default()),
                Some(_) if empty => return Ok(RunEnd::default()),
                Some(_) if index >= self.spec.max_pages => return Ok(self.end(true)),
                Some(next) => {
                    // The URL the API gave is followed as given (it carries the query).
                    request = FirstPage {
                        url: next,
                        with_params: false,
                        ..request
                    };
                }
            }
        }
    }

    fn end(&self, more: bool) -> RunEnd {
        if more {
            RunEnd {
                truncated: true,
                note: Some(format!(
                    "max_pages ({}) reached with more to fetch",
                    self.spec.max_pages
                )),
            }
        } else {
            RunEnd::default()
        }
    }

    async fn store(&self, index: u32, page: Page) -> Result<(), AdapterError> {
        self.run
            .sink
            .store(index, page.body, page.records, None)
            .await
    }

    /// The call for the page at `position` of the listing starting at `first`.
    fn page_call(&self, first: &FirstPage, position: &Position) -> Result<Call, AdapterError> {
        let values = self.values(position.page, position.offset, position.cursor.clone());
        let mut url = first.url.clone();
        let mut query: Vec<(String, String)> = Vec::new();
        if first.with_params {
            query.extend(
                self.params
                    .iter()
                    .map(|(name, template)| (name.clone(), template.render(&values))),
            );
        }
        match &self.spec.pagination {
            Pagination::Page {
                param,
                size_param,
                size,
                ..
            } => {
                query.push((param.clone(), position.page.to_string()));
                if let (Some(name), Some(size)) = (size_param, size) {
                    query.push((name.clone(), size.to_string()));
                }
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
                ..
            } => {
                query.push((param.clone(), position.offset.to_string()));
                query.push((limit_param.clone(), limit.to_string()));
            }
            Pagination::Cursor { param, .. } => {
                if let Some(cursor) = &position.cursor {
                    query.push((param.clone(), cursor.clone()));
                }
            }
            Pagination::None | Pagination::LinkHeader | Pagination::NextUrl { .. } => {}
        }
        set_query(&mut url, &query);
        let body = match &first.body {
            Some(body) => Some(render_json(body, &values).map_err(|problem| {
                AdapterError::new(
                    FailureClass::Http,
                    format!("request.body: {problem}; fix the stream"),
                    Retry::StopStream,
                )
            })?),
            None => None,
        };
        Ok(Call {
            what: format!("page {}", position.index),
            method: first.method,
            url,
            headers: self.render_headers(&self.headers, &values),
            body,
            form: None,
            kind: CallKind::Api,
        })
    }

    pub(super) fn render_headers(
        &self,
        headers: &[(String, Template)],
        values: &catalogue::http_json::TemplateValues,
    ) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, template)| (name.clone(), template.render(values)))
            .collect()
    }

    async fn fetch_page(
        &self,
        first: &FirstPage,
        position: &Position,
    ) -> Result<Page, AdapterError> {
        let call = self.page_call(first, position)?;
        let answer = self.call(&call).await?;
        self.read_page(answer)
    }

    /// A page's JSON, its records and its next link; an answer that is not JSON, or has no
    /// array where the records should be, is `invalid_body`.
    fn read_page(&self, answer: Answer) -> Result<Page, AdapterError> {
        let not_json = |err: serde_json::Error| {
            self.invalid(
                &answer.url,
                format!(
                    "answered with a body that is not JSON ({err}): {}",
                    self.excerpt(&answer.body)
                ),
            )
        };
        let records_at = self.spec.records.as_deref().unwrap_or("");
        let (json, at) = if self.records_apart() {
            sparse::parse(&answer.body, records_at).map_err(not_json)?
        } else {
            // A pagination pointer inside the records: the page is kept whole.
            let json: Value = serde_json::from_slice(&answer.body).map_err(not_json)?;
            let at = match json.pointer(records_at) {
                None => AtRecords::Missing,
                Some(Value::Array(items)) => AtRecords::List(items.len() as u64),
                Some(other) => AtRecords::Other(other.clone()),
            };
            (json, at)
        };
        let records = match (&self.spec.records, at) {
            (_, AtRecords::List(n)) => Some(n),
            (Some(pointer), AtRecords::Other(other)) => {
                return Err(self.invalid(
                    &answer.url,
                    format!(
                        "has {} at records ({pointer}), not the list of records",
                        kind_of(&other)
                    ),
                ))
            }
            (Some(pointer), AtRecords::Missing) => {
                return Err(self.invalid(&answer.url, format!("has nothing at records ({pointer})")))
            }
            // No records pointer and a page that is not a list: its records are not counted.
            (None, _) => None,
        };
        let link_next = link::next_target(
            answer
                .headers
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        Ok(Page {
            empty: records == Some(0),
            records,
            json,
            link_next,
            url: answer.url,
            body: answer.body,
        })
    }

    /// No pointer of the pagination lies inside the records, so a page's records need not be
    /// kept to read it ([`sparse`]).
    fn records_apart(&self) -> bool {
        let records = self.spec.records.as_deref().unwrap_or("");
        let pointer = match &self.spec.pagination {
            Pagination::Page {
                total_pages_pointer,
                ..
            } => total_pages_pointer.as_deref(),
            Pagination::Offset { total_pointer, .. } => total_pointer.as_deref(),
            Pagination::Cursor { next_pointer, .. } | Pagination::NextUrl { next_pointer } => {
                Some(next_pointer.as_str())
            }
            _ => None,
        };
        // Inside: the records pointer itself, or one of its children (no allocation per page).
        pointer.is_none_or(|p| {
            !p.strip_prefix(records)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// An answer from `url` that is not what the spec describes.
    pub(super) fn invalid(&self, url: &Url, what: String) -> AdapterError {
        AdapterError::new(
            FailureClass::InvalidBody,
            format!("{} {what}", self.shown(url)),
            Retry::NextTick,
        )
    }
}

/// A count: a whole number, or a string of one.
fn whole_number(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// A cursor: a non-empty string, or a number.
fn cursor_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
