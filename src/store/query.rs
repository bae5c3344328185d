//! Listing objects: filters (indexed fields through the index, any other
//! field by scanning), sorting, and paging by offset or cursor, each request
//! bounded whatever the kind holds.
//!
//! A list reads one consistent view (a `ReadView`: one RocksDB snapshot,
//! never a half-installed Raft snapshot) and at most [`MAX_SCAN_OBJECTS`]
//! objects and [`MAX_SCAN_KEYS`] keys:
//! - **key order** (no `sort`): a range scan of the kind's objects, or of the
//!   first index filter's entries (which are in key order too), that stops
//!   once the page is full;
//! - **sorted by an indexed field that holds the field's value** (`name` and
//!   the like, see [`sort_index`]), with no index filter: a range scan of that
//!   index, which is in (value, key) order, so a page costs its offset in
//!   index keys plus its own objects;
//! - **sorted by anything else**, or with an index filter: a heap of the
//!   best `offset + limit` over the candidates (the kind's objects, or the
//!   first index filter's), never a sort of the whole kind.
//!
//! When a request reaches a cap, in key order from the start (no offset),
//! the page ends there, possibly short or even empty, with a cursor to go on
//! from; otherwise it fails with `query_too_broad`, asking for an indexed
//! filter or an indexed sort. The caller runs lists off the async workers
//! (the API does, on its bounded read pool).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use base64::Engine as _;
use cradle_raft::ReadView;
use serde_json::Value;

use super::keys::*;
use super::object::indexed_fields;
use super::{Rejection, StoreError};
use crate::error_code as code;
use crate::model::ObjectKind;

/// Most objects one page may hold.
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 1_000;
/// Most objects one request reads and decodes (twice the largest page, so a
/// page with a filter that matches half of what it reads still fills).
pub const MAX_SCAN_OBJECTS: usize = 2 * MAX_LIMIT;
/// Most keys (index entries, objects skipped by an offset without being
/// decoded) one request reads: far cheaper than objects, so an offset deep
/// into a large kind still pages.
pub const MAX_SCAN_KEYS: usize = 1_000_000;

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

/// Whether `field`'s index can serve a sort: every object of `kind` has
/// exactly one entry for it, equal to the object's top-level string `field`,
/// so index order (value bytes, then key) is the order [`compare`] gives.
pub fn sort_index(kind: ObjectKind, field: &str) -> bool {
    use ObjectKind::*;
    matches!(
        (kind, field),
        (
            Machines | Profiles | Params | Bootenvs | Subnets | Users,
            "name"
        ) | (Templates, "id")
    )
}

/// What one request may still read.
struct Budget {
    objects: usize,
    keys: usize,
}

/// The request reached a cap.
struct Exhausted;

impl Budget {
    fn new() -> Self {
        Budget {
            objects: MAX_SCAN_OBJECTS,
            keys: MAX_SCAN_KEYS,
        }
    }

    fn object(&mut self) -> Result<(), Exhausted> {
        self.objects = self.objects.checked_sub(1).ok_or(Exhausted)?;
        Ok(())
    }

    fn key(&mut self) -> Result<(), Exhausted> {
        self.keys = self.keys.checked_sub(1).ok_or(Exhausted)?;
        Ok(())
    }
}

fn too_broad(why: &str) -> StoreError {
    Rejection::new(
        code::QUERY_TOO_BROAD,
        format!(
            "{why}: a list reads at most {MAX_SCAN_OBJECTS} objects; \
             add a filter on an indexed field, or sort by one (e.g. name)"
        ),
    )
    .into()
}

/// Where the candidates of a list come from, in order.
enum Source {
    /// The kind's objects, in key order.
    Objects,
    /// The entries of one index prefix; each entry's key follows the
    /// prefix, after the value and a NUL when `valued` (a whole field's
    /// index, in value order).
    Index { prefix: Vec<u8>, valued: bool },
}

/// Key/value pairs a list reads, in key order or reversed.
pub type Items<'s> = Box<dyn Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), StoreError>> + 's>;

