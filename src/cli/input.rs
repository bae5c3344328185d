//! What the user hands the CLI besides plain flags: object and patch
//! documents (JSON or YAML, from a file or stdin), list filters, `--set` and
//! `--unset` paths, param values, MAC addresses and durations.
//!
//! Everything here is pure (apart from reading the named file or stdin) and
//! turns bad input into an error that names where it came from; the clap value
//! parsers return plain strings so clap reports them as flag errors.

use std::io::Read as _;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

/// Largest document read from a file or stdin. The server refuses bodies
/// above its own limit (1 MiB by default) with a clear error; this only stops
/// the CLI from reading an unbounded stream into memory.
pub const MAX_INPUT_BYTES: u64 = 4 << 20;

/// Longest password line read from stdin.
const MAX_PASSWORD_BYTES: u64 = 4 << 10;

/// Query parameters the list verbs set through their own flags; a filter may
/// not use them as field names.
const RESERVED_FILTERS: [&str; 6] = ["limit", "offset", "cursor", "sort", "desc", "consistent"];

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {origin}: {cause}")]
    Read {
        origin: String,
        cause: std::io::Error,
    },
    #[error("{origin} is larger than {MAX_INPUT_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("{origin} is not UTF-8 text")]
    NotText { origin: String },
    #[error("{origin} is empty")]
    Empty { origin: String },
    #[error("{origin}: not valid JSON: {cause}")]
    Json {
        origin: String,
        cause: serde_json::Error,
    },
    #[error("{origin}: not valid YAML: {cause}")]
    Yaml {
        origin: String,
        cause: serde_yaml::Error,
    },
    #[error("{origin}: expected {expected}, found {found}")]
    Shape {
        origin: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{origin}: JSON Patch operation {index}: {reason}")]
    PatchOp {
        origin: String,
        index: usize,
        reason: String,
    },
    #[error("stdin can feed only one input; {0}")]
    StdinTwice(&'static str),
    #[error("no password given: pipe it with --password-stdin or set {0}")]
    NoPassword(&'static str),
}

/// Where a document comes from: a file, or stdin (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Stdin => "<stdin>".to_string(),
            Source::File(path) => path.display().to_string(),
        }
    }

    /// Reads the whole source as UTF-8 text, at most [`MAX_INPUT_BYTES`].
    pub fn read(&self) -> Result<String, InputError> {
        let origin = self.name();
        let mut bytes = Vec::new();
        let result = match self {
            Source::Stdin => std::io::stdin()
                .lock()
                .take(MAX_INPUT_BYTES + 1)
                .read_to_end(&mut bytes),
            Source::File(path) => std::fs::File::open(path)
                .and_then(|file| file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes)),
        };
        result.map_err(|cause| InputError::Read {
            origin: origin.clone(),
            cause,
        })?;
        if bytes.len() as u64 > MAX_INPUT_BYTES {
            return Err(InputError::TooLarge { origin });
        }
        String::from_utf8(bytes).map_err(|_| InputError::NotText { origin })
    }
}

/// clap value parser for `-f FILE`: `-` is stdin.
pub fn parse_source(text: &str) -> Result<Source, String> {
    match text {
        "" => Err("expected a file name, or - for stdin".to_string()),
        "-" => Ok(Source::Stdin),
        path => Ok(Source::File(PathBuf::from(path))),
    }
}

/// How a document is written. YAML is a superset of JSON, but a document
/// that opens like JSON is read as JSON so its errors say what JSON expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

pub fn detect_format(text: &str) -> Format {
    match text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .next()
    {
        Some('{') | Some('[') => Format::Json,
        _ => Format::Yaml,
    }
}

