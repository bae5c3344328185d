//! The data model: every kind of object Cradle stores, as typed, validated Rust values.
//!
//! This module owns
//! - the object kinds and their fields ([`Machine`], [`Profile`], [`Param`], [`BootEnv`],
//!   [`Template`], [`Subnet`], [`Reservation`], [`Lease`], [`User`], [`TokenInfo`], [`Prefs`]),
//!   their JSON form (snake_case, unknown fields refused) and their OpenAPI schemas;
//! - the [`Object`] trait the store, the state machine and the API program against: key,
//!   revision, normalization + validation, and the terms the store indexes and keeps unique;
//! - decoding JSON into objects with errors that name the field ([`decode`]);
//! - the validation rules and their stable error codes ([`ValidationError`], [`code`]);
//! - tera syntax checking for every template string ([`check_template`]);
//! - param resolution, machine → profiles → global → default ([`effective_params`]).
//!
//! It does not own storage, revisions (the server sets them from the replicated log), rendering,
//! or any check that needs *other* objects (does a named bootenv exist, does a param value match
//! its definition, do two subnets overlap): those belong to the store, which has them all.
//! Everything here is deterministic, so the state machine can validate inside apply and reach the
//! same answer on every replica. Validation is cheap except for template parsing, which is bounded
//! (see `template_limits.rs`) but can take a good fraction of a second for the largest bodies
//! allowed: check once at the API, not again on every load.
//!
//! Layout: one file per kind (`machine.rs`, `profile.rs`, `param.rs`, `bootenv.rs`,
//! `template.rs`, `subnet.rs`, `reservation.rs`, `lease.rs`, `user.rs`, `token.rs`, `prefs.rs`),
//! plus `object.rs` (kinds and the trait), `validate.rs` (shared rules), `decode.rs` (JSON in),
//! `template_limits.rs` (bounds that keep tera's parser fast and off the stack's edge) and
//! `params.rs` (resolution).

mod bootenv;
mod decode;
mod lease;
mod machine;
mod object;
mod param;
mod params;
mod prefs;
mod profile;
mod reservation;
mod subnet;
mod template;
mod template_limits;
mod token;
mod user;
pub mod validate;

pub use bootenv::{ArchBoot, BootEnv, TemplateRef, MAX_BOOTENV_PARAMS, MAX_INITRDS, MAX_TEMPLATES};
pub use decode::{decode, decode_value, MAX_DOCUMENT_LEN};
pub use lease::{normalize_client_id, Lease, LeaseState, MAX_CLIENT_ID_HEX, MAX_HOSTNAME_BYTES};
pub use machine::{Arch, Machine};
pub use object::{Object, ObjectKind, UnknownKind};
pub use param::{check_compiled, check_param_value, Param};
pub use params::{
    effective_params, lookup_param, EffectiveParam, ParamSource, Resolution, MAX_PROFILE_DEPTH,
};
pub use prefs::{
    Prefs, DEFAULT_EVENT_RETENTION, DEFAULT_MAX_API_TOKEN_TTL_SECS, DEFAULT_MAX_OBJECT_BYTES,
    MAX_API_TOKEN_TTL_SECS, MAX_EVENT_RETENTION, MAX_MAX_OBJECT_BYTES, MAX_TOKEN_TTL_SECS,
    MIN_EVENT_RETENTION, MIN_MAX_OBJECT_BYTES, PREFS_KEY,
};
pub use profile::{Profile, GLOBAL_PROFILE};
pub use reservation::Reservation;
pub use subnet::{
    DhcpOption, Picker, PoolRange, Subnet, SubnetMode, MAX_OPTIONS, MAX_OPTION_VALUE_LEN, MAX_POOLS,
};
pub use template::{check_template, Template, TemplateError};
pub use template_limits::{
    MAX_BLOCK_NESTING, MAX_BRACKET_NESTING, MAX_CALL_NESTING, MAX_TAG_LEN, MAX_TAG_OPERATORS,
};
pub use token::{expiry_term, Scope, ScopeLevel, TokenInfo};
pub use user::{User, UserView};
pub use validate::{code, normalize_mac, parse_mac, ValidationError};