/// What a list reads from: one consistent state. The node's is a
/// [`ReadView`], which never shows a half-installed snapshot.
pub trait ListSource {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys from `start` on (`forward`) or from `start` back.
    fn iter_from<'s>(
        &'s self,
        cf: &str,
        start: &[u8],
        forward: bool,
    ) -> Result<Items<'s>, StoreError>;
}

impl ListSource for ReadView<'_> {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        ReadView::get(self, cf, key).map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn iter_from<'s>(
        &'s self,
        cf: &str,
        start: &[u8],
        forward: bool,
    ) -> Result<Items<'s>, StoreError> {
        let items = ReadView::iter_from(self, cf, start, forward)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(Box::new(items.map(|item| {
            item.map_err(|e| StoreError::Internal(e.to_string()))
        })))
    }
}

/// One consistent state and the kind a list reads.
struct Reader<'v> {
    read: &'v dyn ListSource,
    objects: &'static str,
    index: &'static str,
    kind: ObjectKind,
}

/// What a scan found at one candidate.
enum Step {
    Continue,
    Stop,
}

impl Reader<'_> {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read.get(cf, key)
    }

    fn object_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(self.objects, &object_key(self.kind, key))
    }

    /// Visits the candidates of `source` in order (reversed if `reverse`),
    /// starting after `after` (forward only), counting each key against
    /// `budget`. `visit` gets the key and, for [`Source::Objects`], the
    /// object's bytes. Says where the scan ended if the budget ran out.
    fn scan(
        &self,
        source: &Source,
        reverse: bool,
        after: Option<&str>,
        budget: &mut Budget,
        mut visit: impl FnMut(String, Option<Box<[u8]>>, &mut Budget) -> Result<Step, ScanError>,
    ) -> Result<ScanEnd, StoreError> {
        let (cf, prefix, valued) = match source {
            Source::Objects => (self.objects, object_prefix(self.kind), false),
            Source::Index { prefix, valued } => (self.index, prefix.clone(), *valued),
        };
        let start = match (reverse, after) {
            // Keys and values are UTF-8, which never holds 0xFF: this is past
            // every key under the prefix.
            (true, _) => [prefix.as_slice(), &[0xFF]].concat(),
            // The byte after the cursor's key: `\0` sorts first.
            (false, Some(after)) => [prefix.as_slice(), after.as_bytes(), &[0]].concat(),
            (false, None) => prefix.clone(),
        };
        let mut last: Option<String> = None;
        for item in self.read.iter_from(cf, &start, !reverse)? {
            let (key, bytes) = item?;
            let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let rest = match valued {
                true => rest.splitn(2, |b| *b == 0).nth(1).unwrap_or_default(),
                false => rest,
            };
            let key = String::from_utf8_lossy(rest).into_owned();
            let object = match source {
                Source::Objects => Some(bytes),
                Source::Index { .. } => None,
            };
            if budget.key().is_err() {
                return Ok(ScanEnd::Exhausted { after: last });
            }
            match visit(key.clone(), object, budget) {
                Ok(Step::Continue) => last = Some(key),
                Ok(Step::Stop) => return Ok(ScanEnd::Done),
                Err(ScanError::Exhausted) => return Ok(ScanEnd::Exhausted { after: last }),
                Err(ScanError::Store(e)) => return Err(e),
            }
        }
        Ok(ScanEnd::Done)
    }

    /// The candidate `key` decoded, if it matches every filter; `None` if
    /// it does not (or vanished).
    fn matching(
        &self,
        key: &str,
        bytes: Option<Box<[u8]>>,
        filters: &Filters<'_>,
        budget: &mut Budget,
    ) -> Result<Option<Value>, ScanError> {
        for (field, value) in &filters.index {
            budget.key().map_err(|_| ScanError::Exhausted)?;
            let entry = index_key(self.kind, field, value, key);
            if self.get(self.index, &entry)?.is_none() {
                return Ok(None);
            }
        }
        let bytes = match bytes {
            Some(bytes) => bytes.into_vec(),
            None => match self.object_bytes(key)? {
                Some(bytes) => bytes,
                None => return Ok(None),
            },
        };
        budget.object().map_err(|_| ScanError::Exhausted)?;
        let value = decode(&bytes)?;
        let matches = filters
            .scan
            .iter()
            .all(|(f, v)| field_matches(&value, f, v));
        Ok(matches.then_some(value))
    }
}

