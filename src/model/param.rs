//! Param definitions: a name, a JSON Schema every value must satisfy, and an optional default
//! used when no machine or profile sets the param.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::object::{Object, ObjectKind};
use super::validate::{check_description, check_name, code, ValidationError};

fn any_schema() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema; absent means `{}` (any value).
    #[serde(default = "any_schema")]
    pub schema: Value,
    /// Used when no machine or profile sets the param; must satisfy `schema`.
    #[serde(default)]
    pub default: Option<Value>,
    /// Values are secrets: the API redacts them for callers without the right scope, and errors
    /// about them never quote the value.
    #[serde(default)]
    pub secure: bool,
    /// Set by the server; ignored on input.
    #[serde(default)]
    #[schema(read_only)]
    pub revision: u64,
}

impl Default for Param {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            schema: any_schema(),
            default: None,
            secure: false,
            revision: 0,
        }
    }
}

impl Param {
    /// Compiles `schema`. Callers checking many values (a bulk import) compile once and use
    /// [`check_compiled`]; remote `$ref`s are refused, since resolving them would make validation
    /// depend on the network.
    pub fn compile(&self) -> Result<jsonschema::Validator, ValidationError> {
        jsonschema::validator_for(&self.schema).map_err(|e| {
            ValidationError::new(
                "schema",
                code::INVALID_SCHEMA,
                format!("not a valid JSON Schema: {e}"),
            )
        })
    }
}

impl Object for Param {
    const KIND: ObjectKind = ObjectKind::Params;

    fn key(&self) -> String {
        self.name.clone()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("name", &self.name)?;
        check_description(&self.description)?;
        let validator = self.compile()?;
        if let Some(default) = &self.default {
            check_compiled(self, &validator, default)
                .map_err(|e| ValidationError::new("default", code::INVALID_DEFAULT, e.message))?;
        }
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("secure", self.secure.to_string()),
        ]
    }
}

/// Checks one value of param `def` against its schema. The error's field is `params.<name>`, as
/// the value sits in a machine's or profile's `params`.
pub fn check_param_value(def: &Param, value: &Value) -> Result<(), ValidationError> {
    let validator = def.compile()?;
    check_compiled(def, &validator, value)
}

/// [`check_param_value`] with an already compiled schema (from [`Param::compile`]).
pub fn check_compiled(
    def: &Param,
    validator: &jsonschema::Validator,
    value: &Value,
) -> Result<(), ValidationError> {
    match validator.validate(value) {
        Ok(()) => Ok(()),
        Err(e) => {
            let at = e.instance_path.as_str();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" at {at}")
            };
            // A secure param's value must not travel back in an error message or a log line.
            let what = if def.secure {
                e.masked().to_string()
            } else {
                e.to_string()
            };
            Err(ValidationError::new(
                format!("params.{}", def.name),
                code::INVALID_PARAM_VALUE,
                format!(
                    "value{at} does not match the schema of {:?}: {what}",
                    def.name
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    #[test]
    fn params_round_trip() {
        let p: Param = check_ok(
            r#"{"name": "ntp-servers", "schema": {"type": "array", "items": {"type": "string"}},
                "default": ["pool.ntp.org"]}"#,
        );
        assert_eq!(p.default, Some(json!(["pool.ntp.org"])));
        let p: Param = check_ok(r#"{"name": "anything"}"#);
        assert_eq!(p.schema, json!({}));
        let p: Param = check_ok(r#"{"name": "flag", "schema": true, "secure": true}"#);
        assert_eq!(p.index_terms()[1], ("secure", "true".to_string()));
    }

    #[test]
    fn bad_schemas_and_defaults_are_refused() {
        check_err::<Param>(
            r#"{"name": "p", "schema": {"type": "integr"}}"#,
            "schema",
            code::INVALID_SCHEMA,
        );
        check_err::<Param>(
            r#"{"name": "p", "schema": {"minimum": "three"}}"#,
            "schema",
            code::INVALID_SCHEMA,
        );
        check_err::<Param>(
            r#"{"name": "p", "schema": 5}"#,
            "schema",
            code::INVALID_SCHEMA,
        );
        check_err::<Param>(
            r#"{"name": "p", "schema": {"$ref": "https://example.com/s.json"}}"#,
            "schema",
            code::INVALID_SCHEMA,
        );
        check_err::<Param>(
            r#"{"name": "p", "schema": {"type": "integer"}, "default": "x"}"#,
            "default",
            code::INVALID_DEFAULT,
        );
        check_err::<Param>(
            r#"{"name": "p", "secure": "yes"}"#,
            "secure",
            code::INVALID_TYPE,
        );
        check_err::<Param>(
            r#"{"name": "p", "schma": {}}"#,
            "schma",
            code::UNKNOWN_FIELD,
        );
    }

    /// One check for values against a definition: `None` for accepted, else the expected message
    /// fragment.
    fn check_value(def: &Param, value: Value, expected: Option<&str>) {
        let got = check_param_value(def, &value);
        match expected {
            None => assert_eq!(got, Ok(()), "{value}"),
            Some(fragment) => {
                let err = got.expect_err("refused");
                assert_eq!(err.code, code::INVALID_PARAM_VALUE);
                assert_eq!(err.field, format!("params.{}", def.name));
                assert!(err.message.contains(fragment), "{err}");
            }
        }
    }

    #[test]
    fn values_are_checked_against_the_schema() {
        let def = Param {
            name: "ports".into(),
            schema: json!({"type": "array", "items": {"type": "integer", "maximum": 65535}}),
            ..Param::default()
        };
        check_value(&def, json!([22, 443]), None);
        check_value(&def, json!([22, 70000]), Some("at /1"));
        check_value(&def, json!("22"), Some("not of type"));
    }

    #[test]
    fn secure_values_are_not_quoted_in_errors() {
        let def = Param {
            name: "root-password".into(),
            schema: json!({"type": "string", "maxLength": 4}),
            secure: true,
            ..Param::default()
        };
        let err = check_param_value(&def, &json!("hunter2-secret")).expect_err("too long");
        assert!(!err.message.contains("hunter2"), "{err}");
    }
}
