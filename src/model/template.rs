//! Templates (reusable tera bodies) and the syntax check every template string in the model goes
//! through before it is accepted: a broken template is refused at write time, not discovered by a
//! machine failing to boot.

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::template_limits::check_limits;
use super::validate::{
    check_description, check_len, check_name, code, ValidationError, MAX_TEMPLATE_LEN,
};

/// A named tera template, included by others (`{% include "id" %}`) or named by a bootenv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// tera source.
    #[serde(default)]
    pub body: String,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Object for Template {
    const KIND: ObjectKind = ObjectKind::Templates;

    fn key(&self) -> String {
        self.id.clone()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("id", &self.id)?;
        check_description(&self.description)?;
        check_template_field("body", &self.id, &self.body)
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![("id", self.id.clone())]
    }
}

/// A template that does not parse. `line` and `column` are 1-based; they are absent only for the
/// few tera errors that carry no position (duplicate block or macro names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("template {name:?}{}: {message}", position(*.line, *.column))]
pub struct TemplateError {
    pub name: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l} column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

impl TemplateError {
    /// The same problem as a [`ValidationError`] on `field`, position in the message.
    pub fn into_validation(self, field: &str) -> ValidationError {
        ValidationError::new(field, code::INVALID_TEMPLATE, self.to_string())
    }
}

/// Checks that `body` is valid tera syntax. `name` is only used in the error.
///
/// This parses the template exactly as `Tera::add_raw_template` does (`tera::Template::new` is
/// that method's parse step) but stops before `add_raw_template` resolves `{% extends %}` parents
/// and `{% import %}`ed macro files: those name *other stored templates*, so whether they exist is
/// the store's concern, and a template that extends or imports one must not fail a syntax check.
/// (`{% include %}` is only resolved at render time in tera 1, so either way it passes; unknown
/// filters and functions are also only found at render time.)
///
/// Before tera sees the body, it must fit the bounds in `template_limits` (tag length, nesting,
/// operators) and [`MAX_TEMPLATE_LEN`]: tera's parser can overflow the stack or take seconds on
/// inputs beyond them, so this function is safe to call on anything a client sends.
pub fn check_template(name: &str, body: &str) -> Result<(), TemplateError> {
    if body.len() > MAX_TEMPLATE_LEN {
        return Err(TemplateError {
            name: name.to_string(),
            line: None,
            column: None,
            message: format!("longer than {MAX_TEMPLATE_LEN} bytes"),
        });
    }
    // Plain text cannot fail to parse, and most option values and paths are plain text.
    if !body.contains('{') {
        return Ok(());
    }
    if let Err(e) = check_limits(body) {
        let (line, column) = line_column(body, e.offset);
        return Err(TemplateError {
            name: name.to_string(),
            line: Some(line),
            column: Some(column),
            message: e.message,
        });
    }
    match tera::Template::new(name, None, body) {
        Ok(_) => Ok(()),
        Err(e) => Err(template_error(name, body, &e)),
    }
}

/// [`check_template`] plus the size limit, as a [`ValidationError`] on `field`.
pub(crate) fn check_template_field(
    field: &str,
    name: &str,
    body: &str,
) -> Result<(), ValidationError> {
    check_len(field, body, MAX_TEMPLATE_LEN)?;
    check_template(name, body).map_err(|e| e.into_validation(field))
}

/// Digs the pest position out of a tera error. tera formats the pest error into the message of an
/// error somewhere in the `source()` chain (`add_raw_template` wraps it in "Failed to parse"), as:
///
/// ```text
///  --> 3:12
///   |
/// 3 | {{ a b }}
///   |      ^---
///   |
///   = expected `or`, `and`, …
/// ```
fn template_error(name: &str, body: &str, e: &tera::Error) -> TemplateError {
    let mut messages = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        messages.push(s.to_string());
        source = s.source();
    }
    for m in &messages {
        if let Some((line, column)) = pest_position(m) {
            let message = m
                .lines()
                .filter_map(|l| l.trim_start().strip_prefix("= "))
                .collect::<Vec<_>>()
                .join("; ");
            return TemplateError {
                name: name.to_string(),
                line: Some(line),
                column: Some(column),
                message: if message.is_empty() {
                    m.clone()
                } else {
                    message
                },
            };
        }
    }
    // Not a pest error: the innermost message is the specific one ("Integer out of bounds: `…`").
    let message = messages.last().cloned().unwrap_or_default();
    let (line, column) = literal_position(body, &message).unzip();
    TemplateError {
        name: name.to_string(),
        line,
        column,
        message,
    }
}

fn pest_position(message: &str) -> Option<(usize, usize)> {
    let arrow = message
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))?;
    let (line, column) = arrow.trim().split_once(':')?;
    Some((line.parse().ok()?, column.parse().ok()?))
}

