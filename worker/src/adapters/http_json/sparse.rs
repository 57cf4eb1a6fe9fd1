//! Reading a page without building its records: the page's JSON as a [`Value`], except that the
//! list at the records pointer is counted, not kept.
//!
//! A page is stored as the bytes that came; of its JSON the engine needs only the record count
//! and a few small values (the next cursor or URL, the total). Building the whole tree of a
//! 1,000-record page costs more than everything else the worker does with it (a `BTreeMap` and
//! strings per record: in a profile of the pages benchmark, allocation and tree building were
//! most of the worker's CPU) and about five times the page's size in memory for as long as the
//! page is in flight. So the list at the records pointer is walked with [`IgnoredAny`] (its
//! syntax still fully checked) and replaced by `null` in the returned tree; everything else is
//! kept as it was.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};

/// What was at the records pointer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AtRecords {
    /// Nothing: the pointer led nowhere.
    Missing,
    /// A list of this many records (not kept in the tree).
    List(u64),
    /// Something else, kept in the tree as well.
    Other(Value),
}

/// Parses `body`, counting instead of keeping the list at `pointer` (an RFC 6901 JSON pointer;
/// `""` is the whole document). Returns the tree with `null` where that list was, and what was
/// there.
pub(super) fn parse(body: &[u8], pointer: &str) -> Result<(Value, AtRecords), serde_json::Error> {
    let path: Vec<String> = if pointer.is_empty() {
        Vec::new()
    } else {
        pointer
            .strip_prefix('/')
            .unwrap_or(pointer)
            .split('/')
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .collect()
    };
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let tree = Walk {
        path: &path,
        found: &found,
    }
    .deserialize(&mut de)?;
    de.end()?;
    let at = match found.into_inner() {
        None => AtRecords::Missing,
        Some(Found::List(n)) => AtRecords::List(n),
        Some(Found::Other) => match pointer_of(&tree, &path) {
            Some(value) => AtRecords::Other(value.clone()),
            None => AtRecords::Missing,
        },
    };
    Ok((tree, at))
}

fn pointer_of<'v>(tree: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(tree, |value, token| match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[derive(Clone, Copy)]
enum Found {
    List(u64),
    Other,
}

/// A value on the way to the records pointer (`path` is what is left of it; empty: here).
struct Walk<'a> {
    path: &'a [String],
    found: &'a Cell<Option<Found>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Walk<'_> {
    /// A value that is not a list or an object: at the pointer, it is "something else".
    fn scalar(&self, value: Value) -> Value {
        if self.path.is_empty() {
            self.found.set(Some(Found::Other));
        }
        value
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(self.scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(self.scalar(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(self.scalar(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(self.scalar(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(self.scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(self.scalar(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        match self.path.split_first() {
            None => {
                // The records: counted, not kept.
                let mut n = 0u64;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                self.found.set(Some(Found::List(n)));
                Ok(Value::Null)
            }
            Some((token, rest)) => {
                let index = token.parse::<usize>().ok();
                let mut items = Vec::new();
                loop {
                    let item = if index == Some(items.len()) {
                        seq.next_element_seed(Walk {
                            path: rest,
                            found: self.found,
                        })?
                    } else {
                        seq.next_element::<Value>()?
                    };
                    match item {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                Ok(Value::Array(items))
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (token, rest) = match self.path.split_first() {
            Some((token, rest)) => (Some(token), rest),
            None => {
                self.found.set(Some(Found::Other));
                (None, self.path)
            }
        };
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = if token == Some(&key) {
                map.next_value_seed(Walk {
                    path: rest,
                    found: self.found,
                })?
            } else {
                map.next_value::<Value>()?
            };
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: &str, pointer: &str) -> (Value, AtRecords) {
        parse(body.as_bytes(), pointer).unwrap()
    }

    #[test]
    fn the_records_are_counted_and_the_rest_is_kept() {
        let body = r#"{"data": [{"id": 1}, {"id": 2}, 3], "meta": {"next": "abc", "total": 9}}"#;
        let (tree, at) = parsed(body, "/data");
        assert_eq!(at, AtRecords::List(3));
        assert_eq!(
            tree,
            json!({"data": null, "meta": {"next": "abc", "total": 9}})
        );
        let (_, at) = parsed(r#"{"data": []}"#, "/data");
        assert_eq!(at, AtRecords::List(0));
    }

    #[test]
    fn the_whole_document_and_deep_pointers_and_escapes() {
        let (tree, at) = parsed("[1, 2, 3, 4]", "");
        assert_eq!((tree, at), (Value::Null, AtRecords::List(4)));
        let body = r#"{"a/b": {"x~y": [{"items": [1, 2]}, {"items": [5]}]}}"#;
        let (tree, at) = parsed(body, "/a~1b/x~0y/1/items");
        assert_eq!(at, AtRecords::List(1));
        assert_eq!(
            tree,
            json!({"a/b": {"x~y": [{"items": [1, 2]}, {"items": null}]}})
        );
    }

    #[test]
    fn something_else_or_nothing_at_the_pointer_is_said() {
        let (_, at) = parsed(r#"{"data": {"rows": []}}"#, "/data");
        assert_eq!(at, AtRecords::Other(json!({"rows": []})));
        let (_, at) = parsed(r#"{"data": "none"}"#, "/data");
        assert_eq!(at, AtRecords::Other(json!("none")));
        let (_, at) = parsed(r#"{"data": null}"#, "/data");
        assert_eq!(at, AtRecords::Other(Value::Null));
        let (_, at) = parsed(r#"{"rows": []}"#, "/data");
        assert_eq!(at, AtRecords::Missing);
        let (_, at) = parsed(r#"{"data": [1]}"#, "/data/0/x");
        assert_eq!(at, AtRecords::Missing);
        let (_, at) = parsed(r#"{"n": 1}"#, "");
        assert_eq!(at, AtRecords::Other(json!({"n": 1})));
    }

    #[test]
    fn bad_json_is_an_error_even_inside_the_records() {
        assert!(parse(br#"{"data": [1, 2,]}"#, "/data").is_err());
        assert!(parse(br#"{"data": [1, {"a": }]}"#, "/data").is_err());
        assert!(parse(br#"{"data": [1]} trailing"#, "/data").is_err());
        assert!(parse(b"", "/data").is_err());
    }

    #[test]
    fn it_agrees_with_a_full_parse_outside_the_records() {
        let body = json!({"page": 3, "data": [{"id": 1, "v": 1.5}], "links": {"next": null},
                          "s": "é\"\\", "big": 18446744073709551615u64, "neg": -4});
        let text = body.to_string();
        let (tree, at) = parsed(&text, "/data");
        assert_eq!(at, AtRecords::List(1));
        let mut expected = body.clone();
        expected["data"] = Value::Null;
        assert_eq!(tree, expected);
    }
}
