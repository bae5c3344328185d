//! Reading what a request carries: JSON bodies (strictly: no duplicate keys,
//! bounded nesting) and the conditional headers `If-Match` and
//! `If-None-Match` (RFC 9110 §13.1).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use axum::http::{header, HeaderMap};
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{ApiError, ApiResult};
use crate::error_code::{self as code, Code};
use crate::store::limits::MAX_JSON_DEPTH;

/// Deepest JSON a request body may nest: an object at the limit, inside a
/// JSON Patch operation inside its array.
pub const MAX_BODY_DEPTH: usize = MAX_JSON_DEPTH + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    Duplicate(String),
    TooDeep,
}

/// Walks a JSON document without building it, noting the first duplicate
/// key or excess of depth.
struct Check<'a> {
    depth: usize,
    fault: &'a Cell<Option<Fault>>,
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Check<'_> {
    fn deeper(&self) -> Result<Check<'_>, Fault> {
        if self.depth >= MAX_BODY_DEPTH {
            return Err(Fault::TooDeep);
        }
        Ok(Check {
            depth: self.depth + 1,
            fault: self.fault,
        })
    }

    fn fail<E: serde::de::Error>(&self, fault: Fault) -> E {
        self.fault.set(Some(fault));
        E::custom("refused")
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper().map_err(|f| self.fail(f))?;
        while seq
            .next_element_seed(Check {
                depth: inner.depth,
                fault: inner.fault,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper().map_err(|f| self.fail(f))?;
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(self.fail(Fault::Duplicate(key)));
            }
            map.next_value_seed(Check {
                depth: inner.depth,
                fault: inner.fault,
            })?;
            seen.insert(key);
        }
        Ok(())
    }
}

/// Parses a request body as JSON with a clear error (line and column).
/// Refuses duplicate keys (which JSON leaves undefined, and parsers resolve
/// differently) and nesting deeper than [`MAX_BODY_DEPTH`].
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let fault = Cell::new(None);
    let mut checker = serde_json::Deserializer::from_slice(body);
    let checked = Check {
        depth: 0,
        fault: &fault,
    }
    .deserialize(&mut checker)
    .and_then(|()| checker.end());
    if let Err(e) = checked {
        return Err(match fault.take() {
            Some(Fault::Duplicate(key)) => ApiError::new(
                code::DUPLICATE_KEY,
                format!("request body: the key {key:?} appears twice in one object"),
            )
            .at(key),
            Some(Fault::TooDeep) => too_deep(),
            None if e.to_string().contains("recursion limit") => too_deep(),
            None => ApiError::new(code::MALFORMED_JSON, format!("request body: {e}")),
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() {
            code::INVALID_BODY
        } else {
            code::MALFORMED_JSON
        };
        ApiError::new(code, format!("request body: {e}"))
    })
}

/// [`parse_json`] for bodies that are JSON objects. serde reads a struct from
/// an array too (its fields in order), which no client means: refuse that.
pub fn parse_json_object<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.trim_ascii_start().first() == Some(&b'[') {
        return Err(ApiError::new(code::INVALID_BODY, "expected a JSON object"));
    }
    parse_json(body)
}

fn too_deep() -> ApiError {
    ApiError::new(
        code::TOO_DEEP,
        format!("request body: JSON nested deeper than {MAX_BODY_DEPTH} levels"),
    )
}

/// An entity tag as `If-Match`/`If-None-Match` carry it: this server's are
/// strong, `"<revision>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Strong(u64),
    Weak(u64),
}

/// `*`, or a list of tags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Any,
    Tags(Vec<Tag>),
}

/// Parses `"*"` or `1#entity-tag` (RFC 9110 §8.8.3): `"12"` or `W/"12"`.
/// A bare revision (`12`) is accepted too, as earlier clients sent it.
fn parse_condition(name: &str, text: &str) -> ApiResult<Condition> {
    let code = condition_code(name);
    let bad = || {
        ApiError::new(
            code,
            format!("{name} {text:?} is not `*` or a list of entity tags like \"12\""),
        )
        .at(name.to_string())
    };
    let text = text.trim();
    if text == "*" {
        return Ok(Condition::Any);
    }
    let mut tags = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let (weak, rest) = match item.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let inner = match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) => inner,
            // The bare form, strong only.
            None if !weak => rest,
            None => return Err(bad()),
        };
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) || inner.len() > 20 {
            return Err(bad());
        }
        let revision: u64 = inner.parse().map_err(|_| bad())?;
        tags.push(if weak {
            Tag::Weak(revision)
        } else {
            Tag::Strong(revision)
        });
    }
    if tags.is_empty() {
        return Err(bad());
    }
    Ok(Condition::Tags(tags))
}

