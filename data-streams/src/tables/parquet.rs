//! One day's readings as a Parquet file: the Arrow schema derived from the catalogue (a new
//! source needs no code here), and a writer that takes pages of [`TableRow`]s and gives back the
//! file's bytes.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use catalogue::{ColumnKind, Source};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::db::{CellValue, TableRow};

/// Rows per row group: a reader skips or reads a group at a time; at ~100 bytes a row
/// compressed, a group is a few MiB.
pub const ROW_GROUP_ROWS: usize = 65_536;

/// How a catalogue column is typed in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Real,
    /// A `Real` the source defines as a whole number ([`Source::integer_columns`]).
    Integer,
    TimeMs,
}

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The file's columns for `source`: `stream_id` (UUID text), `ts`, `result_id` (UUID text),
/// `parser_version`, then the source's reading columns in catalogue order (text as UTF-8, reals
/// as doubles, whole numbers as 32-bit integers, times as UTC millisecond timestamps). The
/// partition columns (`adapter`, `dt`) are in the path, not in the file.
pub fn schema(source: &dyn Source) -> SchemaRef {
    let mut fields = vec![
        Field::new("stream_id", DataType::Utf8, false),
        Field::new("ts", utc_ms(), false),
        Field::new("result_id", DataType::Utf8, false),
        Field::new("parser_version", DataType::Int64, false),
    ];
    for (column, kind) in source.reading_columns().iter().zip(kinds(source)) {
        let data_type = match kind {
            Kind::Text => DataType::Utf8,
            Kind::Real => DataType::Float64,
            Kind::Integer => DataType::Int32,
            Kind::TimeMs => utc_ms(),
        };
        fields.push(Field::new(column.name, data_type, true));
    }
    Arc::new(Schema::new(fields))
}

fn kinds(source: &dyn Source) -> Vec<Kind> {
    let integers = source.integer_columns();
    source
        .reading_columns()
        .iter()
        .map(|column| match column.kind {
            ColumnKind::Text => Kind::Text,
            ColumnKind::Real if integers.contains(&column.name) => Kind::Integer,
            ColumnKind::Real => Kind::Real,
            ColumnKind::TimeMs => Kind::TimeMs,
        })
        .collect()
}

/// A whole number stored as a float, as an `i32`: rounded (the API sends `17` or `17.0`);
/// `None` when absent, not finite or out of range.
fn whole(value: Option<f64>) -> Option<i32> {
    let value = value?.round();
    (value.is_finite() && value >= f64::from(i32::MIN) && value <= f64::from(i32::MAX))
        .then_some(value as i32)
}

/// A Parquet file being written in memory: pages of rows in, the file's bytes out.
pub struct DayFile {
    schema: SchemaRef,
    kinds: Vec<Kind>,
    writer: ArrowWriter<Vec<u8>>,
    /// Rows written so far.
    pub rows: i64,
    /// The distinct parser versions of those rows.
    pub parser_versions: BTreeSet<i64>,
    /// The sum of their parser versions (the watermark a re-parse moves).
    pub parser_version_sum: i64,
}

impl DayFile {
    /// An empty file of `source`'s schema: Snappy pages, [`ROW_GROUP_ROWS`] per row group.
    pub fn new(source: &dyn Source) -> Result<DayFile, ParquetError> {
        let schema = schema(source);
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(properties))?;
        Ok(DayFile {
            schema,
            kinds: kinds(source),
            writer,
            rows: 0,
            parser_versions: BTreeSet::new(),
            parser_version_sum: 0,
        })
    }

    /// Appends `rows` (in the order given) as one record batch.
    pub fn write(&mut self, rows: &[&TableRow]) -> Result<(), ParquetError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let mut stream_id = StringBuilder::with_capacity(n, n * 36);
        let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut result_id = StringBuilder::with_capacity(n, n * 36);
        let mut parser_version = Int64Builder::with_capacity(n);
        for row in rows {
            stream_id.append_value(row.stream_id.hyphenated().to_string());
            ts.append_value(row.ts);
            result_id.append_value(row.result_id.hyphenated().to_string());
            parser_version.append_value(row.parser_version);
            self.parser_versions.insert(row.parser_version);
            self.parser_version_sum += row.parser_version;
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(stream_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(result_id.finish()),
            Arc::new(parser_version.finish()),
        ];
        for (i, kind) in self.kinds.iter().enumerate() {
            let cell = |row: &TableRow| row.cells.get(i).cloned();
            let array: ArrayRef = match kind {
                Kind::Text => {
                    let mut b = StringBuilder::with_capacity(n, n * 8);
                    for row in rows {
                        match cell(row) {
                            Some(CellValue::Text(Some(v))) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Real => {
                    let mut b = Float64Builder::with_capacity(n);
                    for row in rows {
                        match cell(row) {
                            Some(CellValue::Real(v)) => b.append_option(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::Integer => {
                    let mut b = Int32Builder::with_capacity(n);
                    for row in rows {
                        match cell(row) {
                            Some(CellValue::Real(v)) => b.append_option(whole(v)),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
                Kind::TimeMs => {
                    let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
                    for row in rows {
                        match cell(row) {
                            Some(CellValue::TimeMs(v)) => b.append_option(v),
                            _ => b.append_null(),
                        }
                    }
                    Arc::new(b.finish())
                }
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        self.rows += i64::try_from(n).unwrap_or(i64::MAX);
        Ok(())
    }

    /// The whole file (footer included).
    pub fn finish(self) -> Result<Vec<u8>, ParquetError> {
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_follows_the_catalogue() {
        let source = catalogue::source("IQAIR_DAILY").expect("in the catalogue");
        let schema = schema(source);
        let field = |name: &str| {
            schema
                .field_with_name(name)
                .expect(name)
                .data_type()
                .clone()
        };
        assert_eq!(field("ts"), utc_ms());
        assert_eq!(field("weather_ts"), utc_ms());
        assert_eq!(field("aqius"), DataType::Int32);
        assert_eq!(field("aqicn"), DataType::Int32);
        assert_eq!(field("tp"), DataType::Float64);
        assert_eq!(field("city"), DataType::Utf8);
        assert_eq!(schema.fields().len(), 4 + source.reading_columns().len());
    }

    #[test]
    fn whole_numbers_round_and_refuse_what_does_not_fit() {
        assert_eq!(whole(Some(17.0)), Some(17));
        assert_eq!(whole(Some(16.6)), Some(17));
        assert_eq!(whole(None), None);
        assert_eq!(whole(Some(f64::NAN)), None);
        assert_eq!(whole(Some(1e12)), None);
    }
}
