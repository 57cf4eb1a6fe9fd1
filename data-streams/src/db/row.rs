//! [`StoredRow`]: reading our rows' columns the same way from either backend, with the trait
//! bounds that takes written once (the `FromRow` impls of [`crate::stream::StreamRow`] and
//! [`super::WorkerRow`] use it).

use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

/// A row of either backend, read column by column.
pub(crate) trait StoredRow<'r> {
    fn text(&'r self, column: &'r str) -> Result<String, sqlx::Error>;
    fn text_or_null(&'r self, column: &'r str) -> Result<Option<String>, sqlx::Error>;
    fn int(&'r self, column: &'r str) -> Result<i64, sqlx::Error>;
    fn int_or_null(&'r self, column: &'r str) -> Result<Option<i64>, sqlx::Error>;
    fn flag(&'r self, column: &'r str) -> Result<bool, sqlx::Error>;
    fn uuid(&'r self, column: &'r str) -> Result<Uuid, sqlx::Error>;
    fn uuid_or_null(&'r self, column: &'r str) -> Result<Option<Uuid>, sqlx::Error>;
}

impl<'r, R> StoredRow<'r> for R
where
    R: Row,
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    Uuid: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&'r self, column: &'r str) -> Result<String, sqlx::Error> {
        self.try_get(column)
    }

    fn text_or_null(&'r self, column: &'r str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }

    fn int(&'r self, column: &'r str) -> Result<i64, sqlx::Error> {
        self.try_get(column)
    }

    fn int_or_null(&'r self, column: &'r str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }

    fn flag(&'r self, column: &'r str) -> Result<bool, sqlx::Error> {
        self.try_get(column)
    }

    fn uuid(&'r self, column: &'r str) -> Result<Uuid, sqlx::Error> {
        self.try_get(column)
    }

    fn uuid_or_null(&'r self, column: &'r str) -> Result<Option<Uuid>, sqlx::Error> {
        self.try_get(column)
    }
}
