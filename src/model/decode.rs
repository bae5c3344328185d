//! JSON → typed object, with serde's errors turned into [`ValidationError`]s that name the field.
//!
//! serde_json reports *where* in the text a typed deserialization failed (line and column) but not
//! *which field* that was. Clients need the field (`pools[1].end`), so on error we re-scan the text
//! up to the reported position with a small JSON tokenizer that tracks the current path. This keeps
//! the model types plain `#[derive(Deserialize)]` without a path-tracking dependency.

use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::validate::{code, ValidationError};

/// Largest request body we attempt to decode; the API should cap bodies before this, but the model
/// refuses on its own too rather than trusting every caller.
pub const MAX_DOCUMENT_LEN: usize = 4 << 20;

/// Decodes one object from JSON text. Unknown fields, wrong types and unparsable values (IP
/// addresses, UUIDs, CIDRs, enum variants) come back with a stable code and the field's path.
/// This only decodes: call [`super::Object::validate`] afterwards.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, ValidationError> {
    if text.len() > MAX_DOCUMENT_LEN {
        return Err(ValidationError::new(
            "",
            code::TOO_LONG,
            format!("document is longer than {MAX_DOCUMENT_LEN} bytes"),
        ));
    }
    serde_json::from_str(text).map_err(|e| describe(text, &e))
}

/// Decodes from an already-parsed value (e.g. the result of applying a JSON Patch), with the same
/// error paths as [`decode`]: the value is printed and re-read so positions map back to fields.
pub fn decode_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ValidationError> {
    decode(&value.to_string())
}

fn describe(text: &str, e: &serde_json::Error) -> ValidationError {
    let full = e.to_string();
    // serde_json appends " at line L column C"; the path replaces it for clients.
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let offset = byte_offset(text, e.line(), e.column());
    let scan = scan_path(text, offset);
    match e.classify() {
        // Where a syntax error is, is useful; where a truncated document stopped, is not.
        Category::Syntax => ValidationError::new(scan.path(), code::INVALID_JSON, message),
        Category::Io | Category::Eof => ValidationError::new("", code::INVALID_JSON, message),
        Category::Data => {
            if let Some(name) = between_backticks(&message, "unknown field `") {
                // The error points at the key itself; the scanner saw it as the current key.
                let mut path = scan.parent_path();
                push_key(&mut path, &name);
                ValidationError::new(path, code::UNKNOWN_FIELD, message)
            } else if let Some(name) = between_backticks(&message, "missing field `") {
                // The error points at the closing brace of the object lacking the field.
                let mut path = scan.parent_path();
                push_key(&mut path, &name);
                ValidationError::new(path, code::MISSING_FIELD, message)
            } else if message.starts_with("invalid type") {
                ValidationError::new(scan.path(), code::INVALID_TYPE, message)
            } else {
                ValidationError::new(scan.path(), code::INVALID_VALUE, message)
            }
        }
    }
}

