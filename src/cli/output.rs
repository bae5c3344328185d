//! How results are printed: pretty JSON, YAML, or an aligned table.
//!
//! The rule for the default (no `-o`): list verbs print a table; everything
//! else (one object, params, status, a new token) prints JSON. Tables are
//! for people and may abbreviate (long descriptions are cut, nested values
//! are shown compactly); JSON and YAML always carry everything.

use std::io::Write as _;

use serde_json::Value;

use super::Kind;

/// Longest text a table cell shows before it is cut with `…`.
const MAX_CELL_CHARS: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Yaml,
    Table,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("formatting the result as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("formatting the result as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// What a result is, which decides its table layout and default format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A list of objects of one kind.
    List(Kind),
    /// One object of a kind.
    Object(Kind),
    /// `GET .../effective-params`: name → {value, source}.
    Effective,
    /// `GET /api/v1/status`: this node's fields, then a table of members.
    Status,
    /// Anything else: a map shown as KEY VALUE rows.
    Map,
}

impl Shape {
    pub fn default_format(self) -> OutputFormat {
        match self {
            Shape::List(_) => OutputFormat::Table,
            _ => OutputFormat::Json,
        }
    }
}

/// How a cell shows its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    /// An object shown by its keys.
    Keys,
    /// Unix seconds shown as UTC time.
    Time,
    /// A token scope shown as `level[/kind[/object]]`.
    Scope,
    /// Free text, cut to [`MAX_CELL_CHARS`].
    Short,
}

struct Column {
    header: &'static str,
    /// A dotted path into the object.
    path: &'static str,
    style: Style,
}

const fn col(header: &'static str, path: &'static str, style: Style) -> Column {
    Column {
        header,
        path,
        style,
    }
}

const MACHINES_COLUMNS: &[Column] = &[
    col("UUID", "uuid", Style::Plain),
    col("NAME", "name", Style::Plain),
    col("MACS", "hardware_addrs", Style::Plain),
    col("ADDRESS", "address", Style::Plain),
    col("BOOTENV", "bootenv", Style::Plain),
];

const PROFILES_COLUMNS: &[Column] = &[
    col("NAME", "name", Style::Plain),
    col("PROFILES", "profiles", Style::Plain),
    col("PARAMS", "params", Style::Keys),
    col("DESCRIPTION", "description", Style::Short),
];

const PARAMS_COLUMNS: &[Column] = &[
    col("NAME", "name", Style::Plain),
    col("SECURE", "secure", Style::Plain),
    col("DEFAULT", "default", Style::Short),
    col("DESCRIPTION", "description", Style::Short),
];

const BOOTENVS_COLUMNS: &[Column] = &[
    col("NAME", "name", Style::Plain),
    col("ARCHES", "arches", Style::Keys),
    col("ONLY_UNKNOWN", "only_unknown", Style::Plain),
    col("DESCRIPTION", "description", Style::Short),
];

const TEMPLATES_COLUMNS: &[Column] = &[
    col("ID", "id", Style::Plain),
    col("DESCRIPTION", "description", Style::Short),
];

const SUBNETS_COLUMNS: &[Column] = &[
    col("NAME", "name", Style::Plain),
    col("CIDR", "cidr", Style::Plain),
    col("MODE", "mode", Style::Plain),
    col("ENABLED", "enabled", Style::Plain),
    col("LEASE_SECS", "lease_secs", Style::Plain),
];

const RESERVATIONS_COLUMNS: &[Column] = &[
    col("ADDRESS", "address", Style::Plain),
    col("MAC", "hardware_addr", Style::Plain),
    col("SUBNET", "subnet", Style::Plain),
    col("DESCRIPTION", "description", Style::Short),
];

const LEASES_COLUMNS: &[Column] = &[
    col("ADDRESS", "address", Style::Plain),
    col("SUBNET", "subnet", Style::Plain),
    col("MAC", "hardware_addr", Style::Plain),
    col("HOSTNAME", "hostname", Style::Short),
    col("STATE", "state", Style::Plain),
    col("EXPIRES", "expires_at_unix", Style::Time),
    col("NODE", "node", Style::Plain),
];

const USERS_COLUMNS: &[Column] = &[
    col("NAME", "name", Style::Plain),
    col("ADMIN", "admin", Style::Plain),
    col("DESCRIPTION", "description", Style::Short),
];

