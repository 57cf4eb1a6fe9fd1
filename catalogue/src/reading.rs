//! The shape of a reading, for storage and for the warehouse: named, typed columns, and a cell
//! per column that code can bind (or show) without knowing the source.

use serde_json::{Map, Value};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// UTF-8 text.
    Text,
    /// A 64-bit float.
    Real,
    /// A point in time, epoch milliseconds UTC.
    TimeMs,
}

/// One column of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column's name, in storage and in the API.
    pub name: &'static str,
    pub kind: ColumnKind,
    /// What it means, with its unit.
    pub doc: &'static str,
}

/// One value of a reading, borrowed from it; `None` where the source left it out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Text(Option<&'a str>),
    Real(Option<f64>),
    TimeMs(Option<i64>),
}

/// A reading as the API shows it: each column by name, times as RFC 3339 (`null` when absent).
pub fn to_json(columns: &[Column], cells: &[Cell<'_>]) -> Map<String, Value> {
    columns
        .iter()
        .zip(cells)
        .map(|(column, cell)| {
            let value = match *cell {
                Cell::Text(v) => v.map_or(Value::Null, Value::from),
                Cell::Real(v) => v.map_or(Value::Null, Value::from),
                Cell::TimeMs(v) => v
                    .and_then(common::rfc3339_ms)
                    .map_or(Value::Null, Value::from),
            };
            (column.name.to_owned(), value)
        })
        .collect()
}