/// Parses a JSON or YAML document into a JSON value.
pub fn parse_document(text: &str, origin: &str) -> Result<Value, InputError> {
    let text = text.trim_start_matches('\u{feff}');
    if text.trim().is_empty() {
        return Err(InputError::Empty {
            origin: origin.to_string(),
        });
    }
    match detect_format(text) {
        Format::Json => serde_json::from_str(text).map_err(|cause| InputError::Json {
            origin: origin.to_string(),
            cause,
        }),
        Format::Yaml => serde_yaml::from_str(text).map_err(|cause| InputError::Yaml {
            origin: origin.to_string(),
            cause,
        }),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A document that must be one object (create, update).
pub fn parse_object(text: &str, origin: &str) -> Result<Map<String, Value>, InputError> {
    match parse_document(text, origin)? {
        Value::Object(map) => Ok(map),
        other => Err(InputError::Shape {
            origin: origin.to_string(),
            expected: "an object",
            found: type_name(&other),
        }),
    }
}

/// Reads and parses an object document from `source`.
pub fn read_object(source: &Source) -> Result<Map<String, Value>, InputError> {
    parse_object(&source.read()?, &source.name())
}

/// A JSON Patch (RFC 6902) document: a list of operations, each checked for
/// the members its `op` needs so mistakes are reported before the request.
pub fn parse_patch(text: &str, origin: &str) -> Result<Vec<Value>, InputError> {
    let ops = match parse_document(text, origin)? {
        Value::Array(ops) => ops,
        other => {
            return Err(InputError::Shape {
                origin: origin.to_string(),
                expected: "a JSON Patch list of operations",
                found: type_name(&other),
            })
        }
    };
    let fail = |index: usize, reason: String| InputError::PatchOp {
        origin: origin.to_string(),
        index,
        reason,
    };
    for (index, op) in ops.iter().enumerate() {
        let Some(map) = op.as_object() else {
            return Err(fail(
                index,
                format!("expected an object, found {}", type_name(op)),
            ));
        };
        let name = match map.get("op") {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(fail(index, "`op` must be a string".into())),
            None => return Err(fail(index, "missing `op`".into())),
        };
        let needs: &[&str] = match name {
            "add" | "replace" | "test" => &["path", "value"],
            "remove" => &["path"],
            "move" | "copy" => &["path", "from"],
            other => {
                return Err(fail(
                    index,
                    format!(
                        "unknown op {other:?} (expected add, remove, replace, move, copy or test)"
                    ),
                ))
            }
        };
        for member in needs {
            match map.get(*member) {
                None => return Err(fail(index, format!("{name} needs `{member}`"))),
                Some(Value::String(pointer)) if *member != "value" => {
                    if !pointer.is_empty() && !pointer.starts_with('/') {
                        return Err(fail(
                            index,
                            format!("`{member}` {pointer:?} is not a JSON pointer (/a/b)"),
                        ));
                    }
                }
                Some(other) if *member != "value" => {
                    return Err(fail(
                        index,
                        format!("`{member}` must be a string, found {}", type_name(other)),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(ops)
}

/// Reads and parses a JSON Patch document from `source`.
pub fn read_patch(source: &Source) -> Result<Vec<Value>, InputError> {
    parse_patch(&source.read()?, &source.name())
}

/// A list filter, `FIELD=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub field: String,
    pub value: String,
}

/// clap value parser for list filters (`name=foo`, `params.rack=r1`).
pub fn parse_filter(text: &str) -> Result<Filter, String> {
    let (field, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not FIELD=VALUE"))?;
    if field.is_empty() || field.chars().any(char::is_whitespace) {
        return Err(format!("{field:?} is not a field name"));
    }
    if RESERVED_FILTERS.contains(&field) {
        let hint = match field {
            "cursor" => "paging is automatic; use --limit and --offset".to_string(),
            "consistent" => "reads are consistent unless --stale is given".to_string(),
            flag => format!("use the --{flag} flag"),
        };
        return Err(format!("{field:?} is not a filter; {hint}"));
    }
    Ok(Filter {
        field: field.to_string(),
        value: value.to_string(),
    })
}

/// `--set PATH=VALUE`: a JSON pointer and the value to put there.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub pointer: String,
    pub value: Value,
}

/// clap value parser for `--set`.
pub fn parse_assignment(text: &str) -> Result<Assignment, String> {
    let (path, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PATH=VALUE"))?;
    Ok(Assignment {
        pointer: pointer_from_path(path)?,
        value: parse_value(value),
    })
}

/// clap value parser for `--unset PATH`.
pub fn parse_unset(text: &str) -> Result<String, String> {
    pointer_from_path(text)
}

/// A field path as a JSON pointer: either already a pointer (`/params/a.b`,
/// for names holding dots) or dotted (`params.rack`).
pub fn pointer_from_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        if path.len() == 1 {
            return Err("the path / names the whole object; name a field".to_string());
        }
        return Ok(path.to_string());
    }
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "{path:?} is not a field path (expected a.b.c or a JSON pointer /a/b/c)"
        ));
    }
    Ok(path
        .split('.')
        .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
        .collect())
}

/// A value typed on the command line: JSON if it parses as JSON, otherwise
/// the text itself as a string (`5` is a number, `r1` and `"5"` are strings).
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The JSON Patch for `--set` and `--unset`. A set is an `add` (which creates
/// or overwrites an object member), except at a numeric list index, where
/// `add` would insert, so it is a `replace`; `-` appends to a list.
pub fn set_ops(sets: &[Assignment], unsets: &[String]) -> Vec<Value> {
    let mut ops = Vec::with_capacity(sets.len() + unsets.len());
    for set in sets {
        let last = set.pointer.rsplit('/').next().unwrap_or("");
        let op = if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
            "replace"
        } else {
            "add"
        };
        ops.push(json!({"op": op, "path": set.pointer, "value": set.value}));
    }
    for pointer in unsets {
        ops.push(json!({"op": "remove", "path": pointer}));
    }
    ops
}

/// clap value parser for `--mac`: six hex octets separated by `:` or `-`,
/// or twelve hex digits (plain or `aabb.ccdd.eeff`), written back as
/// `aa:bb:cc:dd:ee:ff`. Whether the address is usable is the server's call.
pub fn parse_mac(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let digits: String = if trimmed.contains(':') || trimmed.contains('-') {
        let octets: Vec<&str> = trimmed.split([':', '-']).collect();
        if octets.len() != 6 || octets.iter().any(|o| o.len() != 2) {
            return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        octets.concat()
    } else {
        trimmed.chars().filter(|c| *c != '.').collect()
    };
    if digits.len() != 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let lower = digits.to_ascii_lowercase();
    let octets: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Ok(octets.join(":"))
}

/// clap value parser for durations: seconds (`3600`) or a number with a unit
/// (`90s`, `15m`, `8h`, `7d`).
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 3600, 90s, 15m, 8h, 7d)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ))
        }
    };
    match number.checked_mul(scale) {
        Some(0) => Err("a duration must be longer than 0".to_string()),
        Some(secs) => Ok(secs),
        None => Err(format!("{text:?} is too long")),
    }
}