fn between_backticks(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// serde_json's `column` counts bytes from the start of the line, pointing at the last byte it
/// read (1-based). Returns the 0-based byte offset of that byte in `text`.
fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    (start + column.saturating_sub(1)).min(text.len())
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

#[derive(Debug)]
enum Frame {
    /// Inside an object; the key whose value is being read, once seen.
    Object(Option<String>),
    /// Inside an array; the index of the element being read.
    Array(usize),
}

#[derive(Debug, Default)]
struct Scan {
    frames: Vec<Frame>,
}

impl Scan {
    fn render(frames: &[Frame]) -> String {
        let mut out = String::new();
        for f in frames {
            match f {
                Frame::Object(Some(k)) => push_key(&mut out, k),
                Frame::Object(None) => {}
                Frame::Array(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// The path of the value being read at the stop position.
    fn path(&self) -> String {
        Self::render(&self.frames)
    }

    /// The path of the innermost object (for errors about one of its keys).
    fn parent_path(&self) -> String {
        match self.frames.last() {
            Some(Frame::Object(_)) => Self::render(&self.frames[..self.frames.len() - 1]),
            _ => self.path(),
        }
    }
}

/// Tokenizes `text[..stop]` (the byte at `stop` excluded) and returns the container stack there.
/// Exclusive, so that an error reported at a closing `}` still sees the object it closes, and one
/// reported at a key's closing quote sees the key (collected so far) as the current key.
fn scan_path(text: &str, stop: usize) -> Scan {
    let bytes = &text.as_bytes()[..stop.min(text.len())];
    let mut scan = Scan::default();
    // After `{` or `,` inside an object the next string is a key.
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                scan.frames.push(Frame::Object(None));
                expect_key = true;
            }
            b'[' => {
                scan.frames.push(Frame::Array(0));
                expect_key = false;
            }
            b'}' | b']' => {
                scan.frames.pop();
                expect_key = false;
            }
            b',' => match scan.frames.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object(k)) => {
                    *k = None;
                    expect_key = true;
                }
                None => {}
            },
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut key = Vec::new();
                while j < bytes.len() && bytes[j] != b'"' {
                    if bytes[j] == b'\\' && j + 1 < bytes.len() {
                        // Enough unescaping for keys to print sensibly; \uXXXX stays raw.
                        key.push(match bytes[j + 1] {
                            b'n' => b'\n',
                            b't' => b'\t',
                            other => other,
                        });
                        j += 2;
                    } else {
                        key.push(bytes[j]);
                        j += 1;
                    }
                }
                if expect_key {
                    if let Some(Frame::Object(k)) = scan.frames.last_mut() {
                        *k = Some(String::from_utf8_lossy(&key).into_owned());
                    }
                    expect_key = false;
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Only decoded, to provoke errors.
    struct Pool {
        start: Ipv4Addr,
        end: Ipv4Addr,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        pools: Vec<Pool>,
        #[serde(default)]
        code: u8,
        #[serde(default)]
        params: std::collections::BTreeMap<String, serde_json::Value>,
    }

    fn check(input: &str, field: &str, code: &crate::error_code::Code) {
        let err = decode::<Doc>(input).expect_err(input);
        assert_eq!(
            (err.field.as_str(), err.code),
            (field, code),
            "input {input:?}: {err}"
        );
        assert!(!err.message.contains(" at line "), "{}", err.message);
    }

    #[test]
    fn errors_name_the_field() {
        check(r#"{"name": "x", "bogus": 1}"#, "bogus", code::UNKNOWN_FIELD);
        check(r#"{"name": 5}"#, "name", code::INVALID_TYPE);
        check(r#"{"pools": []}"#, "name", code::MISSING_FIELD);
        check(r#"{"name": "x", "code": 300}"#, "code", code::INVALID_VALUE);
        check(r#"{"name": "x", "code": "1"}"#, "code", code::INVALID_TYPE);
        check(r#"{"name": "x", "pools": {}}"#, "pools", code::INVALID_TYPE);
        check(
            r#"{"name": "x", "pools": [{"start": "10.0.0.1", "end": "10.0.0.300"}]}"#,
            "pools[0].end",
            code::INVALID_VALUE,
        );
        check(
            r#"{"name": "x", "pools": [{"start": "10.0.0.1", "end": "10.0.0.2"}, {"start": "10.0.0.1"}]}"#,
            "pools[1].end",
            code::MISSING_FIELD,
        );
        check(
            r#"{"name": "x", "pools": [{"start": "10.0.0.1", "end": "10.0.0.2", "x\"y": 1}]}"#,
            "pools[0].x\"y",
            code::UNKNOWN_FIELD,
        );
        // Values under free-form maps move the scanner through nested containers.
        check(
            "{\"name\": \"x\",\n \"params\": {\"a\": [1, {\"b\": \"}\"}]},\n \"code\": -1}",
            "code",
            code::INVALID_VALUE,
        );
        check(r#"{"name": "x""#, "", code::INVALID_JSON);
        check(
            r#"{"name": "x", "params": {"a": [1, , 2]}}"#,
            "params.a[1]",
            code::INVALID_JSON,
        );
        check(r#"{"name": "x"} trailing"#, "", code::INVALID_JSON);
        check("", "", code::INVALID_JSON);
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let big = format!("{{\"name\": \"{}\"}}", "a".repeat(MAX_DOCUMENT_LEN));
        let err = decode::<Doc>(&big).expect_err("too big");
        assert_eq!(err.code, code::TOO_LONG);
    }

    #[test]
    fn decode_value_keeps_paths() {
        let v = serde_json::json!({"name": "x", "pools": [{"start": "1.2.3.4", "end": 7}]});
        let err = decode_value::<Doc>(&v).expect_err("bad");
        assert_eq!(
            (err.field.as_str(), err.code),
            ("pools[0].end", code::INVALID_TYPE)
        );
    }
}