/// The stable code for a malformed conditional header.
fn condition_code(name: &str) -> &'static Code {
    if name.eq_ignore_ascii_case("if-none-match") {
        code::INVALID_IF_NONE_MATCH
    } else {
        code::INVALID_IF_MATCH
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> ApiResult<Option<String>> {
    let mut values = headers.get_all(&name).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut joined = Vec::new();
    for value in values {
        joined.push(value.to_str().map_err(|_| {
            ApiError::new(condition_code(name.as_str()), format!("{name} is not text"))
                .at(name.to_string())
        })?);
    }
    Ok(Some(joined.join(",")))
}

/// What `If-Match` asks of a write, for the store to check atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    /// No header, or `*` (the object exists, which every update route needs).
    Any,
    /// The object must be at this revision.
    Revision(u64),
    /// Only weak tags, which never match for `If-Match` (RFC 9110 §13.1.1).
    Never,
}

/// Reads `If-Match`. Weak tags are ignored (they never match); of strong
/// tags one is supported, since the store checks "the object is at this
/// revision" atomically as it applies the write.
pub fn if_match(headers: &HeaderMap) -> ApiResult<IfMatch> {
    let Some(text) = header_text(headers, header::IF_MATCH)? else {
        return Ok(IfMatch::Any);
    };
    match parse_condition("If-Match", &text)? {
        Condition::Any => Ok(IfMatch::Any),
        Condition::Tags(tags) => {
            let strong: Vec<u64> = tags
                .iter()
                .filter_map(|t| match t {
                    Tag::Strong(r) => Some(*r),
                    Tag::Weak(_) => None,
                })
                .collect();
            match strong.as_slice() {
                [] => Ok(IfMatch::Never),
                [one] => Ok(IfMatch::Revision(*one)),
                _ => Err(ApiError::new(
                    code::INVALID_IF_MATCH,
                    "If-Match with more than one entity tag is not supported; send the one revision you read",
                )
                .at("If-Match")),
            }
        }
    }
}

/// `If-Match` as the store's precondition: the revision the object must be
/// at, if any. A condition that can never hold is `412` at once.
pub fn if_match_revision(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match if_match(headers)? {
        IfMatch::Any => Ok(None),
        IfMatch::Revision(revision) => Ok(Some(revision)),
        IfMatch::Never => Err(ApiError::new(
            code::PRECONDITION_FAILED,
            "If-Match holds only weak entity tags, which never match (RFC 9110 13.1.1)",
        )),
    }
}

/// Reads `If-None-Match` against the object's current revision (weak
/// comparison, so `W/"n"` matches revision n): `true` when the condition
/// holds (no header, or no tag matches).
pub fn if_none_match_holds(headers: &HeaderMap, current: Option<u64>) -> ApiResult<bool> {
    let Some(text) = header_text(headers, header::IF_NONE_MATCH)? else {
        return Ok(true);
    };
    Ok(match parse_condition("If-None-Match", &text)? {
        Condition::Any => current.is_none(),
        Condition::Tags(tags) => !tags.iter().any(|t| {
            let (Tag::Strong(r) | Tag::Weak(r)) = t;
            Some(*r) == current
        }),
    })
}

/// Most bytes of an over-limit body read and thrown away before answering
/// `413`: a client still sending when the connection closes sees a reset
/// instead of the answer, so modest excesses are drained first.
const MAX_DRAIN_BYTES: usize = 16 << 20;
/// How long draining may take.
const DRAIN_TIMEOUT_MS: u64 = 5_000;