/// tera's number-literal errors quote the literal but give no position; its first occurrence in
/// the body is where it is.
fn literal_position(body: &str, message: &str) -> Option<(usize, usize)> {
    let literal = message
        .strip_prefix("Integer out of bounds: `")
        .or_else(|| message.strip_prefix("Float out of bounds: `"))?
        .strip_suffix('`')?;
    Some(line_column(body, body.find(literal)?))
}

/// 1-based line and column (in characters, as pest counts) of byte `offset` in `body`.
fn line_column(body: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(body.len());
    let before = body.get(..offset).unwrap_or(body);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    /// One check for template syntax: `Ok` or the exact position and a fragment of the message.
    fn check(body: &str, expected: Result<(), (Option<usize>, Option<usize>, &str)>) {
        let got = check_template("ipxe-boot", body);
        match expected {
            Ok(()) => assert_eq!(got, Ok(()), "body {body:?}"),
            Err((line, column, fragment)) => {
                let err = got.expect_err(body);
                assert_eq!(err.name, "ipxe-boot");
                assert_eq!((err.line, err.column), (line, column), "{err}");
                assert!(err.message.contains(fragment), "{err}");
                assert!(!err.message.contains("-->"), "{err}");
            }
        }
    }

    #[test]
    fn good_templates_parse() {
        check(
            "#!ipxe\nkernel {{ env.kernel }} {{ boot_params }}\nboot\n",
            Ok(()),
        );
        check(
            "{% for m in machine.hardware_addrs %}{{ m | upper }}{% endfor %}",
            Ok(()),
        );
        check("", Ok(()));
    }

    #[test]
    fn references_to_other_templates_pass_the_syntax_check() {
        // Resolving these is the store's and the renderer's job, not the syntax check's.
        check("{% include \"common-ipxe\" %}\nboot", Ok(()));
        check("{% include \"a\" ignore missing %}", Ok(()));
        check(
            "{% extends \"base\" %}{% block x %}y{% endblock x %}",
            Ok(()),
        );
        check("{% import \"macros\" as m %}{{ m::kernel() }}", Ok(()));
    }

    #[test]
    fn syntax_errors_report_line_and_column() {
        check(
            "#!ipxe\nkernel {{ a b }}\n",
            Err((Some(2), Some(13), "expected")),
        );
        check(
            "{% if x %}\nunterminated",
            Err((Some(2), Some(13), "expected")),
        );
        check(
            "a\nb\n  {% for x in y %}{% endif %}",
            Err((Some(3), Some(19), "endfor")),
        );
        check("{{ a | }}", Err((Some(1), Some(8), "identifier")));
        check(
            "x\n  {{ 99999999999999999999999 }}",
            Err((Some(2), Some(6), "out of bounds")),
        );
        check(
            "{% block a %}{% endblock a %}{% block a %}{% endblock a %}",
            Err((None, None, "duplicated")),
        );
    }

    /// Each of these overflowed the stack (aborting the process) or parsed for minutes in tera
    /// 1.20 before the limits; now each is refused with a position, without reaching tera.
    #[test]
    fn hostile_bodies_are_refused_quickly() {
        let ifs = format!(
            "{}{}",
            "{% if a %}".repeat(1000),
            "{% endif %}".repeat(1000)
        );
        check(&ifs, Err((Some(1), Some(161), "blocks nested")));
        let calls = format!("{{{{ {}1{} }}}}", "f(a=".repeat(10), ")".repeat(10));
        check(&calls, Err((Some(1), Some(13), "calls and array literals")));
        let chain = format!("x\n{{{{ a{} }}}}", " ~ a".repeat(10_000));
        check(&chain, Err((Some(2), Some(1), "longer than")));
        let parens = format!("{{{{ {}a{} }}}}", "(".repeat(1000), ")".repeat(1000));
        check(&parens, Err((Some(1), Some(20), "brackets nested")));
        let huge = "x".repeat(MAX_TEMPLATE_LEN + 1);
        check(&huge, Err((None, None, "longer than")));
    }

    #[test]
    fn template_objects_round_trip_and_refuse_bad_bodies() {
        let t: Template = check_ok(r##"{"id": "ipxe.tmpl", "body": "#!ipxe\nboot\n"}"##);
        assert_eq!(t.key(), "ipxe.tmpl");
        let err = check_err::<Template>(
            r#"{"id": "t", "body": "line1\n{{ oops"}"#,
            "body",
            code::INVALID_TEMPLATE,
        );
        assert!(err.message.contains("line 2 column 8"), "{err}");
        check_err::<Template>(r#"{"id": "a b"}"#, "id", code::INVALID_NAME);
        check_err::<Template>(r#"{"body": ""}"#, "id", code::MISSING_FIELD);
        check_err::<Template>(r#"{"id": "t", "bdy": ""}"#, "bdy", code::UNKNOWN_FIELD);
    }
}
