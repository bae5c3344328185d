//! DHCP option values that are templates (`{{ machine.name }}.lab`),
//! rendered per reply. Parsed once and kept in a bounded cache: a boot storm
//! renders the same few templates thousands of times a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Distinct option templates kept parsed; past this the cache starts over.
pub const MAX_CACHED_TEMPLATES: usize = 1_024;
/// Rendered option text longer than this is refused (RFC 3396 allows long
/// options, but nothing useful in one reply is near this).
pub const MAX_RENDERED_BYTES: usize = 4_096;

const NAME: &str = "option";

#[derive(Default)]
pub struct OptionTemplates {
    parsed: Mutex<HashMap<String, Arc<tera::Tera>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Template(String),
    #[error("rendered {0} bytes; at most {MAX_RENDERED_BYTES}")]
    TooLong(usize),
}

fn describe(e: &tera::Error) -> String {
    // Tera's useful detail is in the error's sources.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl OptionTemplates {
    /// Whether `value` needs rendering at all.
    pub fn is_template(value: &str) -> bool {
        value.contains("{{") || value.contains("{%")
    }

    fn parsed(&self, source: &str) -> Result<Arc<tera::Tera>, RenderError> {
        if let Ok(cache) = self.parsed.lock() {
            if let Some(t) = cache.get(source) {
                return Ok(t.clone());
            }
        }
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_template(NAME, source)
            .map_err(|e| RenderError::Template(describe(&e)))?;
        let tera = Arc::new(tera);
        if let Ok(mut cache) = self.parsed.lock() {
            if cache.len() >= MAX_CACHED_TEMPLATES {
                cache.clear();
            }
            cache.insert(source.to_string(), tera.clone());
        }
        Ok(tera)
    }

    pub fn render(&self, source: &str, context: &tera::Context) -> Result<String, RenderError> {
        let tera = self.parsed(source)?;
        let text = tera
            .render(NAME, context)
            .map_err(|e| RenderError::Template(describe(&e)))?;
        if text.len() > MAX_RENDERED_BYTES {
            return Err(RenderError::TooLong(text.len()));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_over_the_request_and_machine_and_reports_errors() {
        let templates = OptionTemplates::default();
        let mut context = tera::Context::new();
        context.insert("machine", &serde_json::json!({"name": "web-1"}));
        context.insert("request", &serde_json::json!({"mac": "52:54:00:00:00:01"}));
        assert_eq!(
            templates
                .render("{{ machine.name }}.lab", &context)
                .unwrap(),
            "web-1.lab"
        );
        assert_eq!(
            templates
                .render(
                    "{% if machine %}m{% else %}u{% endif %}-{{ request.mac }}",
                    &context
                )
                .unwrap(),
            "m-52:54:00:00:00:01"
        );
        // Not escaped: option values are not HTML.
        context.insert("x", "a<b&c");
        assert_eq!(templates.render("{{ x }}", &context).unwrap(), "a<b&c");
        let e = templates
            .render("{{ machine.nope }}", &context)
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(templates.render("{{ unclosed", &context).is_err());
        assert!(OptionTemplates::is_template("{{ a }}"));
        assert!(!OptionTemplates::is_template("198.18.0.1"));
    }

    #[test]
    fn the_cache_is_bounded() {
        let templates = OptionTemplates::default();
        let context = tera::Context::new();
        for i in 0..(MAX_CACHED_TEMPLATES + 10) {
            templates
                .render(&format!("{{{{ {i} }}}}"), &context)
                .unwrap();
        }
        assert!(templates.parsed.lock().unwrap().len() <= MAX_CACHED_TEMPLATES);
    }
}
