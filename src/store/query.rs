//! Listing objects: filters (indexed fields through the index, any other
//! field by scanning), sorting, and paging by offset or cursor.

use std::collections::BTreeSet;

use base64::Engine as _;
use rocksdb::{Direction, IteratorMode, DB};
use serde_json::Value;

use super::keys::*;
use super::object::indexed_fields;
use super::{cf, Rejection, StoreError};
use crate::error_code as code;
use crate::model::ObjectKind;

/// Most objects one page may hold.
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// `field=value` pairs, all of which must match. `field` is an indexed
    /// field of the kind, or a dotted path into the object (`params.rack`).
    pub filters: Vec<(String, String)>,
    /// A dotted path to sort by; key order when absent.
    pub sort: Option<String>,
    pub descending: bool,
    pub limit: Option<usize>,
    pub offset: usize,
    /// Resume after the last key of a previous page (key order only).
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Value>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A filter or sort names an indexed field or a dotted path whose first
/// segment is one of the kind's fields: anything else is a typo that would
/// silently match nothing (or sort by nothing).
fn check_field(kind: ObjectKind, field: &str, what: &str) -> Result<(), StoreError> {
    let first = field.split('.').next().unwrap_or_default();
    let known =
        indexed_fields(kind).contains(&field) || kind.field_names().iter().any(|f| f == first);
    if known {
        return Ok(());
    }
    let mut fields: Vec<&str> = kind.field_names().iter().map(String::as_str).collect();
    fields.extend(indexed_fields(kind));
    fields.sort();
    fields.dedup();
    Err(Rejection::new(
        code::INVALID_QUERY,
        format!(
            "{} have no field {first:?} to {what} by (fields: {})",
            kind.as_str(),
            fields.join(", ")
        ),
    )
    .at(field.to_string())
    .into())
}

pub fn list(db: &DB, kind: ObjectKind, query: &ListQuery) -> Result<Page, StoreError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Rejection::new(
            code::INVALID_QUERY,
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )
        .at("limit")
        .into());
    }
    if query.cursor.is_some() && (query.sort.is_some() || query.offset > 0 || query.descending) {
        return Err(Rejection::new(
            code::INVALID_QUERY,
            "a cursor pages in key order; it cannot be combined with sort, desc or offset",
        )
        .at("cursor")
        .into());
    }
    for (field, _) in &query.filters {
        check_field(kind, field, "filter")?;
    }
    if let Some(sort) = &query.sort {
        check_field(kind, sort, "sort")?;
    }
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor)?),
        None => None,
    };

    let indexed = indexed_fields(kind);
    let (index_filters, scan_filters): (Vec<_>, Vec<_>) = query
        .filters
        .iter()
        .partition(|(field, _)| indexed.contains(&field.as_str()));

    let candidates = match index_filters.split_first() {
        Some((first, rest)) => {
            let mut keys = index_lookup(db, kind, &first.0, &first.1)?;
            for (field, value) in rest {
                let other = index_lookup(db, kind, field, value)?;
                keys = keys.intersection(&other).cloned().collect();
            }
            Some(keys)
        }
        None => None,
    };

    let matches = |value: &Value| scan_filters.iter().all(|(f, v)| field_matches(value, f, v));
    let sorted = query.sort.is_some() || query.descending;
    // In key order we can stop as soon as the page is full.
    let wanted = if sorted {
        usize::MAX
    } else {
        query.offset.saturating_add(limit).saturating_add(1)
    };

    let mut found: Vec<(String, Value)> = Vec::new();
    let mut visit = |key: String, value: Value| -> bool {
        if matches(&value) {
            found.push((key, value));
        }
        found.len() < wanted
    };

    let objects = cf(db, CF_OBJECTS)?;
    match candidates {
        Some(keys) => {
            for key in keys {
                if after.as_ref().is_some_and(|a| &key <= a) {
                    continue;
                }
                let Some(bytes) = db
                    .get_cf(objects, object_key(kind, &key))
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                else {
                    continue;
                };
                if !visit(key, decode(&bytes)?) {
                    break;
                }
            }
        }
        None => {
            let prefix = object_prefix(kind);
            let start = match &after {
                // The byte after the cursor's key: `\0` sorts first.
                Some(a) => {
                    let mut k = object_key(kind, a);
                    k.push(0);
                    k
                }
                None => prefix.clone(),
            };
            for item in db.iterator_cf(objects, IteratorMode::From(&start, Direction::Forward)) {
                let (key, bytes) = item.map_err(|e| StoreError::Internal(e.to_string()))?;
                let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                let key = String::from_utf8_lossy(rest).into_owned();
                if !visit(key, decode(&bytes)?) {
                    break;
                }
            }
        }
    }

    if let Some(path) = &query.sort {
        found.sort_by(|(ka, a), (kb, b)| {
            compare(lookup(a, path), lookup(b, path)).then_with(|| ka.cmp(kb))
        });
    }
    if query.descending {
        found.reverse();
    }
    let total = found.len();
    let items: Vec<(String, Value)> = found.into_iter().skip(query.offset).take(limit).collect();
    let more = total > query.offset.saturating_add(items.len());
    let next_cursor = match (sorted, more, items.last()) {
        (false, true, Some((key, _))) => Some(encode_cursor(key)),
        _ => None,
    };
    Ok(Page {
        items: items.into_iter().map(|(_, v)| v).collect(),
        next_cursor,
    })
}

fn index_lookup(
    db: &DB,
    kind: ObjectKind,
    field: &str,
    value: &str,
) -> Result<BTreeSet<String>, StoreError> {
    let index = cf(db, CF_INDEX)?;
    let prefix = index_prefix(kind, field, value);
    let mut keys = BTreeSet::new();
    for item in db.iterator_cf(index, IteratorMode::From(&prefix, Direction::Forward)) {
        let (key, _) = item.map_err(|e| StoreError::Internal(e.to_string()))?;
        let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
            break;
        };
        keys.insert(String::from_utf8_lossy(rest).into_owned());
    }
    Ok(keys)
}

fn decode(bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Internal(format!("corrupt object: {e}")))
}

fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |current, segment| current.get(segment))
}

/// Strings compare as themselves, numbers and booleans by their JSON text;
/// an array matches if any element does; objects never match.
fn field_matches(object: &Value, path: &str, wanted: &str) -> bool {
    fn scalar_matches(value: &Value, wanted: &str) -> bool {
        match value {
            Value::String(s) => s == wanted,
            Value::Array(items) => items.iter().any(|v| scalar_matches(v, wanted)),
            Value::Null => wanted == "null",
            Value::Bool(b) => wanted == if *b { "true" } else { "false" },
            Value::Number(n) => wanted.parse::<serde_json::Number>().is_ok_and(|w| &w == n),
            Value::Object(_) => false,
        }
    }
    lookup(object, path).is_some_and(|v| scalar_matches(v, wanted))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn encode_cursor(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            Rejection::new(code::INVALID_QUERY, "cursor is not one this server issued")
                .at("cursor")
                .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_and_arrays_match() {
        let object = json!({"name": "m1", "params": {"rack": "r1", "size": 3}, "tags": ["a", "b"]});
        assert!(field_matches(&object, "params.rack", "r1"));
        assert!(field_matches(&object, "params.size", "3"));
        assert!(field_matches(&object, "tags", "b"));
        assert!(!field_matches(&object, "params.rack", "r2"));
        assert!(!field_matches(&object, "params.missing", "r1"));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        assert_eq!(decode_cursor(&encode_cursor("abc/def")).unwrap(), "abc/def");
        assert!(decode_cursor("!!!").is_err());
    }
}