/// Reads a password: the first line of stdin when `from_stdin`, otherwise the
/// environment variable `env_name`.
pub fn read_password(from_stdin: bool, env_name: &'static str) -> Result<String, InputError> {
    let password = if from_stdin {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|cause| InputError::Read {
                origin: "<stdin>".into(),
                cause,
            })?;
        let text = String::from_utf8(bytes).map_err(|_| InputError::NotText {
            origin: "<stdin>".into(),
        })?;
        text.lines().next().unwrap_or("").to_string()
    } else {
        std::env::var(env_name).unwrap_or_default()
    };
    if password.is_empty() {
        return Err(InputError::NoPassword(env_name));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_the_first_character() {
        let check =
            |text: &str, expected: Format| assert_eq!(detect_format(text), expected, "{text:?}");
        check("{\"name\": \"a\"}", Format::Json);
        check("  \n[1]", Format::Json);
        check("\u{feff}{}", Format::Json);
        check("name: a\n", Format::Yaml);
        check("---\nname: a\n", Format::Yaml);
        check("- op: add\n", Format::Yaml);
    }

    #[test]
    fn json_and_yaml_documents_parse_to_the_same_object() {
        let check = |text: &str| {
            assert_eq!(
                parse_object(text, "t").unwrap(),
                json!({"name": "m1", "hardware_addrs": ["aa:bb:cc:dd:ee:ff"], "params": {"rack": 1}})
                    .as_object()
                    .unwrap()
                    .clone(),
                "{text}"
            )
        };
        check(r#"{"name": "m1", "hardware_addrs": ["aa:bb:cc:dd:ee:ff"], "params": {"rack": 1}}"#);
        check("name: m1\nhardware_addrs:\n  - aa:bb:cc:dd:ee:ff\nparams:\n  rack: 1\n");
        check("---\nname: m1\nhardware_addrs: [\"aa:bb:cc:dd:ee:ff\"]\nparams: {rack: 1}\n");
    }

    #[test]
    fn garbage_documents_are_clear_errors() {
        let check = |text: &str, expected: &str| {
            let error = parse_object(text, "m.yaml").unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.starts_with("m.yaml"), "{error}");
        };
        check("", "m.yaml is empty");
        check("  \n\t", "is empty");
        check(
            "{\"name\": ",
            "not valid JSON: EOF while parsing a value at line 1 column 9",
        );
        check(
            "{\"name\": \"a\",}",
            "not valid JSON: trailing comma at line 1 column 14",
        );
        check("just some words", "expected an object, found a string");
        check("42", "expected an object, found a number");
        check("[1, 2]", "expected an object, found a list");
        check("name: [unclosed\n", "not valid YAML");
        check("a: 1\n---\nb: 2\n", "not valid YAML");
        check("\u{0}\u{1}\u{2}binary", "not valid YAML");
    }

    #[test]
    fn unreadable_sources_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Source::File(dir.path().join("nope.json"));
        let error = missing.read().unwrap_err().to_string();
        assert!(
            error.starts_with("reading ") && error.contains("nope.json"),
            "{error}"
        );

        let binary = dir.path().join("binary.json");
        std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let error = read_object(&Source::File(binary)).unwrap_err().to_string();
        assert!(error.ends_with("binary.json is not UTF-8 text"), "{error}");

        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_INPUT_BYTES as usize + 1]).unwrap();
        let error = read_object(&Source::File(big)).unwrap_err().to_string();
        assert!(error.contains("is larger than"), "{error}");

        let good = dir.path().join("ok.yaml");
        std::fs::write(&good, "name: p1\n").unwrap();
        assert_eq!(read_object(&Source::File(good)).unwrap()["name"], "p1");

        assert_eq!(parse_source("-"), Ok(Source::Stdin));
        assert!(parse_source("").is_err());
    }

    #[test]
    fn patches_are_checked_before_sending() {
        let check =
            |text: &str, expected: Result<usize, &str>| match (parse_patch(text, "p"), expected) {
                (Ok(ops), Ok(n)) => assert_eq!(ops.len(), n, "{text}"),
                (Err(e), Err(wanted)) => {
                    let e = e.to_string();
                    assert!(e.contains(wanted), "{text}: {e}")
                }
                (got, wanted) => panic!("{text}: got {got:?}, wanted {wanted:?}"),
            };
        check(r#"[{"op": "add", "path": "/name", "value": "a"}]"#, Ok(1));
        check(
            "- op: remove\n  path: /params/rack\n- op: test\n  path: /revision\n  value: 3\n",
            Ok(2),
        );
        check(
            r#"[{"op": "move", "from": "/a", "path": "/b"}, {"op": "add", "path": "", "value": {}}]"#,
            Ok(2),
        );
        check("[]", Ok(0));
        check(
            r#"{"op": "add"}"#,
            Err("p: expected a JSON Patch list of operations, found an object"),
        );
        check(r#"[{"path": "/a"}]"#, Err("operation 0: missing `op`"));
        check(
            r#"[{"op": "add", "path": "/a", "value": 1}, {"op": "nuke", "path": "/a"}]"#,
            Err("operation 1: unknown op \"nuke\""),
        );
        check(r#"[{"op": "add", "path": "/a"}]"#, Err("add needs `value`"));
        check(
            r#"[{"op": "copy", "path": "/a"}]"#,
            Err("copy needs `from`"),
        );
        check(
            r#"[{"op": "remove", "path": "name"}]"#,
            Err("is not a JSON pointer"),
        );
        check(
            r#"[{"op": "remove", "path": 3}]"#,
            Err("`path` must be a string, found a number"),
        );
        check(
            "[1]",
            Err("operation 0: expected an object, found a number"),
        );
    }

    #[test]
    fn filters() {
        let check = |text: &str, expected: Result<(&str, &str), &str>| {
            let got = parse_filter(text).map(|f| (f.field, f.value));
            match expected {
                Ok((field, value)) => assert_eq!(got, Ok((field.to_string(), value.to_string()))),
                Err(wanted) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(wanted), "{text}: {e}")
                }
            }
        };
        check("name=foo", Ok(("name", "foo")));
        check("params.rack=r1", Ok(("params.rack", "r1")));
        check("meta.note=a=b", Ok(("meta.note", "a=b")));
        check("bootenv=", Ok(("bootenv", "")));
        check("name", Err("is not FIELD=VALUE"));
        check("=foo", Err("is not a field name"));
        check("na me=foo", Err("is not a field name"));
        check("limit=5", Err("use the --limit flag"));
        check("sort=name", Err("use the --sort flag"));
        check("cursor=abc", Err("is not a filter"));
    }

    #[test]
    fn set_and_unset_become_json_patch() {
        let check = |sets: &[&str], unsets: &[&str], expected: Value| {
            let sets: Vec<Assignment> = sets.iter().map(|s| parse_assignment(s).unwrap()).collect();
            let unsets: Vec<String> = unsets.iter().map(|s| parse_unset(s).unwrap()).collect();
            assert_eq!(Value::Array(set_ops(&sets, &unsets)), expected);
        };
        check(
            &[
                "bootenv=flatcar",
                "params.rack=r1",
                "params.count=5",
                "profiles=[\"a\",\"b\"]",
            ],
            &["params.old"],
            json!([
                {"op": "add", "path": "/bootenv", "value": "flatcar"},
                {"op": "add", "path": "/params/rack", "value": "r1"},
                {"op": "add", "path": "/params/count", "value": 5},
                {"op": "add", "path": "/profiles", "value": ["a", "b"]},
                {"op": "remove", "path": "/params/old"},
            ]),
        );
        check(
            &[
                "/params/kernel.console=ttyS0",
                "profiles.0=base",
                "profiles.-=extra",
                "name=\"42\"",
                "description=",
            ],
            &[],
            json!([
                {"op": "add", "path": "/params/kernel.console", "value": "ttyS0"},
                {"op": "replace", "path": "/profiles/0", "value": "base"},
                {"op": "add", "path": "/profiles/-", "value": "extra"},
                {"op": "add", "path": "/name", "value": "42"},
                {"op": "add", "path": "/description", "value": ""},
            ]),
        );
        check(
            &["params.a~b/c=1"],
            &[],
            json!([{"op": "add", "path": "/params/a~0b~1c", "value": 1}]),
        );
        for bad in ["novalue", "=1", "a..b=1", ".a=1", "a.=1", "/=1"] {
            assert!(parse_assignment(bad).is_err(), "{bad}");
        }
        assert!(parse_unset("").is_err());
    }

    #[test]
    fn command_line_values_are_json_or_strings() {
        let check = |text: &str, expected: Value| assert_eq!(parse_value(text), expected, "{text}");
        check("5", json!(5));
        check("true", json!(true));
        check("null", json!(null));
        check("\"5\"", json!("5"));
        check("{\"a\": [1]}", json!({"a": [1]}));
        check("r1", json!("r1"));
        check("ttyS0,115200", json!("ttyS0,115200"));
        check("", json!(""));
        check("{broken", json!("{broken"));
    }

    #[test]
    fn macs() {
        let check = |text: &str, expected: Option<&str>| {
            assert_eq!(parse_mac(text).ok().as_deref(), expected, "{text}")
        };
        check("AA:BB:CC:DD:EE:FF", Some("aa:bb:cc:dd:ee:ff"));
        check("aa-bb-cc-dd-ee-01", Some("aa:bb:cc:dd:ee:01"));
        check("aabb.ccdd.ee02", Some("aa:bb:cc:dd:ee:02"));
        check("aabbccddee03", Some("aa:bb:cc:dd:ee:03"));
        check("aa:bb:cc:dd:ee", None);
        check("aa:bb:cc:dd:ee:fg", None);
        check("a:bb:cc:dd:ee:ff0", None);
        check("", None);
    }

    #[test]
    fn durations() {
        let check = |text: &str, expected: Option<u64>| {
            assert_eq!(parse_duration_secs(text).ok(), expected, "{text}")
        };
        check("3600", Some(3600));
        check("90s", Some(90));
        check("15m", Some(900));
        check("8h", Some(28_800));
        check("7d", Some(604_800));
        check("0", None);
        check("1w", None);
        check("h", None);
        check("-5", None);
        check("99999999999999999999d", None);
    }
}