/// How a scan ended.
enum ScanEnd {
    /// Every candidate seen, or the visitor had enough.
    Done,
    /// The budget ran out; `after` is the last candidate fully examined.
    Exhausted { after: Option<String> },
}

enum ScanError {
    Exhausted,
    Store(StoreError),
}

impl From<StoreError> for ScanError {
    fn from(e: StoreError) -> Self {
        ScanError::Store(e)
    }
}

/// The filters a candidate must still pass: index filters checked by a
/// point lookup of the index entry, the others on the decoded object.
struct Filters<'q> {
    index: Vec<(&'q str, &'q str)>,
    scan: Vec<(&'q str, &'q str)>,
}

impl Filters<'_> {
    fn is_empty(&self) -> bool {
        self.index.is_empty() && self.scan.is_empty()
    }
}

pub fn list(
    read: &dyn ListSource,
    kind: ObjectKind,
    query: &ListQuery,
) -> Result<Page, StoreError> {
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
        .map(|(f, v)| (f.as_str(), v.as_str()))
        .partition(|(field, _)| indexed.contains(field));
    // The first index filter is the source of candidates; the others are
    // checked on each.
    let (source, index_filters) = match index_filters.split_first() {
        Some(((field, value), rest)) => (
            Source::Index {
                prefix: index_prefix(kind, field, value),
                valued: false,
            },
            rest.to_vec(),
        ),
        None => (Source::Objects, Vec::new()),
    };
    let filters = Filters {
        index: index_filters,
        scan: scan_filters,
    };
    let reader = Reader {
        read,
        objects: CF_OBJECTS,
        index: CF_INDEX,
        kind,
    };
    let request = Request {
        reader: &reader,
        filters: &filters,
        limit,
        offset: query.offset,
        descending: query.descending,
    };
    match &query.sort {
        None => request.in_key_order(&source, after.as_deref()),
        Some(field) if sort_index(kind, field) && matches!(source, Source::Objects) => {
            request.through_sort_index(field)
        }
        Some(path) => request.through_heap(&source, path),
    }
}

/// One list request's reader, filters and page.
struct Request<'r> {
    reader: &'r Reader<'r>,
    filters: &'r Filters<'r>,
    limit: usize,
    offset: usize,
    descending: bool,
}