/// The property names of `kind`'s schema (see [`ObjectKind::field_names`]).
fn schema_fields(kind: ObjectKind) -> Vec<String> {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;
    fn names(schema: &RefOr<Schema>, out: &mut Vec<String>) {
        match schema {
            RefOr::T(Schema::Object(object)) => out.extend(object.properties.keys().cloned()),
            RefOr::T(Schema::AllOf(all)) => all.items.iter().for_each(|s| names(s, out)),
            _ => {}
        }
    }
    let schema = match kind {
        ObjectKind::Machines => Machine::schema(),
        ObjectKind::Profiles => Profile::schema(),
        ObjectKind::Params => Param::schema(),
        ObjectKind::Bootenvs => BootEnv::schema(),
        ObjectKind::Templates => Template::schema(),
        ObjectKind::Subnets => Subnet::schema(),
        ObjectKind::Reservations => Reservation::schema(),
        ObjectKind::Leases => Lease::schema(),
        ObjectKind::Users => UserView::schema(),
        ObjectKind::Tokens => TokenInfo::schema(),
        ObjectKind::Prefs => Prefs::schema(),
    };
    let mut out = Vec::new();
    names(&schema, &mut out);
    out.sort();
    out.dedup();
    out
}

/// Decodes and validates in one step: what the API does with a request body.
pub fn decode_valid<T: Object>(text: &str) -> Result<T, ValidationError> {
    let mut object: T = decode(text)?;
    object.validate()?;
    Ok(object)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// Accepts `input`, and checks that the validated object survives a JSON round trip unchanged
    /// and that validation is idempotent (normalizing twice changes nothing).
    pub(crate) fn check_ok<T: Object>(input: &str) -> T {
        let object: T = match decode_valid(input) {
            Ok(o) => o,
            Err(e) => panic!("{input} refused: {e}"),
        };
        let json = serde_json::to_string(&object).unwrap();
        let mut again: T = decode(&json).unwrap();
        assert_eq!(again, object, "JSON round trip changed the object");
        again.validate().unwrap();
        assert_eq!(again, object, "validation is not idempotent");
        object
    }

    /// Refuses `input` with `code` at `field`; returns the error for further checks.
    pub(crate) fn check_err<T: Object>(
        input: &str,
        field: &str,
        code: &crate::error_code::Code,
    ) -> ValidationError {
        match decode_valid::<T>(input) {
            Ok(o) => panic!("{input} accepted as {o:?}"),
            Err(e) => {
                assert_eq!(
                    (e.field.as_str(), e.code),
                    (field, code),
                    "input {input}: {e}"
                );
                e
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's OpenAPI schema generates (a missing `value_type` would fail to compile, but a
    /// wrong one only shows here) and marks `revision` read-only.
    #[test]
    fn schemas_generate() {
        use utoipa::openapi::RefOr;
        use utoipa::PartialSchema;
        fn check<T: PartialSchema>() {
            let schema = T::schema();
            let json = serde_json::to_value(&schema).unwrap();
            if let RefOr::T(_) = schema {
                assert!(json.is_object());
            }
            let text = json.to_string();
            if text.contains("\"revision\"") {
                assert!(text.contains("readOnly"), "{text}");
            }
        }
        check::<Machine>();
        check::<Profile>();
        check::<Param>();
        check::<BootEnv>();
        check::<Template>();
        check::<Subnet>();
        check::<Reservation>();
        check::<Lease>();
        check::<UserView>();
        check::<TokenInfo>();
        check::<Prefs>();
        check::<EffectiveParam>();
        check::<ObjectKind>();
    }

    #[test]
    fn every_kind_names_its_fields() {
        for &kind in ObjectKind::ALL {
            let fields = kind.field_names();
            assert!(
                fields.iter().any(|f| f == "revision"),
                "{kind:?}: {fields:?}"
            );
        }
        assert!(ObjectKind::Machines
            .field_names()
            .iter()
            .any(|f| f == "params"));
        assert!(!ObjectKind::Users
            .field_names()
            .iter()
            .any(|f| f == "password_hash"));
    }

    #[test]
    fn revision_is_accepted_on_input_and_overwritable() {
        let mut p: Profile = decode_valid(r#"{"name": "p", "revision": 99}"#).unwrap();
        assert_eq!(p.revision(), 99);
        p.set_revision(7);
        assert_eq!(p.revision, 7);
        assert_eq!(<Profile as Object>::KIND, ObjectKind::Profiles);
    }
}
