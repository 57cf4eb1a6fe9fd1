//! The shape of a reading, for storage and for the warehouse: named, typed columns, and a cell
//! per column that code can bind without knowing the source.

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