impl Request<'_> {
    /// Key order: stops once the page is full and one more match is known.
    fn in_key_order(&self, source: &Source, after: Option<&str>) -> Result<Page, StoreError> {
        let mut budget = Budget::new();
        let mut skipped = 0usize;
        let mut found: Vec<(String, Value)> = Vec::new();
        let mut more = false;
        let cheap_skip = self.filters.is_empty();
        let exhausted_at = self.reader.scan(
            source,
            self.descending,
            after,
            &mut budget,
            |key, bytes, budget| {
                if cheap_skip && skipped < self.offset {
                    // Nothing to match: skipping needs no decode.
                    skipped += 1;
                    return Ok(Step::Continue);
                }
                let Some(value) = self.reader.matching(&key, bytes, self.filters, budget)? else {
                    return Ok(Step::Continue);
                };
                if skipped < self.offset {
                    skipped += 1;
                    return Ok(Step::Continue);
                }
                if found.len() == self.limit {
                    more = true;
                    return Ok(Step::Stop);
                }
                found.push((key, value));
                Ok(Step::Continue)
            },
        )?;
        let next_cursor = match exhausted_at {
            // The page ends where the budget did; the client goes on from
            // there with the cursor.
            ScanEnd::Exhausted { after: Some(last) } if self.offset == 0 && !self.descending => {
                let last = match found.len() == self.limit {
                    true => found.last().map(|(k, _)| k.clone()).unwrap_or(last),
                    false => last,
                };
                Some(encode_cursor(&last))
            }
            ScanEnd::Exhausted { .. } => {
                return Err(too_broad("the offset or order reaches past the scan limit"))
            }
            ScanEnd::Done if more && !self.descending => {
                found.last().map(|(k, _)| encode_cursor(k))
            }
            ScanEnd::Done => None,
        };
        Ok(Page {
            items: found.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        })
    }

    /// Sorted by a field whose index is in sort order: a range scan of it.
    fn through_sort_index(&self, field: &str) -> Result<Page, StoreError> {
        let source = Source::Index {
            prefix: index_field_prefix(self.reader.kind, field),
            valued: true,
        };
        let mut budget = Budget::new();
        let mut skipped = 0usize;
        let mut found = Vec::new();
        let cheap_skip = self.filters.is_empty();
        let exhausted = self.reader.scan(
            &source,
            self.descending,
            None,
            &mut budget,
            |key, _, budget| {
                if cheap_skip && skipped < self.offset {
                    skipped += 1;
                    return Ok(Step::Continue);
                }
                let Some(value) = self.reader.matching(&key, None, self.filters, budget)? else {
                    return Ok(Step::Continue);
                };
                if skipped < self.offset {
                    skipped += 1;
                    return Ok(Step::Continue);
                }
                found.push(value);
                Ok(match found.len() == self.limit {
                    true => Step::Stop,
                    false => Step::Continue,
                })
            },
        )?;
        if let ScanEnd::Exhausted { .. } = exhausted {
            return Err(too_broad("the filters match too little of the sort order"));
        }
        Ok(Page {
            items: found,
            next_cursor: None,
        })
    }

    /// Sorted by any path: the best `offset + limit` candidates in a heap.
    fn through_heap(&self, source: &Source, path: &str) -> Result<Page, StoreError> {
        let keep = self.offset.saturating_add(self.limit);
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::new();
        let mut budget = Budget::new();
        let exhausted =
            self.reader
                .scan(source, false, None, &mut budget, |key, bytes, budget| {
                    let Some(value) = self.reader.matching(&key, bytes, self.filters, budget)?
                    else {
                        return Ok(Step::Continue);
                    };
                    heap.push(Ranked {
                        sort: lookup(&value, path).cloned(),
                        key,
                        descending: self.descending,
                    });
                    if heap.len() > keep {
                        heap.pop();
                    }
                    Ok(Step::Continue)
                })?;
        if let ScanEnd::Exhausted { .. } = exhausted {
            return Err(too_broad(&format!(
                "sorting by {path:?} needs every candidate read, and there are too many"
            )));
        }
        let mut items = Vec::new();
        for ranked in heap.into_sorted_vec().into_iter().skip(self.offset) {
            if let Some(bytes) = self.reader.object_bytes(&ranked.key)? {
                items.push(decode(&bytes)?);
            }
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }
}

/// A candidate's place in a sorted list: ascending by (sort value, key), or
/// the exact reverse.
struct Ranked {
    sort: Option<Value>,
    key: String,
    descending: bool,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        let ascending =
            compare(self.sort.as_ref(), other.sort.as_ref()).then_with(|| self.key.cmp(&other.key));
        match self.descending {
            true => ascending.reverse(),
            false => ascending,
        }
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

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

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
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
    use rocksdb::DB;
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

    use crate::store::object::AnyObject;

