//! The adapter catalogue: every source a stream can name, in one place both services read.
//!
//! For each source: its name, the rules its `params` must follow (the supervisor checks them at
//! `POST /streams`, so a bad stream is refused before any worker sees it), the columns of the
//! reading it yields (the warehouse's schema), and the version of the parser that turns a raw
//! object into that reading (stored with every reading, so rows can be told apart and re-parsed
//! when the parser changes). How to *fetch* from a source is the worker's business
//! (`worker/src/adapters/`); what the data *is* lives here.
//!
//! A new source is a module here (name, rules, parser) plus a line in [`SOURCES`], and its fetch
//! in the worker's adapters: nothing else in either service names a source.

pub mod http_json;
pub mod iqair;
pub mod push;
pub mod reading;

use serde_json::{Map, Value};

pub use reading::{Cell, Column, ColumnKind};

/// A source a stream can name in `adapter`.
pub trait Source: Sync {
    /// The name streams use, e.g. `IQAIR_DAILY`.
    fn name(&self) -> &'static str;

    /// Every problem with a stream's `params` for this source, each a sentence naming the
    /// parameter (empty: the parameters are fine).
    fn check_params(&self, params: &Map<String, Value>) -> Vec<String>;

    /// Every problem with the stream's description of what to call (the fields of
    /// [`http_json::FIELDS`] the user gave; absent fields are absent), each a sentence naming
    /// the field. By default a source takes none of them, so each one given is a problem.
    fn check_source(&self, source: &Map<String, Value>) -> Vec<String> {
        source
            .keys()
            .map(|field| {
                format!(
                    "adapter {} takes no `{field}` (only {} does); remove it",
                    self.name(),
                    http_json::NAME
                )
            })
            .collect()
    }

    /// Workers fetch it (every source but `PUSH`, whose data is sent to the supervisor).
    fn is_fetched(&self) -> bool {
        true
    }

    /// The version of the parser that turns this source's raw objects into readings. Bumped
    /// whenever the same bytes would parse differently.
    fn parser_version(&self) -> u32;

    /// The columns of a reading, in storage order; empty when the source keeps raw objects
    /// only.
    fn reading_columns(&self) -> &'static [Column];

    /// The [`ColumnKind::Real`] columns whose values the source defines as whole numbers (stored
    /// as floats, since the API's numbers drift between `17` and `17.0`; typed as integers in
    /// the warehouse tables). None by default.
    fn integer_columns(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Every source of this build.
pub static SOURCES: &[&dyn Source] = &[&iqair::IqAir, &http_json::HttpJson, &push::Push];

/// The source called `name` (exact, case-sensitive), if this build has it.
pub fn source(name: &str) -> Option<&'static dyn Source> {
    SOURCES.iter().copied().find(|s| s.name() == name)
}

/// The names of the sources workers fetch, in catalogue order.
pub fn fetched_names() -> Vec<&'static str> {
    SOURCES
        .iter()
        .filter(|s| s.is_fetched())
        .map(|s| s.name())
        .collect()
}

/// Every source name, in catalogue order.
pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|s| s.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exact_and_unique() {
        assert_eq!(names(), ["IQAIR_DAILY", "HTTP_JSON", "PUSH"]);
        assert!(source("PUSH").is_some());
        assert_eq!(fetched_names(), ["IQAIR_DAILY", "HTTP_JSON"]);
        assert!(source("IQAIR_DAILY").is_some());
        assert!(source("HTTP_JSON").is_some());
        assert!(source("http_json").is_none());
        assert!(source("iqair_daily").is_none());
        assert!(source("OPENAQ").is_none());
        assert!(source("").is_none());
        let mut unique = names();
        unique.dedup();
        assert_eq!(unique.len(), SOURCES.len());
    }

    #[test]
    fn only_http_json_takes_a_source_spec() {
        let given: Map<String, Value> =
            serde_json::from_str(r#"{"request": {"method": "GET"}, "max_pages": 3}"#).unwrap();
        let iqair = source("IQAIR_DAILY").unwrap();
        assert_eq!(
            iqair.check_source(&given),
            [
                "adapter IQAIR_DAILY takes no `max_pages` (only HTTP_JSON does); remove it",
                "adapter IQAIR_DAILY takes no `request` (only HTTP_JSON does); remove it",
            ]
        );
        assert!(iqair.check_source(&Map::new()).is_empty());
        let http = source("HTTP_JSON").unwrap();
        assert!(http.check_source(&given).is_empty());
        assert!(http.reading_columns().is_empty());
        assert_eq!(http.parser_version(), 1);
    }
}