const TOKENS_COLUMNS: &[Column] = &[
    col("ID", "id", Style::Plain),
    col("USER", "user", Style::Plain),
    col("SCOPE", "scope", Style::Scope),
    col("EXPIRES", "expires_at_unix", Style::Time),
    col("REVOKED", "revoked", Style::Plain),
    col("DESCRIPTION", "description", Style::Short),
];

const PREFS_COLUMNS: &[Column] = &[
    col("DEFAULT_BOOTENV", "default_bootenv", Style::Plain),
    col("UNKNOWN_BOOTENV", "unknown_bootenv", Style::Plain),
    col(
        "UNKNOWN_TOKEN_TTL_SECS",
        "unknown_token_ttl_secs",
        Style::Plain,
    ),
    col("KNOWN_TOKEN_TTL_SECS", "known_token_ttl_secs", Style::Plain),
];

/// The members in `GET /api/v1/status`.
const MEMBER_COLUMNS: &[Column] = &[
    col("ID", "id", Style::Plain),
    col("API_ADDR", "api_addr", Style::Plain),
    col("RPC_ADDR", "rpc_addr", Style::Plain),
    col("VOTER", "voter", Style::Plain),
    col("MATCHED_INDEX", "matched_index", Style::Plain),
    col("LAG", "lag", Style::Plain),
];

fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Machines => MACHINES_COLUMNS,
        Kind::Profiles => PROFILES_COLUMNS,
        Kind::Params => PARAMS_COLUMNS,
        Kind::Bootenvs => BOOTENVS_COLUMNS,
        Kind::Templates => TEMPLATES_COLUMNS,
        Kind::Subnets => SUBNETS_COLUMNS,
        Kind::Reservations => RESERVATIONS_COLUMNS,
        Kind::Leases => LEASES_COLUMNS,
        Kind::Users => USERS_COLUMNS,
        Kind::Tokens => TOKENS_COLUMNS,
        Kind::Prefs => PREFS_COLUMNS,
    }
}

/// Renders `value` as `format`, ending with a newline.
pub fn render(value: &Value, shape: Shape, format: OutputFormat) -> Result<String, RenderError> {
    match format {
        OutputFormat::Json => Ok(serde_json::to_string_pretty(value)? + "\n"),
        OutputFormat::Yaml => Ok(serde_yaml::to_string(value)?),
        OutputFormat::Table => Ok(render_table(value, shape)),
    }
}

fn render_table(value: &Value, shape: Shape) -> String {
    match (shape, value) {
        (Shape::List(kind), Value::Array(items)) => object_table(kind, items),
        (Shape::Object(kind), object @ Value::Object(_)) => {
            object_table(kind, std::slice::from_ref(object))
        }
        (Shape::Effective, Value::Object(map)) => {
            let rows = sorted(map)
                .into_iter()
                .map(|(name, entry)| {
                    vec![
                        clean(name),
                        cell(entry.get("value"), Style::Short),
                        source_cell(entry.get("source")),
                    ]
                })
                .collect::<Vec<_>>();
            table(&["NAME", "VALUE", "SOURCE"], &rows)
        }
        (Shape::Status, Value::Object(map)) => {
            let rows = sorted(map)
                .into_iter()
                .filter(|(key, _)| key.as_str() != "members")
                .map(|(key, value)| vec![clean(key), cell(Some(value), Style::Plain)])
                .collect::<Vec<_>>();
            let mut out = table(&["KEY", "VALUE"], &rows);
            if let Some(Value::Array(members)) = map.get("members") {
                out.push('\n');
                out.push_str(&columns_table(MEMBER_COLUMNS, members));
            }
            out
        }
        (_, Value::Object(map)) => {
            let rows = sorted(map)
                .into_iter()
                .map(|(key, value)| vec![clean(key), cell(Some(value), Style::Plain)])
                .collect::<Vec<_>>();
            table(&["KEY", "VALUE"], &rows)
        }
        // Nothing tabular about it: show it as compact JSON.
        (_, other) => format!("{}\n", cell(Some(other), Style::Plain)),
    }
}

