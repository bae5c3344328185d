//! Cluster-wide preferences: the one singleton object, changed through the API like any other.

use serde::{Deserialize, Serialize};

use super::object::{Object, ObjectKind};
use super::validate::{check_name, code, ValidationError};

/// Longest token lifetime prefs may ask for: tokens are bearer credentials, so a lifetime is a
/// limit on damage, not a convenience setting.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// The largest `max_api_token_ttl_secs` prefs may set (90 days): long enough for automation
/// that rotates quarterly, short enough that a leaked token dies on its own.
pub const MAX_API_TOKEN_TTL_SECS: u64 = 90 * 24 * 3600;
/// Default ceiling on an API token's lifetime: a week.
pub const DEFAULT_MAX_API_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// Default ceiling on one stored object's size (compact JSON): 1 MiB, the default request body
/// limit, so any object a request can carry fits, and a run of patches cannot grow one past it.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 1 << 20;
/// Bounds operators may set `max_object_bytes` to: large templates may need more than the
/// default; every replica holds every object, and every event carries one, so not without end.
pub const MIN_MAX_OBJECT_BYTES: u64 = 16 << 10;
pub const MAX_MAX_OBJECT_BYTES: u64 = 16 << 20;

/// Default number of events kept for resuming the event stream (the per-node
/// `--event-retention` default before it became a pref).
pub const DEFAULT_EVENT_RETENTION: u64 = 100_000;
/// Bounds operators may set `event_retention` to: every event can carry an object of up to
/// `max_object_bytes`, and every replica keeps them all.
pub const MIN_EVENT_RETENTION: u64 = 16;
pub const MAX_EVENT_RETENTION: u64 = 1_000_000;

/// Cluster preferences. Every field has a default, so `{}` is a valid document and an update may
/// name only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Prefs {
    /// Bootenv given to a machine created without one.
    pub default_bootenv: String,
    /// Bootenv served to machines Cradle does not know (no machine has their MAC).
    pub unknown_bootenv: String,
    /// Lifetime of the create-only tokens handed to unknown machines (discovery).
    pub unknown_token_ttl_secs: u64,
    /// Lifetime of the tokens rendered into a known machine's templates, scoped to that machine.
    pub known_token_ttl_secs: u64,
    /// Longest lifetime an API token may be issued for (login or `POST /tokens`). Default 7 days,
    /// at most 90 days.
    pub max_api_token_ttl_secs: u64,
    /// Largest size of one stored object as compact JSON, checked after every change (each
    /// operation of a JSON Patch included). Default 1 MiB; between 16 KiB and 16 MiB. Raising it
    /// above the server's `--max-body-bytes` only helps objects grown by patches.
    pub max_object_bytes: u64,
    /// How many of the latest changes the event stream can resume from (`?since=`): the event
    /// log keeps this many and trims the oldest. Replicated, so every node keeps the same ones.
    /// Default 100000; between 16 and 1000000. Lowering it trims the surplus a little with each
    /// later change, not all at once.
    pub event_retention: u64,
    /// Set by the server; ignored on input.
    #[schema(read_only)]
    pub revision: u64,
}

impl Default for Prefs {
    fn default() -> Self {
        Self {
            default_bootenv: "discovery".into(),
            unknown_bootenv: "discovery".into(),
            unknown_token_ttl_secs: 600,
            known_token_ttl_secs: 3600,
            max_api_token_ttl_secs: DEFAULT_MAX_API_TOKEN_TTL_SECS,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            event_retention: DEFAULT_EVENT_RETENTION,
            revision: 0,
        }
    }
}

/// The key of the only prefs object.
pub const PREFS_KEY: &str = "prefs";

impl Object for Prefs {
    const KIND: ObjectKind = ObjectKind::Prefs;

    fn key(&self) -> String {
        PREFS_KEY.to_string()
    }

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn validate(&mut self) -> Result<(), ValidationError> {
        check_name("default_bootenv", &self.default_bootenv)?;
        check_name("unknown_bootenv", &self.unknown_bootenv)?;
        check_ttl("unknown_token_ttl_secs", self.unknown_token_ttl_secs)?;
        check_ttl("known_token_ttl_secs", self.known_token_ttl_secs)?;
        if self.max_api_token_ttl_secs == 0 || self.max_api_token_ttl_secs > MAX_API_TOKEN_TTL_SECS
        {
            return Err(ValidationError::new(
                "max_api_token_ttl_secs",
                code::INVALID_TTL,
                format!("must be between 1 and {MAX_API_TOKEN_TTL_SECS} seconds"),
            ));
        }
        if !(MIN_MAX_OBJECT_BYTES..=MAX_MAX_OBJECT_BYTES).contains(&self.max_object_bytes) {
            return Err(ValidationError::new(
                "max_object_bytes",
                code::INVALID_VALUE,
                format!("must be between {MIN_MAX_OBJECT_BYTES} and {MAX_MAX_OBJECT_BYTES} bytes"),
            ));
        }
        if !(MIN_EVENT_RETENTION..=MAX_EVENT_RETENTION).contains(&self.event_retention) {
            return Err(ValidationError::new(
                "event_retention",
                code::INVALID_VALUE,
                format!("must be between {MIN_EVENT_RETENTION} and {MAX_EVENT_RETENTION} events"),
            ));
        }
        Ok(())
    }

    fn index_terms(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

fn check_ttl(field: &str, secs: u64) -> Result<(), ValidationError> {
    if secs == 0 || secs > MAX_TOKEN_TTL_SECS {
        return Err(ValidationError::new(
            field,
            code::INVALID_TTL,
            format!("must be between 1 and {MAX_TOKEN_TTL_SECS} seconds"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::{check_err, check_ok};

    #[test]
    fn empty_document_gives_defaults() {
        let p: Prefs = check_ok("{}");
        assert_eq!(p, Prefs::default());
        assert_eq!(p.key(), "prefs");
        let p: Prefs = check_ok(r#"{"unknown_bootenv": "sledgehammer"}"#);
        assert_eq!(p.unknown_bootenv, "sledgehammer");
        assert_eq!(p.default_bootenv, "discovery");
    }

    #[test]
    fn bad_prefs_are_refused() {
        check_err::<Prefs>(
            r#"{"unknown_token_ttl_secs": 0}"#,
            "unknown_token_ttl_secs",
            code::INVALID_TTL,
        );
        check_err::<Prefs>(
            r#"{"known_token_ttl_secs": 99999999999}"#,
            "known_token_ttl_secs",
            code::INVALID_TTL,
        );
        check_err::<Prefs>(
            r#"{"default_bootenv": ""}"#,
            "default_bootenv",
            code::INVALID_NAME,
        );
        check_err::<Prefs>(
            r#"{"default_boot_env": "x"}"#,
            "default_boot_env",
            code::UNKNOWN_FIELD,
        );
        check_err::<Prefs>(
            r#"{"unknown_token_ttl_secs": -5}"#,
            "unknown_token_ttl_secs",
            code::INVALID_VALUE,
        );
        check_err::<Prefs>(
            r#"{"max_api_token_ttl_secs": 31622400}"#,
            "max_api_token_ttl_secs",
            code::INVALID_TTL,
        );
        check_err::<Prefs>(
            r#"{"max_object_bytes": 1024}"#,
            "max_object_bytes",
            code::INVALID_VALUE,
        );
        check_err::<Prefs>(
            r#"{"event_retention": 15}"#,
            "event_retention",
            code::INVALID_VALUE,
        );
        check_err::<Prefs>(
            r#"{"event_retention": 1000001}"#,
            "event_retention",
            code::INVALID_VALUE,
        );
    }
}