/// Middleware: reads the request body up to `max_body_bytes`, and answers
/// `413 body_too_large` to a larger one, after draining a bounded excess so
/// the client reads the answer rather than a connection reset.
pub async fn bounded(
    axum::extract::State(max_body_bytes): axum::extract::State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use http_body_util::BodyExt as _;

    let too_large = || {
        let mut response = ApiError::new(
            code::BODY_TOO_LARGE,
            format!("the request body is larger than {max_body_bytes} bytes"),
        )
        .into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        response
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let Some(declared) = declared {
        // Known to be too large: a client waiting for `100 Continue` sends
        // nothing more, and one far over the drain bound is not read.
        let over = declared > max_body_bytes as u64;
        if over && (expects_continue || declared > (max_body_bytes + MAX_DRAIN_BYTES) as u64) {
            return too_large();
        }
    }
    let (parts, mut body) = request.into_parts();
    let mut kept: Vec<u8> = Vec::new();
    let mut excess = false;
    let mut read_total = 0usize;
    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => return Err(e),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            read_total = read_total.saturating_add(data.len());
            if read_total > max_body_bytes {
                excess = true;
                kept = Vec::new();
                if read_total > max_body_bytes + MAX_DRAIN_BYTES {
                    break;
                }
            } else {
                kept.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let outcome =
        tokio::time::timeout(std::time::Duration::from_millis(DRAIN_TIMEOUT_MS), reading).await;
    if excess {
        return too_large();
    }
    match outcome {
        Ok(Ok(())) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(kept));
            next.run(request).await
        }
        Ok(Err(e)) => ApiError::new(code::INVALID_BODY, format!("reading the request body: {e}"))
            .into_response(),
        Err(_) => ApiError::new(
            code::BODY_TIMEOUT,
            "the request body did not arrive in time",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::Value;

    fn check(body: &str) -> Result<Value, &'static str> {
        parse_json::<Value>(body.as_bytes()).map_err(|e| e.code().name())
    }

    #[test]
    fn json_bodies_are_strict() {
        assert!(check(r#"{"a": 1, "b": {"a": 2}}"#).is_ok());
        assert_eq!(check(r#"{"a": 1, "a": 2}"#).unwrap_err(), "duplicate_key");
        assert_eq!(
            check(r#"{"x": [{"a": 1, "b": 2, "a": 3}]}"#).unwrap_err(),
            "duplicate_key"
        );
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check(&deep(MAX_BODY_DEPTH)).is_ok());
        assert_eq!(check(&deep(MAX_BODY_DEPTH + 1)).unwrap_err(), "too_deep");
        assert_eq!(check(&deep(125)).unwrap_err(), "too_deep");
        assert_eq!(check(&deep(10_000)).unwrap_err(), "too_deep");
        assert_eq!(check("{").unwrap_err(), "malformed_json");
        assert_eq!(check("{} {}").unwrap_err(), "malformed_json");
        assert_eq!(check("").unwrap_err(), "malformed_json");
        assert_eq!(
            parse_json::<u32>(b"\"x\"").unwrap_err().body.code,
            "invalid_body"
        );
    }

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn if_match_follows_rfc_9110() {
        let m = |v: &str| if_match(&headers(header::IF_MATCH, v)).map_err(|e| e.code().name());
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), IfMatch::Any);
        assert_eq!(m("*"), Ok(IfMatch::Any));
        assert_eq!(m("\"7\""), Ok(IfMatch::Revision(7)));
        assert_eq!(m("7"), Ok(IfMatch::Revision(7)));
        assert_eq!(m("W/\"7\""), Ok(IfMatch::Never));
        assert_eq!(m("W/\"7\", W/\"8\""), Ok(IfMatch::Never));
        assert_eq!(m("W/\"7\", \"8\""), Ok(IfMatch::Revision(8)));
        for bad in [
            "W/W/\"1\"",
            "W/7",
            "\"\"",
            "\"x\"",
            "\"1",
            "",
            ",",
            "\"-1\"",
            "\"99999999999999999999999\"",
        ] {
            assert_eq!(m(bad), Err("invalid_if_match"), "{bad}");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let holds = |v: &str, current| {
            if_none_match_holds(&headers(header::IF_NONE_MATCH, v), current).unwrap()
        };
        assert!(if_none_match_holds(&HeaderMap::new(), Some(3)).unwrap());
        assert!(!holds("\"3\"", Some(3)));
        assert!(!holds("W/\"3\"", Some(3)));
        assert!(holds("\"2\", \"4\"", Some(3)));
        assert!(!holds("*", Some(3)));
        assert!(holds("*", None));
    }
}