/// Map entries in key order, whatever order the JSON map keeps.
fn sorted(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn object_table(kind: Kind, items: &[Value]) -> String {
    columns_table(columns(kind), items)
}

fn columns_table(columns: &[Column], items: &[Value]) -> String {
    let headers: Vec<&str> = columns.iter().map(|c| c.header).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|c| cell(lookup(item, c.path), c.style))
                .collect()
        })
        .collect();
    table(&headers, &rows)
}

fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |current, segment| current.get(segment))
}

/// Left-aligned columns two spaces apart, no trailing spaces. An empty list
/// prints only the header.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, text) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (text, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(text);
            line.extend(std::iter::repeat_n(' ', width - text.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One cell: `-` for absent or null, strings as they are, lists of scalars
/// joined with commas, anything else as compact JSON; never more than one line.
fn cell(value: Option<&Value>, style: Style) -> String {
    let text = match (value, style) {
        (None | Some(Value::Null), _) => return "-".to_string(),
        (Some(Value::Object(map)), Style::Keys) => {
            map.keys().map(String::as_str).collect::<Vec<_>>().join(",")
        }
        (Some(Value::Number(n)), Style::Time) => match n.as_u64() {
            Some(secs) => format_unix(secs),
            None => n.to_string(),
        },
        (Some(Value::Object(map)), Style::Scope) => {
            let mut parts = Vec::new();
            for field in ["level", "kind", "object"] {
                match map.get(field) {
                    Some(Value::String(s)) => parts.push(s.clone()),
                    Some(Value::Null) | None => break,
                    Some(other) => parts.push(other.to_string()),
                }
            }
            parts.join("/")
        }
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Array(items)), _) if items.iter().all(|v| !v.is_array() && !v.is_object()) => {
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        }
        (Some(other), _) => other.to_string(),
    };
    let text = clean(&text);
    if style == Style::Short && text.chars().count() > MAX_CELL_CHARS {
        let cut: String = text.chars().take(MAX_CELL_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Where an effective param came from: the source object's fields
/// (`profile/rack-a`), or compact JSON if it has another shape.
fn source_cell(source: Option<&Value>) -> String {
    match source {
        Some(Value::Object(map)) => {
            let parts: Vec<String> = map
                .values()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            clean(&parts.join("/"))
        }
        other => cell(other, Style::Plain),
    }
}

/// Control characters (newlines, tabs, escapes) become spaces so a cell
/// cannot break the table or the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_unix(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes rendered text to stdout. A closed pipe (`cradle … | head`) comes
/// back as an error of kind `BrokenPipe`, which `run` treats as success.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: Value, shape: Shape, expected: &str) {
        assert_eq!(
            render(&value, shape, OutputFormat::Table).unwrap(),
            expected
        );
    }

    #[test]
    fn machine_tables_are_aligned() {
        check(
            json!([
                {"uuid": "0b6f3c52-6a5c-4a57-9d55-2b2f0f8a0c11", "name": "node-a", "hardware_addrs": ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"], "address": "10.0.0.5", "bootenv": "flatcar", "params": {"x": 1}},
                {"uuid": "5d1c7a1e-0000-4000-8000-000000000002", "name": "b", "hardware_addrs": [], "address": null, "bootenv": ""},
            ]),
            Shape::List(Kind::Machines),
            "\
UUID                                  NAME    MACS                                 ADDRESS   BOOTENV
0b6f3c52-6a5c-4a57-9d55-2b2f0f8a0c11  node-a  aa:bb:cc:dd:ee:01,aa:bb:cc:dd:ee:02  10.0.0.5  flatcar
5d1c7a1e-0000-4000-8000-000000000002  b                                            -
",
        );
    }

    #[test]
    fn an_empty_list_is_just_the_header() {
        check(json!([]), Shape::List(Kind::Templates), "ID  DESCRIPTION\n");
    }

    #[test]
    fn cells_are_one_line_and_abbreviated() {
        let long = "x".repeat(100);
        check(
            json!([
                {"name": "p1", "profiles": ["base", "rack"], "params": {"ntp": ["a"], "rack": "r1"}, "description": "two\nlines\ttab"},
                {"name": "p2", "description": long},
            ]),
            Shape::List(Kind::Profiles),
            &format!(
                "\
NAME  PROFILES   PARAMS    DESCRIPTION
p1    base,rack  ntp,rack  two lines tab
p2    -          -         {}…
",
                "x".repeat(MAX_CELL_CHARS - 1)
            ),
        );
    }

    #[test]
    fn tokens_show_scope_and_time() {
        check(
            json!([
                {"id": "t1", "user": "admin", "scope": {"level": "admin", "kind": null, "object": null}, "expires_at_unix": 0, "revoked": false, "description": ""},
                {"id": "t2", "user": "m", "scope": {"level": "write", "kind": "machines", "object": "u1"}, "expires_at_unix": 1_767_225_599u64, "revoked": true, "description": "boot"},
            ]),
            Shape::List(Kind::Tokens),
            "\
ID  USER   SCOPE              EXPIRES               REVOKED  DESCRIPTION
t1  admin  admin              1970-01-01T00:00:00Z  false
t2  m      write/machines/u1  2025-12-31T23:59:59Z  true     boot
",
        );
    }

    #[test]
    fn one_object_as_a_table_is_one_row() {
        check(
            json!({"name": "admin", "admin": true, "description": "the first"}),
            Shape::Object(Kind::Users),
            "NAME   ADMIN  DESCRIPTION\nadmin  true   the first\n",
        );
    }

    #[test]
    fn effective_params_and_maps() {
        check(
            json!({
                "rack": {"value": "r1", "source": {"kind": "profile", "name": "rack-a"}},
                "ntp": {"value": ["a", "b"], "source": {"kind": "default"}},
            }),
            Shape::Effective,
            "NAME  VALUE  SOURCE\nntp   a,b    default\nrack  r1     profile/rack-a\n",
        );
        check(
            json!({"role": "leader", "members": [{"id": 1}], "leader": null}),
            Shape::Map,
            "KEY      VALUE\nleader   -\nmembers  [{\"id\":1}]\nrole     leader\n",
        );
        check(json!("just text"), Shape::Map, "just text\n");
        check(
            json!({
                "role": "leader", "leader": 1, "term": 3,
                "state_digest": "9f86d081", "state_digest_index": 41,
                "members": [
                    {"id": 1, "api_addr": "10.0.0.1:8443", "rpc_addr": "10.0.0.1:8444", "voter": true, "matched_index": 40, "lag": 0},
                    {"id": 2, "api_addr": "10.0.0.2:8443", "rpc_addr": "10.0.0.2:8444", "voter": false, "matched_index": null, "lag": null},
                ],
            }),
            Shape::Status,
            "\
KEY                 VALUE
leader              1
role                leader
state_digest        9f86d081
state_digest_index  41
term                3

ID  API_ADDR       RPC_ADDR       VOTER  MATCHED_INDEX  LAG
1   10.0.0.1:8443  10.0.0.1:8444  true   40             0
2   10.0.0.2:8443  10.0.0.2:8444  false  -              -
",
        );
        check(json!(5), Shape::Map, "5\n");
    }

    #[test]
    fn json_and_yaml() {
        let value = json!({"n": [1, 2], "name": "a"});
        assert_eq!(
            render(&value, Shape::Map, OutputFormat::Json).unwrap(),
            "{\n  \"n\": [\n    1,\n    2\n  ],\n  \"name\": \"a\"\n}\n"
        );
        assert_eq!(
            render(&value, Shape::Map, OutputFormat::Yaml).unwrap(),
            "n:\n- 1\n- 2\nname: a\n"
        );
    }

    #[test]
    fn default_formats() {
        assert_eq!(
            Shape::List(Kind::Machines).default_format(),
            OutputFormat::Table
        );
        assert_eq!(
            Shape::Object(Kind::Machines).default_format(),
            OutputFormat::Json
        );
        assert_eq!(Shape::Effective.default_format(), OutputFormat::Json);
        assert_eq!(Shape::Map.default_format(), OutputFormat::Json);
        assert_eq!(Shape::Status.default_format(), OutputFormat::Json);
    }

    #[test]
    fn unix_times() {
        let check = |secs: u64, expected: &str| assert_eq!(format_unix(secs), expected);
        check(0, "1970-01-01T00:00:00Z");
        check(951_782_400, "2000-02-29T00:00:00Z");
        check(1_709_251_199, "2024-02-29T23:59:59Z");
        check(4_107_542_400, "2100-03-01T00:00:00Z");
    }
}