    /// A database laid out as `apply` writes it, with `machines` (each
    /// `{"name", "params": {"rack"}}`) stored with their index entries.
    fn db_with(machines: &[(String, String)]) -> (tempfile::TempDir, DB) {
        let dir = tempfile::tempdir().unwrap();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path(), ALL_CFS).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        for (i, (name, rack)) in machines.iter().enumerate() {
            let object = AnyObject::decode(
                ObjectKind::Machines,
                json!({
                    "uuid": format!("00000000-0000-4000-8000-{:012x}", (i * 7919) % 1_000_003),
                    "name": name,
                    "hardware_addrs": [format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)],
                    "params": {"rack": rack},
                }),
            )
            .unwrap();
            let key = object.key();
            let value = serde_json::to_vec(&object.to_value().unwrap()).unwrap();
            batch.put_cf(
                db.cf_handle(CF_OBJECTS).unwrap(),
                object_key(ObjectKind::Machines, &key),
                value,
            );
            for (field, term) in object.index_terms() {
                batch.put_cf(
                    db.cf_handle(CF_INDEX).unwrap(),
                    index_key(ObjectKind::Machines, field, &term, &key),
                    b"",
                );
            }
        }
        db.write(batch).unwrap();
        (dir, db)
    }

    /// A plain RocksDB snapshot as a list source (the node lists through a
    /// `ReadView`, which needs a running state machine).
    struct Snap<'a> {
        db: &'a DB,
        snapshot: rocksdb::Snapshot<'a>,
    }

    fn source(db: &DB) -> Snap<'_> {
        Snap {
            db,
            snapshot: db.snapshot(),
        }
    }

    impl ListSource for Snap<'_> {
        fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let handle = self.db.cf_handle(cf).unwrap();
            Ok(self.snapshot.get_cf(handle, key).unwrap())
        }

        fn iter_from<'s>(
            &'s self,
            cf: &str,
            start: &[u8],
            forward: bool,
        ) -> Result<Items<'s>, StoreError> {
            let handle = self.db.cf_handle(cf).unwrap();
            let direction = if forward {
                rocksdb::Direction::Forward
            } else {
                rocksdb::Direction::Reverse
            };
            Ok(Box::new(
                self.snapshot
                    .iterator_cf(handle, rocksdb::IteratorMode::From(start, direction))
                    .map(|item| Ok(item.unwrap())),
            ))
        }
    }

    fn names(page: &Page) -> Vec<String> {
        page.items
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn query(
        filters: &[(&str, &str)],
        sort: Option<&str>,
        desc: bool,
        limit: usize,
        offset: usize,
    ) -> ListQuery {
        ListQuery {
            filters: filters
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
            sort: sort.map(str::to_string),
            descending: desc,
            limit: Some(limit),
            offset,
            cursor: None,
        }
    }

    /// Sorting through the name index gives exactly what sorting every
    /// object gives (the heap), ties and all, in both directions, with
    /// offsets and filters.
    #[test]
    fn index_sorted_pages_match_a_full_sort() {
        let machines: Vec<(String, String)> = (0..300)
            .map(|i| (format!("m{}", (i * 37) % 300), format!("r{}", i % 7)))
            .collect();
        let (_dir, db) = db_with(&machines);
        let kind = ObjectKind::Machines;
        assert!(sort_index(kind, "name"));
        for desc in [false, true] {
            for (offset, limit) in [(0, 10), (5, 20), (290, 50), (400, 5)] {
                for filters in [vec![], vec![("params.rack", "r3")]] {
                    let through_index = list(
                        &source(&db),
                        kind,
                        &query(&filters, Some("name"), desc, limit, offset),
                    )
                    .unwrap();
                    let mut expected: Vec<String> = machines
                        .iter()
                        .filter(|(_, rack)| filters.is_empty() || rack == "r3")
                        .map(|(name, _)| name.clone())
                        .collect();
                    expected.sort();
                    if desc {
                        expected.reverse();
                    }
                    let expected: Vec<String> =
                        expected.into_iter().skip(offset).take(limit).collect();
                    assert_eq!(
                        names(&through_index),
                        expected,
                        "desc {desc}, offset {offset}, {filters:?}"
                    );
                    // The same through the heap (an index filter makes the
                    // list take that path).
                    let mut heap_filters = filters.clone();
                    heap_filters.push(("arch", "amd64"));
                    let through_heap = list(
                        &source(&db),
                        kind,
                        &query(&heap_filters, Some("name"), desc, limit, offset),
                    )
                    .unwrap();
                    assert_eq!(names(&through_heap), names(&through_index));
                }
            }
        }
    }

    /// Every field declared as a sort index holds the field's own value, once.
    #[test]
    fn sort_indexes_hold_the_field_value() {
        let samples = [
            (
                ObjectKind::Machines,
                json!({"uuid": "6f1c1f5e-8d7a-4c1e-9a53-1d2b3c4d5e6f", "name": "m1"}),
            ),
            (ObjectKind::Profiles, json!({"name": "p"})),
            (
                ObjectKind::Params,
                json!({"name": "x", "schema": {"type": "string"}}),
            ),
            (ObjectKind::Bootenvs, json!({"name": "b"})),
            (ObjectKind::Templates, json!({"id": "t", "body": "x"})),
            (
                ObjectKind::Subnets,
                json!({"name": "s", "cidr": "198.18.0.0/24"}),
            ),
            (
                ObjectKind::Users,
                json!({"name": "u", "password_hash": "$argon2id$x"}),
            ),
        ];
        for (kind, sample) in samples {
            let object = AnyObject::decode(kind, sample).unwrap();
            let value = object.to_value().unwrap();
            for field in ["name", "id"].into_iter().filter(|f| sort_index(kind, f)) {
                let terms: Vec<_> = object
                    .index_terms()
                    .into_iter()
                    .filter(|(f, _)| *f == field)
                    .collect();
                assert_eq!(terms.len(), 1, "{kind:?}.{field}");
                assert_eq!(
                    Some(terms[0].1.as_str()),
                    value[field].as_str(),
                    "{kind:?}.{field}"
                );
            }
        }
    }

    /// Past the scan cap: in key order the page ends with a cursor, and
    /// following cursors reaches the end; a sort that needs every object
    /// read fails with `query_too_broad`; a sort through the index serves.
    #[test]
    fn scans_stop_at_the_cap() {
        let count = MAX_SCAN_OBJECTS + 500;
        // The machine last in key (UUID) order, as `db_with` makes them.
        let last = (0..count).max_by_key(|i| (i * 7919) % 1_000_003).unwrap();
        let machines: Vec<(String, String)> = (0..count)
            .map(|i| {
                let rack = if i == last { "last" } else { "r" };
                (format!("m{i:06}"), rack.to_string())
            })
            .collect();
        let (_dir, db) = db_with(&machines);
        let kind = ObjectKind::Machines;

        let mut q = query(&[("params.rack", "last")], None, false, 10, 0);
        let first = list(&source(&db), kind, &q).unwrap();
        assert!(first.items.is_empty(), "the cap came before the match");
        let mut cursor = first.next_cursor.clone().expect("a cursor to go on from");
        let mut found = Vec::new();
        for _ in 0..4 {
            q.cursor = Some(cursor.clone());
            let page = list(&source(&db), kind, &q).unwrap();
            found.extend(names(&page));
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(found, vec![format!("m{last:06}")]);

        let e = list(
            &source(&db),
            kind,
            &query(&[], Some("params.rack"), false, 10, 0),
        )
        .unwrap_err();
        assert!(
            matches!(&e, StoreError::Rejected(r) if r.code == code::QUERY_TOO_BROAD),
            "{e:?}"
        );
        // An offset past the cap with a filter to match: refused too.
        let e = list(
            &source(&db),
            kind,
            &query(&[("params.rack", "r")], None, false, 10, MAX_SCAN_OBJECTS),
        )
        .unwrap_err();
        assert!(
            matches!(&e, StoreError::Rejected(r) if r.code == code::QUERY_TOO_BROAD),
            "{e:?}"
        );

        let page = list(&source(&db), kind, &query(&[], Some("name"), true, 3, 0)).unwrap();
        assert_eq!(
            names(&page),
            vec![
                format!("m{:06}", count - 1),
                format!("m{:06}", count - 2),
                format!("m{:06}", count - 3)
            ]
        );
        // A deep offset without filters skips keys only: served.
        let page = list(
            &source(&db),
            kind,
            &query(&[], Some("name"), false, 2, count - 2),
        )
        .unwrap();
        assert_eq!(
            names(&page),
            vec![format!("m{:06}", count - 2), format!("m{:06}", count - 1)]
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        assert_eq!(decode_cursor(&encode_cursor("abc/def")).unwrap(), "abc/def");
        assert!(decode_cursor("!!!").is_err());
    }
}
