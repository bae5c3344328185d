//! The OpenAPI 3 document served at `/api/v1/openapi.json`.
//!
//! The operations are built here with utoipa from the route table in
//! `mod.rs`; the object schemas come from the model's `ToSchema` derives. The
//! derives know field types only, so [`refine`] then writes in what the
//! model's validation enforces (name patterns, lengths, counts, addresses,
//! bounds), from the same constants, so that a client or fuzzer that follows
//! the document sends what the server accepts and the server refuses what the
//! document forbids. Rules JSON Schema cannot state (template syntax, pools
//! inside their subnet, references to other objects, param values against
//! their definitions) are answered with the stable codes of the error table
//! ([`crate::error_code`]), which the `ErrorCode` schema lists.
//!
//! The tests at the bottom keep document and server together: every route is
//! documented with exactly its methods, public routes are documented public,
//! every error code is in the document, and every code the code base emits
//! has its status documented.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, ParameterStyle, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApiBuilder, PathsBuilder,
    Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::ToSchema;

use super::auth::{TokenGrant, TokenRequest};
use super::cluster::{
    JoinTokenGrant, JoinTokenRequest, JoinTokenView, MAX_JOIN_TOKEN_TTL_SECS, MAX_JOIN_TOKEN_USES,
};
use super::error::ErrorBody;
use crate::cluster::join::{JoinRequest, JoinResponse};
use crate::error_code;
use crate::model::validate::{
    MAX_DESCRIPTION_LEN, MAX_HARDWARE_ADDRS, MAX_HOSTNAME_LEN, MAX_META, MAX_META_VALUE_LEN,
    MAX_NAME_LEN, MAX_PARAMS, MAX_PROFILES, MAX_TEMPLATE_LEN,
};
use crate::model::{
    BootEnv, EffectiveParam, Lease, Machine, ObjectKind, Param, Prefs, Profile, Reservation,
    Subnet, Template, TokenInfo, UserView, DEFAULT_MAX_API_TOKEN_TTL_SECS, MAX_API_TOKEN_TTL_SECS,
    MAX_BOOTENV_PARAMS, MAX_CLIENT_ID_HEX, MAX_INITRDS, MAX_OPTIONS, MAX_OPTION_VALUE_LEN,
    MAX_POOLS, MAX_TEMPLATES, PREFS_KEY,
};
use crate::model::{
    MAX_EVENT_RETENTION, MAX_MAX_OBJECT_BYTES, MIN_EVENT_RETENTION, MIN_MAX_OBJECT_BYTES,
};
use crate::store::object::indexed_fields;
use crate::store::query::MAX_LIMIT;
use crate::store::Event;

pub async fn document() -> Json<&'static Value> {
    Json(openapi())
}

/// Built once: the document depends only on the code.
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

/// The schema name of each kind's object as the API shows it.
pub fn schema_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Machines => "Machine",
        ObjectKind::Profiles => "Profile",
        ObjectKind::Params => "Param",
        ObjectKind::Bootenvs => "BootEnv",
        ObjectKind::Templates => "Template",
        ObjectKind::Subnets => "Subnet",
        ObjectKind::Reservations => "Reservation",
        ObjectKind::Leases => "Lease",
        ObjectKind::Users => "UserView",
        ObjectKind::Tokens => "TokenInfo",
        ObjectKind::Prefs => "Prefs",
    }
}

/// The schema of each kind's key (its `{key}` path segment).
fn key_schema_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Machines => "MachineKey",
        ObjectKind::Reservations | ObjectKind::Leases => "HostAddress",
        ObjectKind::Prefs => "PrefsKey",
        _ => "Name",
    }
}

/// Which methods each kind's routes take. Tokens are issued and revoked, never
/// replaced or patched; prefs always exist, so they are neither created nor
/// deleted; leases are only read and deleted. (`mod.rs` routes these kinds
/// separately, so that the router answers the other methods with 405 and an
/// `Allow` header.)
struct Methods {
    create: bool,
    replace: bool,
    patch: bool,
    delete: bool,
}

fn methods(kind: ObjectKind) -> Methods {
    match kind {
        ObjectKind::Tokens => Methods {
            create: true,
            replace: false,
            patch: false,
            delete: true,
        },
        ObjectKind::Prefs => Methods {
            create: false,
            replace: true,
            patch: true,
            delete: false,
        },
        // Written by the DHCP server through the log; DELETE is a forced
        // release.
        ObjectKind::Leases => Methods {
            create: false,
            replace: false,
            patch: false,
            delete: true,
        },
        _ => Methods {
            create: true,
            replace: true,
            patch: true,
            delete: true,
        },
    }
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn any_object() -> RefOr<Schema> {
    RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into())
}

fn array_of(items: RefOr<Schema>) -> RefOr<Schema> {
    RefOr::T(Schema::Array(utoipa::openapi::schema::Array::new(items)))
}

fn json_content(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_content(schema_ref("ErrorBody")))
        .build()
}

fn ok_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_content(schema))
        .build()
}

fn etag_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^\"[0-9]+\"$")),
        )
        .description(Some("The revision, quoted; send it back in `If-Match`"))
        .build()
}

/// A response carrying the object's revision as its `ETag`.
fn etag_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_content(schema))
        .header("ETag", etag_header())
        .build()
}

fn path_param(name: &str, description: &str, schema: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema_ref(schema)))
        .build()
}

fn query_param(
    name: &str,
    description: &str,
    schema: impl Into<RefOr<Schema>>,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// A query flag: `true` or `false` (also `1`/`0`, `yes`/`no`; present but
/// empty means `true`).
fn flag() -> RefOr<Schema> {
    schema_ref("Flag")
}

fn consistent() -> utoipa::openapi::path::Parameter {
    query_param(
        "consistent",
        "Linearizable read: confirm with the leader first",
        flag(),
    )
}

fn header_param(name: &str, description: &str, schema: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema_ref(schema)))
        .build()
}

fn if_match() -> utoipa::openapi::path::Parameter {
    header_param(
        "If-Match",
        "Only if the object is at this revision (its ETag); `*` for any. A weak tag never \
         matches (412).",
        "IfMatch",
    )
}

fn if_none_match(reading: bool) -> utoipa::openapi::path::Parameter {
    header_param(
        "If-None-Match",
        if reading {
            "Unless the object is at one of these revisions: then 304 Not Modified"
        } else {
            "Unless the object is at one of these revisions (`*`: unless it exists): then 412"
        },
        "IfNoneMatch",
    )
}

fn json_body(schema: RefOr<Schema>, required: bool) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(if required {
            Required::True
        } else {
            Required::False
        }))
        .content("application/json", json_content(schema))
        .build()
}

// The usual meaning of each error status; an operation lists those it can
// answer with (see `errors`). The codes each may carry are appended from the
// error table, so this text cannot name a code the server does not send.
fn usual_meaning(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => {
            "Bad input: malformed JSON or query, or a field that fails validation \
             (`code` names the rule, `field` where; `ErrorCode` lists them all)"
        }
        401 => "No valid bearer token (`token_superseded`: its user's password or admin right changed since)",
        403 => "The token's scope does not cover this call",
        404 => "No such object",
        408 => "The request body did not arrive in time",
        412 => "`If-Match` names another revision, or `If-None-Match` one the object is at",
        413 => {
            "The body is larger than the server's limit, or the object would be larger than \
             the `max_object_bytes` pref"
        }
        503 => {
            "The cluster cannot answer now: no leader or no quorum reachable in time (nothing \
             was written, retry), a write's outcome is unknown (check before retrying), or \
             password hashing is at capacity; `Retry-After` when a retry will do"
        }
        _ => return None,
    })
}

/// The usual meaning of `status` and, except for 400 (too many to repeat),
/// every code the table gives that status.
fn default_error_text(status: u16) -> String {
    let meaning = usual_meaning(status).unwrap_or("Error");
    if status == 400 {
        return meaning.to_string();
    }
    let codes: Vec<String> = error_code::with_status(status)
        .map(|c| format!("`{c}`"))
        .collect();
    format!("{meaning}. Codes: {}", codes.join(", "))
}

fn errors(mut op: OperationBuilder, list: &[(u16, &str)]) -> OperationBuilder {
    for (status, text) in list {
        let text = match *text {
            "" => default_error_text(*status),
            text => text.to_string(),
        };
        let mut response = error_response(&text);
        if matches!(*status, 429 | 503) {
            response.headers.insert(
                "Retry-After".to_string(),
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )
                    .description(Some("Seconds to wait before retrying"))
                    .build(),
            );
        }
        op = op.response(status.to_string(), response);
    }
    op
}

fn operation(id: &str, summary: &str, tag: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .tag(tag)
}

/// An operation anyone may call: `security: []`.
fn public(op: OperationBuilder) -> OperationBuilder {
    op.securities(Some(Vec::<SecurityRequirement>::new()))
}

fn object_paths(mut paths: PathsBuilder, kind: ObjectKind) -> PathsBuilder {
    let plural = kind.as_str();
    let object = schema_ref(schema_name(kind));
    let allowed = methods(kind);
    let (create_body, replace_body) = match kind {
        ObjectKind::Users => (schema_ref("UserCreate"), schema_ref("UserReplace")),
        ObjectKind::Tokens => (schema_ref("TokenRequest"), object.clone()),
        // A replaced machine keeps its UUID, so the body names it.
        ObjectKind::Machines => (object.clone(), schema_ref("MachineReplace")),
        // The object as shown (`revision` may be sent; it is ignored).
        _ => (object.clone(), object.clone()),
    };

    let list = errors(
        operation(&format!("list_{plural}"), &format!("List {plural}"), plural)
            .description(Some(
                "Any other query parameter `field=value` filters: indexed fields use the index, \
                 dotted paths (e.g. `params.rack`) scan. A `cursor` pages in key order and \
                 cannot be combined with `sort`, `desc` or `offset`.",
            ))
            .parameter(query_param(
                "limit",
                "Page size (default 1000)",
                schema_ref("Limit"),
            ))
            .parameter(query_param(
                "offset",
                "Skip this many matches",
                schema_ref("Offset"),
            ))
            .parameter(query_param(
                "cursor",
                "Resume after a page's `X-Next-Cursor`",
                schema_ref("Cursor"),
            ))
            .parameter(query_param(
                "sort",
                "A field, or a dotted path into one, to sort by",
                schema_ref(&format!("{}Sort", schema_name(kind))),
            ))
            .parameter(query_param("desc", "Sort descending", flag()))
            .parameter(consistent())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Matching objects")
                    .content("application/json", json_content(array_of(object.clone())))
                    .header(
                        "X-Next-Cursor",
                        HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::String))
                            .description(Some("Present when more remain: pass as `cursor`"))
                            .build(),
                    )
                    .build(),
            ),
        &[(400, ""), (401, ""), (403, ""), (503, "")],
    );
    let mut collection = PathItemBuilder::new().operation(HttpMethod::Get, list);
    if allowed.create {
        let create = operation(
            &format!("create_{plural}"),
            &format!("Create one of {plural}"),
            plural,
        );
        let create = if kind == ObjectKind::Tokens {
            errors(
                create
                    .description(Some(
                        "Issues a bearer token for `user` (default: the caller). Without a body, \
                         for the caller with the caller's scope and the default lifetime.",
                    ))
                    .request_body(Some(json_body(create_body, false)))
                    .response(
                        "201",
                        ok_response("The token, shown once", schema_ref("TokenGrant")),
                    ),
                &[
                    (400, ""),
                    (401, ""),
                    (403, "The scope asked for is above the user's own, or the token's scope does not cover this call (`forbidden`)"),
                    (404, "No such user (`not_found`)"),
                    (
                        409,
                        "The user was deleted (`missing_reference`) or changed \
                         (`stale_user`) while the token was being issued",
                    ),
                    (408, ""),
                    (413, ""),
                    (503, ""),
                ],
            )
        } else {
            errors(
                create
                    .request_body(Some(json_body(create_body, true)))
                    .response("201", etag_response("Created", object.clone())),
                &[
                    (400, ""),
                    (401, ""),
                    (403, ""),
                    (
                        409,
                        "The key or a unique field is taken (`already_exists`, `duplicate`), or a \
                         referenced object does not exist (`missing_reference`)",
                    ),
                    (408, ""),
                    (413, ""),
                    (503, ""),
                ],
            )
        };
        collection = collection.operation(HttpMethod::Post, create);
    }
    if !allowed.create {
        collection = collection.description(Some(format!(
            "{plural} are not created: POST is 405 (`method_not_allowed`, with `Allow`)."
        )));
    }
    paths = paths.path(format!("/api/v1/{plural}"), collection.build());

    let key = path_param("key", "The object's key", key_schema_name(kind));
    let show = errors(
        operation(
            &format!("show_{plural}"),
            &format!("Show one of {plural}"),
            plural,
        )
        .parameter(key.clone())
        .parameter(consistent())
        .parameter(if_none_match(true))
        .response("200", etag_response("The object", object.clone()))
        .response(
            "304",
            ResponseBuilder::new()
                .description("Not modified: the object is at a revision `If-None-Match` names")
                .header("ETag", etag_header())
                .build(),
        ),
        &[(400, ""), (401, ""), (403, ""), (404, ""), (503, "")],
    );
    let mut item = PathItemBuilder::new().operation(HttpMethod::Get, show);
    if allowed.replace {
        let replace = errors(
            operation(
                &format!("replace_{plural}"),
                &format!("Replace one of {plural}"),
                plural,
            )
            .parameter(key.clone())
            .parameter(if_match())
            .parameter(if_none_match(false))
            .request_body(Some(json_body(replace_body, true)))
            .response("200", etag_response("Replaced", object.clone())),
            &[
                (400, ""),
                (401, ""),
                (403, ""),
                (404, ""),
                (
                    409,
                    "The body names another key (`key_mismatch`), a unique field is taken \
                     (`duplicate`), a referenced object does not exist (`missing_reference`), or \
                     the user changed meanwhile (`stale_user`)",
                ),
                (408, ""),
                (412, ""),
                (413, ""),
                (503, ""),
            ],
        );
        item = item.operation(HttpMethod::Put, replace);
    }
    if allowed.patch {
        let patch = errors(
            operation(
                &format!("patch_{plural}"),
                &format!("JSON-Patch one of {plural}"),
                plural,
            )
            .description(Some(
                "An RFC 6902 patch, applied to the object as shown; the result must be a valid \
                 object. A path the object does not have is `invalid_patch`.",
            ))
            .parameter(key.clone())
            .parameter(if_match())
            .parameter(if_none_match(false))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json-patch+json",
                        json_content(schema_ref("JsonPatch")),
                    )
                    .build(),
            ))
            .response("200", etag_response("Patched", object.clone())),
            &[
                (400, ""),
                (401, ""),
                (403, ""),
                (404, ""),
                (
                    409,
                    "A `test` operation failed (`patch_test_failed`), the patch changes the key \
                     (`key_mismatch`), a unique field is taken (`duplicate`), or a referenced \
                     object does not exist (`missing_reference`)",
                ),
                (408, ""),
                (412, ""),
                (413, ""),
                (503, ""),
            ],
        );
        item = item.operation(HttpMethod::Patch, patch);
    }
    if allowed.delete {
        let delete = operation(
            &format!("delete_{plural}"),
            &format!("Delete one of {plural}"),
            plural,
        )
        .parameter(key)
        .parameter(if_match())
        .parameter(if_none_match(false));
        let delete = if kind == ObjectKind::Tokens {
            errors(
                delete
                    .description(Some(
                        "Revokes the token. It stays listed, revoked, until it expires.",
                    ))
                    .response("200", etag_response("Revoked", object)),
                &[
                    (400, ""),
                    (401, ""),
                    (403, ""),
                    (404, ""),
                    (412, ""),
                    (503, ""),
                ],
            )
        } else {
            errors(
                delete.response("200", ok_response("Deleted", schema_ref("Deleted"))),
                &[
                    (400, ""),
                    (401, ""),
                    (403, ""),
                    (404, ""),
                    (409, "Other objects still use it (`in_use`)"),
                    (412, ""),
                    (503, ""),
                ],
            )
        };
        item = item.operation(HttpMethod::Delete, delete);
    }
    let missing: Vec<&str> = [
        ("PUT", allowed.replace),
        ("PATCH", allowed.patch),
        ("DELETE", allowed.delete),
    ]
    .into_iter()
    .filter_map(|(method, taken)| (!taken).then_some(method))
    .collect();
    if !missing.is_empty() {
        item = item.description(Some(format!(
            "{} not taken here: 405 (`method_not_allowed`, with `Allow`).",
            missing.join(" and ")
        )));
    }
    paths.path(format!("/api/v1/{plural}/{{key}}"), item.build())
}

fn param_paths(mut paths: PathsBuilder, kind: ObjectKind) -> PathsBuilder {
    let plural = kind.as_str();
    let key = || path_param("key", "The object's key", key_schema_name(kind));
    let name = || path_param("name", "The param", "Name");
    paths = paths.path(
        format!("/api/v1/{plural}/{{key}}/params"),
        PathItemBuilder::new()
            .operation(
                HttpMethod::Get,
                errors(
                    operation(
                        &format!("params_{plural}"),
                        &format!("The params set on one of {plural}"),
                        plural,
                    )
                    .parameter(key())
                    .parameter(consistent())
                    .response("200", ok_response("name → value", schema_ref("Params"))),
                    &[(400, ""), (401, ""), (403, ""), (404, ""), (503, "")],
                ),
            )
            .build(),
    );
    paths.path(
        format!("/api/v1/{plural}/{{key}}/params/{{name}}"),
        PathItemBuilder::new()
            .operation(
                HttpMethod::Get,
                errors(
                    operation(&format!("param_get_{plural}"), "One param's value", plural)
                        .parameter(key())
                        .parameter(name())
                        .response("200", ok_response("The value", schema_ref("ParamValue"))),
                    &[
                        (401, ""),
                        (403, ""),
                        (
                            404,
                            "No such object, or the param is not set on it (`not_found`)",
                        ),
                    ],
                ),
            )
            .operation(
                HttpMethod::Put,
                errors(
                    operation(
                        &format!("param_set_{plural}"),
                        "Set one param (body: its JSON value)",
                        plural,
                    )
                    .parameter(key())
                    .parameter(name())
                    .parameter(if_match())
                    .request_body(Some(json_body(schema_ref("ParamValue"), true)))
                    .response(
                        "200",
                        etag_response("All params after the change", schema_ref("Params")),
                    ),
                    &[
                        (400, ""),
                        (401, ""),
                        (403, ""),
                        (404, ""),
                        (
                            409,
                            "A referenced object does not exist (`missing_reference`)",
                        ),
                        (408, ""),
                        (412, ""),
                        (413, ""),
                        (503, ""),
                    ],
                ),
            )
            .operation(
                HttpMethod::Delete,
                errors(
                    operation(&format!("param_delete_{plural}"), "Unset one param", plural)
                        .parameter(key())
                        .parameter(name())
                        .parameter(if_match())
                        .response(
                            "200",
                            etag_response("All params after the change", schema_ref("Params")),
                        ),
                    &[
                        (400, ""),
                        (401, ""),
                        (403, ""),
                        (
                            404,
                            "No such object, or the param is not set on it (`not_found`)",
                        ),
                        (
                            409,
                            "A referenced object does not exist (`missing_reference`)",
                        ),
                        (412, ""),
                        (503, ""),
                    ],
                ),
            )
            .build(),
    )
}

fn other_paths(paths: PathsBuilder) -> PathsBuilder {
    paths
        .path(
            "/api/v1/machines/{key}/effective-params",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation(
                            "effective_params",
                            "Resolved params and where each came from",
                            "machines",
                        )
                        .parameter(path_param("key", "The machine's UUID", "MachineKey"))
                        .parameter(consistent())
                        .response(
                            "200",
                            ok_response("name → {value, source}", schema_ref("EffectiveParams")),
                        ),
                        &[(400, ""), (401, ""), (403, ""), (404, ""), (503, "")],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/auth/token",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Post,
                    errors(
                        operation(
                            "issue_token",
                            "Exchange HTTP Basic credentials for a bearer token",
                            "auth",
                        )
                        .description(Some(
                            "Without a body: the user's own scope and the default lifetime.",
                        ))
                        .securities(Some([SecurityRequirement::new(
                            "basic",
                            Vec::<String>::new(),
                        )]))
                        .request_body(Some(json_body(schema_ref("LoginRequest"), false)))
                        .response("200", ok_response("The token", schema_ref("TokenGrant"))),
                        &[
                            (400, ""),
                            (401, "Missing or wrong credentials (`unauthorized`)"),
                            (
                                403,
                                "The scope asked for is above the user's own (`forbidden`)",
                            ),
                            (408, ""),
                            (413, ""),
                            (
                                429,
                                "Too many login attempts from this address, or failed ones for \
                                 this user (`too_many_requests`)",
                            ),
                            (503, ""),
                        ],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/auth/whoami",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation("whoami", "The caller's token claims", "auth")
                            .response("200", ok_response("Claims", schema_ref("Claims"))),
                        &[(401, ""), (403, "")],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/ca",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    public(operation(
                        "ca",
                        "The cluster CA certificate (PEM), for pinning",
                        "auth",
                    ))
                    .response(
                        "200",
                        ResponseBuilder::new()
                            .description("PEM")
                            .content(
                                "application/x-pem-file",
                                json_content(RefOr::T(
                                    ObjectBuilder::new().schema_type(Type::String).into(),
                                )),
                            )
                            .build(),
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/openapi.json",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    public(operation("openapi", "This document", "auth"))
                        .response("200", ok_response("OpenAPI 3.1", any_object())),
                )
                .build(),
        )
        .path(
            "/api/v1/status",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation("status", "This node's view of the cluster", "cluster")
                            .response("200", ok_response("Status", schema_ref("Status"))),
                        &[(401, ""), (403, "")],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/events",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation(
                            "events",
                            "Server-sent events of every change, in commit order",
                            "events",
                        )
                        .parameter(query_param(
                            "since",
                            "Resume after this revision (default: now)",
                            schema_ref("RevisionNumber"),
                        ))
                        .parameter(
                            ParameterBuilder::new()
                                .name("kind")
                                .parameter_in(ParameterIn::Query)
                                .required(Required::False)
                                .description(Some("Only these kinds (repeat for more)"))
                                .style(Some(ParameterStyle::Form))
                                .explode(Some(true))
                                .schema(Some(array_of(schema_ref("ObjectKind"))))
                                .build(),
                        )
                        .parameter(header_param(
                            "Last-Event-ID",
                            "Resume after this revision (what a reconnecting EventSource sends; \
                             ignored unless a number)",
                            "LastEventId",
                        ))
                        .response(
                            "200",
                            ResponseBuilder::new()
                                .description(
                                    "`text/event-stream`: each event's `id` is its revision, \
                                     its `event` the action, its `data` an Event. Revisions \
                                     are consecutive (those the token may not read are left \
                                     out); when the next one can no longer be sent (the client \
                                     fell behind the kept events, or the node installed a \
                                     snapshot) an `event: reset` comes instead, with `data` \
                                     `{\"revision\": R, \"reason\": \"expired\" | \
                                     \"snapshot_installed\"}` and `id` R: reload what you \
                                     follow, then changes after R follow",
                                )
                                .content(
                                    "text/event-stream",
                                    json_content(schema_ref("EventMessage")),
                                )
                                .build(),
                        ),
                        &[
                            (400, ""),
                            (401, ""),
                            (403, ""),
                            (
                                410,
                                "`since` is older than the kept events (`events_expired`)",
                            ),
                        ],
                    ),
                )
                .build(),
        )
}

fn cluster_paths(paths: PathsBuilder) -> PathsBuilder {
    let admin = "The token is not an admin token (`forbidden`)";
    paths
        .path(
            "/api/v1/cluster/tokens",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation(
                            "list_join_tokens",
                            "Join tokens (never their secrets)",
                            "cluster",
                        )
                        .response(
                            "200",
                            ok_response("Join tokens", array_of(schema_ref("JoinToken"))),
                        ),
                        &[(401, ""), (403, admin)],
                    ),
                )
                .operation(
                    HttpMethod::Post,
                    errors(
                        operation(
                            "create_join_token",
                            "Issue a join token and its `cradle join` command",
                            "cluster",
                        )
                        .request_body(Some(json_body(schema_ref("JoinTokenRequest"), false)))
                        .response(
                            "201",
                            ok_response("The token, shown once", schema_ref("JoinTokenGrant")),
                        ),
                        &[
                            (400, ""),
                            (401, ""),
                            (403, admin),
                            (408, ""),
                            (413, ""),
                            (503, ""),
                        ],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/cluster/tokens/{id}",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Delete,
                    errors(
                        operation("revoke_join_token", "Revoke a join token", "cluster")
                            .parameter(path_param("id", "The token id", "JoinTokenId"))
                            .response("200", ok_response("Revoked", schema_ref("Revoked"))),
                        &[
                            (401, ""),
                            (403, admin),
                            (404, "No such token (`not_found`)"),
                            (503, ""),
                        ],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/cluster/join",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Post,
                    errors(
                        public(operation(
                            "join",
                            "Spend a join token: register a node and sign its CSR",
                            "cluster",
                        ))
                        .description(Some(
                            "Authenticated by the join token in the body, not by a bearer token \
                             (the joining node has none yet).",
                        ))
                        .request_body(Some(json_body(schema_ref("JoinRequest"), true)))
                        .response(
                            "200",
                            ok_response(
                                "The node's id and certificate",
                                schema_ref("JoinResponse"),
                            ),
                        ),
                        &[
                            (
                                400,
                                "Bad body, CSR or address (`invalid_body`, `invalid_csr`, \
                                 `invalid_address`)",
                            ),
                            (
                                401,
                                "The token is malformed, unknown, expired, used up or revoked \
                                 (`invalid_join_token`, `join_token_expired`, \
                                 `join_token_used_up`, `join_token_revoked`)",
                            ),
                            (408, ""),
                            (413, ""),
                            (
                                429,
                                "Too many refused joins from this address (`too_many_requests`)",
                            ),
                            (503, ""),
                        ],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/cluster/nodes",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    errors(
                        operation("list_nodes", "Members: addresses, role, lag", "cluster")
                            .response(
                                "200",
                                ok_response("Members", array_of(schema_ref("ClusterNode"))),
                            ),
                        &[(401, ""), (403, admin)],
                    ),
                )
                .build(),
        )
        .path(
            "/api/v1/cluster/nodes/{id}",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Delete,
                    errors(
                        operation(
                            "remove_node",
                            "Remove a member (membership change)",
                            "cluster",
                        )
                        .parameter(path_param("id", "The node id", "NodeId"))
                        .parameter(query_param(
                            "force",
                            "Allow removing the answering node or the last voter",
                            flag(),
                        ))
                        .response("200", ok_response("Removed", schema_ref("RemovedNode"))),
                        &[
                            (400, ""),
                            (401, ""),
                            (403, admin),
                            (404, "No such member (`not_found`)"),
                            (
                                409,
                                "Without `force`: the answering node (`removing_self`) or the \
                                 last voter (`last_voter`)",
                            ),
                            (503, ""),
                        ],
                    ),
                )
                .build(),
        )
}

/// Adds `T` and every schema it refers to.
fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

fn build() -> Value {
    let mut paths = PathsBuilder::new();
    for kind in ObjectKind::ALL {
        paths = object_paths(paths, *kind);
    }
    for kind in [ObjectKind::Machines, ObjectKind::Profiles] {
        paths = param_paths(paths, kind);
    }
    paths = other_paths(paths);
    paths = cluster_paths(paths);

    let mut schemas = Vec::new();
    add::<Machine>(&mut schemas);
    add::<Profile>(&mut schemas);
    add::<Param>(&mut schemas);
    add::<BootEnv>(&mut schemas);
    add::<Template>(&mut schemas);
    add::<Subnet>(&mut schemas);
    add::<Reservation>(&mut schemas);
    add::<Lease>(&mut schemas);
    add::<UserView>(&mut schemas);
    add::<TokenInfo>(&mut schemas);
    add::<Prefs>(&mut schemas);
    add::<EffectiveParam>(&mut schemas);
    add::<ObjectKind>(&mut schemas);
    add::<Event>(&mut schemas);
    add::<ErrorBody>(&mut schemas);
    add::<TokenRequest>(&mut schemas);
    add::<TokenGrant>(&mut schemas);
    add::<JoinTokenView>(&mut schemas);
    add::<JoinTokenRequest>(&mut schemas);
    add::<JoinTokenGrant>(&mut schemas);
    add::<JoinRequest>(&mut schemas);
    add::<JoinResponse>(&mut schemas);

    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        )
        .security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        )
        .build();

    let doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cradle API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Fleet state of a Cradle network-boot cluster. Every member serves every \
                     call. Errors are JSON `ErrorBody`s with a stable `code`. Integers are \
                     written without a fraction (`3`, not `3.0`); string lengths are limits \
                     on bytes of UTF-8.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some([SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build();
    let mut doc = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    refine(&mut doc);
    doc
}

// ---------------------------------------------------------------------------
// Refinement: what the model's validation enforces, as JSON Schema.

/// An entity tag as `If-Match` and `If-None-Match` read it: a revision,
/// quoted, weak (`W/"12"`) or bare.
const ENTITY_TAG: &str = r#"(W/"[0-9]{1,19}"|"[0-9]{1,19}"|[0-9]{1,19})"#;

/// `check_name`: a letter or digit first, then letters, digits, `.`, `-`, `_`.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// The IPv4 addresses `check_host_address` refuses: unspecified, broadcast,
/// loopback, multicast.
const NOT_HOST_PATTERN: &str = r"^(0\.0\.0\.0|255\.255\.255\.255|127\..*|22[4-9]\..*|23[0-9]\..*)$";

/// One octet of a dotted quad as Rust parses it (no leading zeros).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

/// A MAC address in the spellings `parse_mac` reads (`aa:bb:cc:dd:ee:ff`,
/// `aa-bb-…`, `aabb.ccdd.eeff`, `aabbccddeeff`), unicast: the first octet's
/// low bit is clear.
fn mac_pattern() -> String {
    let h = "[0-9A-Fa-f]";
    let first = format!("{h}[02468aceACE]");
    format!(
        "^({first}(:{h}{h}){{5}}|{first}(-{h}{h}){{5}}|{first}{h}{h}\\.{h}{{4}}\\.{h}{{4}}|{first}{h}{{10}})$"
    )
}

fn ref_to(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [schema, { "type": "null" }] })
}

fn name_schema(max: usize) -> Value {
    json!({ "type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": max })
}

fn names(max_items: usize) -> Value {
    json!({ "type": "array", "items": ref_to("Name"), "maxItems": max_items })
}

/// What Rust's `char::is_whitespace` and `char::is_control` match, as the
/// inside of a regex character class.
const WHITESPACE_OR_CONTROL: &str =
    r"\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// `check_boot_path`: not empty, no whitespace or control characters, at most
/// 4096 bytes (a `..` segment is refused too: `invalid_path`).
fn boot_path() -> Value {
    json!({
        "type": "string",
        "pattern": format!("^[^{WHITESPACE_OR_CONTROL}]+$"),
        "maxLength": 4096,
    })
}

fn description() -> Value {
    json!({
        "type": "string",
        "maxLength": MAX_DESCRIPTION_LEN,
        "description": format!("For people; at most {MAX_DESCRIPTION_LEN} bytes of UTF-8."),
    })
}

/// Schemas that are not a type of the code base: keys, bounds, request
/// bodies and small responses.
fn extra_schemas() -> Vec<(&'static str, Value)> {
    let octet = OCTET;
    let ipv4 = format!("{octet}\\.{octet}\\.{octet}\\.{octet}");
    vec![
        ("Name", name_schema(MAX_NAME_LEN)),
        ("HostName", name_schema(MAX_HOSTNAME_LEN)),
        (
            "MachineKey",
            json!({ "type": "string", "format": "uuid", "description": "A machine's UUID" }),
        ),
        ("PrefsKey", json!({ "type": "string", "enum": [PREFS_KEY] })),
        (
            "HostAddress",
            json!({
                "type": "string",
                "format": "ipv4",
                "pattern": format!("^{ipv4}$"),
                "not": { "pattern": NOT_HOST_PATTERN },
                "description": "An IPv4 address a host can have: not 0.0.0.0, broadcast, \
                                loopback or multicast",
            }),
        ),
        (
            "Cidr",
            json!({
                "type": "string",
                "pattern": format!("^{ipv4}/(30|[12]?[0-9])$"),
                "description": "An IPv4 network of at least 4 addresses (prefix up to /30); \
                                stored as its network address",
                "example": "10.0.0.0/24",
            }),
        ),
        (
            "Mac",
            json!({
                "type": "string",
                "pattern": mac_pattern(),
                "not": { "pattern": "^[0:.-]*$" },
                "description": "A unicast Ethernet MAC, stored as `aa:bb:cc:dd:ee:ff`",
            }),
        ),
        (
            "Limit",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIMIT }),
        ),
        (
            "Offset",
            json!({ "type": "integer", "minimum": 0, "maximum": usize::MAX }),
        ),
        (
            "RevisionNumber",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
        ),
        ("LastEventId", json!({ "type": "string" })),
        (
            "Flag",
            json!({
                "type": "string",
                "enum": ["true", "false", "1", "0", "yes", "no", ""],
                "description": "`true` or `false`; `1`/`0` and `yes`/`no` too; empty means `true`",
            }),
        ),
        (
            "EventMessage",
            json!({
                "description": "One server-sent event",
                "type": "object",
                "required": ["data", "event"],
                "properties": {
                    "id": { "type": "string", "pattern": "^[0-9]+$",
                            "description": "The revision" },
                    "event": { "type": "string",
                               "enum": ["created", "updated", "deleted", "error"] },
                    "data": { "type": "string" },
                },
                "oneOf": [
                    {
                        "required": ["id"],
                        "properties": {
                            "event": { "enum": ["created", "updated", "deleted"] },
                            "data": {
                                "contentMediaType": "application/json",
                                "contentSchema": ref_to("Event"),
                            },
                        },
                    },
                    {
                        "description": "The stream failed; it ends after this",
                        "properties": { "event": { "const": "error" } },
                    },
                ],
            }),
        ),
        (
            "Cursor",
            json!({
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]*$",
                "description": "Opaque; only what `X-Next-Cursor` gave (`invalid_query` otherwise)",
            }),
        ),
        (
            "IfMatch",
            json!({
                "type": "string",
                "pattern": format!(r"^[ \t]*(\*|{ENTITY_TAG})[ \t]*$"),
                "description": "`*`, or one entity tag: a revision as the ETag gives it \
                                (`\"12\"`; `12` is read the same)",
            }),
        ),
        (
            "IfNoneMatch",
            json!({
                "type": "string",
                "pattern": format!(
                    r"^[ \t]*(\*|{ENTITY_TAG}([ \t]*,[ \t]*{ENTITY_TAG})*)[ \t]*$"
                ),
                "description": "`*`, or a list of entity tags (weak ones match too)",
            }),
        ),
        (
            "JoinTokenId",
            json!({ "type": "string", "pattern": "^[0-9a-f]+$" }),
        ),
        (
            "NodeId",
            json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX }),
        ),
        (
            "Params",
            json!({
                "type": "object",
                "description": "Param name → value; values are checked against the param's \
                                definition, when there is one (`invalid_param_value`)",
                "propertyNames": ref_to("Name"),
                "maxProperties": MAX_PARAMS,
            }),
        ),
        ("ParamValue", json!({ "description": "Any JSON value" })),
        (
            "EffectiveParams",
            json!({ "type": "object", "additionalProperties": ref_to("EffectiveParam") }),
        ),
        (
            "Deleted",
            json!({
                "type": "object",
                "required": ["revision"],
                "properties": { "revision": { "type": "integer", "minimum": 0 } },
                "additionalProperties": false,
            }),
        ),
        (
            "Revoked",
            json!({
                "type": "object",
                "required": ["revision", "revoked"],
                "properties": {
                    "revision": { "type": "integer", "minimum": 0 },
                    "revoked": { "type": "boolean" },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "RemovedNode",
            json!({
                "type": "object",
                "required": ["revision", "removed"],
                "properties": {
                    "revision": { "type": "integer", "minimum": 0 },
                    "removed": { "type": "integer", "minimum": 0 },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "Claims",
            json!({
                "type": "object",
                "required": ["jti", "sub", "scope", "iat", "exp"],
                "properties": {
                    "jti": { "type": "string", "description": "The token's id" },
                    "sub": { "type": "string", "description": "The user" },
                    "scope": ref_to("Scope"),
                    "iat": { "type": "integer", "minimum": 0 },
                    "exp": { "type": "integer", "minimum": 0 },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "ClusterNode",
            json!({
                "type": "object",
                "required": ["id", "api_addr", "rpc_addr", "joined_at_unix", "removed",
                             "log_format", "role", "matched_index", "lag"],
                "properties": {
                    "id": { "type": "integer", "minimum": 0 },
                    "api_addr": { "type": "string" },
                    "rpc_addr": { "type": "string" },
                    "joined_at_unix": { "type": "integer", "minimum": 0 },
                    "removed": { "type": "boolean" },
                    "log_format": {
                        "type": "integer", "minimum": 1,
                        "description": "The newest log entry format the node registered it \
                            reads; entries are written in the lowest of these among nodes not \
                            removed."
                    },
                    "role": { "type": "string",
                              "enum": ["leader", "voter", "learner", "pending", "removed"] },
                    "matched_index": { "type": ["integer", "null"], "minimum": 0 },
                    "lag": { "type": ["integer", "null"], "minimum": 0 },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "Status",
            json!({
                "type": "object",
                "required": ["node_id", "health", "role", "leader", "term", "revision", "members",
                             "version"],
                "properties": {
                    "node_id": { "type": "integer", "minimum": 0 },
                    "health": { "type": "string",
                                "enum": ["ok", "no_leader", "no_quorum", "stopped"] },
                    "stopped": {
                        "type": ["string", "null"],
                        "description": "Why Raft stopped on this node, if it stopped on an error \
                            (apply halted at a log entry it cannot apply: the message names its \
                            index and format). The node serves reads of its last state only."
                    },
                    "time_unix": { "type": "integer", "minimum": 0 },
                    "role": { "type": "string",
                              "enum": ["leader", "follower", "candidate", "learner", "shutdown"] },
                    "leader": { "type": ["integer", "null"], "minimum": 0 },
                    "term": { "type": "integer", "minimum": 0 },
                    "revision": { "type": "integer", "minimum": 0 },
                    "state_digest": {
                        "type": ["string", "null"],
                        "pattern": "^[0-9a-f]{64}$",
                        "description": "A digest of this node's replicated state (hex): two \
                            nodes with the same `state_digest_index` hold the same state exactly \
                            when their digests are equal. Null before the first entry is applied."
                    },
                    "state_digest_index": {
                        "type": ["integer", "null"], "minimum": 0,
                        "description": "The log index of the last entry `state_digest` covers."
                    },
                    "log_format": {
                        "type": "integer", "minimum": 1,
                        "description": "The newest log entry format this node reads."
                    },
                    "members": { "type": "array", "items": { "type": "object" } },
                    "membership_joint": { "type": "boolean" },
                    "version": { "type": "string" },
                },
            }),
        ),
        (
            "JsonPatch",
            json!({ "type": "array", "items": ref_to("PatchOperation") }),
        ),
        ("PatchOperation", patch_operation()),
        ("UserCreate", user_input(true)),
        ("UserReplace", user_input(false)),
    ]
}

/// One RFC 6902 operation: `op` and `path` always, `value` for add, replace
/// and test, `from` for move and copy. Paths are JSON Pointers (RFC 6901).
fn patch_operation() -> Value {
    let pointer = json!({ "type": "string", "pattern": "^(/([^~/]|~[01])*)*$" });
    let op = |name: &str, extra: Option<&str>| {
        let mut required = vec!["op", "path"];
        let mut properties = json!({ "op": { "const": name }, "path": pointer });
        if let Some(extra) = extra {
            required.push(extra);
            properties[extra] = if extra == "from" {
                pointer.clone()
            } else {
                json!({})
            };
        }
        json!({ "type": "object", "required": required, "properties": properties })
    };
    json!({
        "oneOf": [
            op("add", Some("value")),
            op("remove", None),
            op("replace", Some("value")),
            op("move", Some("from")),
            op("copy", Some("from")),
            op("test", Some("value")),
        ],
    })
}

/// The body that creates (`password` required) or replaces (absent keeps the
/// current password) a user.
fn user_input(create: bool) -> Value {
    let password = json!({
        "type": "string",
        "minLength": 8,
        "writeOnly": true,
        "description": if create {
            "At least 8 characters"
        } else {
            "At least 8 characters; absent keeps the current password"
        },
    });
    let password = if create { password } else { nullable(password) };
    let mut required = vec!["name"];
    if create {
        required.push("password");
    }
    json!({
        "type": "object",
        "required": required,
        "properties": {
            "name": ref_to("Name"),
            "password": password,
            "admin": { "type": "boolean" },
            "description": description(),
            "revision": { "type": "integer", "minimum": 0, "readOnly": true },
        },
        "additionalProperties": false,
    })
}

/// `properties.<field>` of a component schema.
fn field<'a>(schemas: &'a mut Map<String, Value>, schema: &str, field: &str) -> &'a mut Value {
    schemas
        .get_mut(schema)
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut(field))
        .unwrap_or_else(|| panic!("schema {schema} has no field {field}"))
}

/// Replaces a field's schema, keeping its description.
fn set(schemas: &mut Map<String, Value>, schema: &str, name: &str, mut new: Value) {
    let slot = field(schemas, schema, name);
    if let (Some(text), Some(map)) = (slot.get("description").cloned(), new.as_object_mut()) {
        map.entry("description").or_insert(text);
    }
    *slot = new;
}

/// Merges keywords into a field's schema.
fn merge(schemas: &mut Map<String, Value>, schema: &str, name: &str, keywords: Value) {
    let slot = field(schemas, schema, name);
    if let (Some(slot), Value::Object(keywords)) = (slot.as_object_mut(), keywords) {
        slot.extend(keywords);
    }
}

/// utoipa writes Rust's unsigned integers as OpenAPI's signed `int32` and
/// `int64` formats with `minimum: 0`; their real upper bound is larger.
fn unsigned_bounds(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let unsigned = map.get("minimum") == Some(&json!(0));
            let max = match map.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(json!(u32::MAX)),
                Some("int64") if unsigned => Some(json!(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(unsigned_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

fn refine(doc: &mut Value) {
    unsigned_bounds(&mut doc["components"]);
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has component schemas");
    for (name, schema) in extra_schemas() {
        schemas.insert(name.to_string(), schema);
    }
    let name = || ref_to("Name");
    let host = || ref_to("HostAddress");
    let options = || {
        json!({
            "type": "array",
            "maxItems": MAX_OPTIONS,
            "items": ref_to("DhcpOption"),
            "description": "One entry per code",
        })
    };

    // Machines.
    set(schemas, "Machine", "name", ref_to("HostName"));
    set(
        schemas,
        "Machine",
        "uuid",
        json!({
            "type": "string",
            "format": "uuid",
            "not": { "const": "00000000-0000-0000-0000-000000000000" },
            "description": "Assigned by the server when absent on create",
        }),
    );
    set(
        schemas,
        "Machine",
        "hardware_addrs",
        json!({ "type": "array", "items": ref_to("Mac"), "maxItems": MAX_HARDWARE_ADDRS }),
    );
    set(schemas, "Machine", "address", nullable(host()));
    set(
        schemas,
        "Machine",
        "bootenv",
        json!({ "anyOf": [{ "const": "" }, name()] }),
    );
    set(
        schemas,
        "Machine",
        "profiles",
        json!({ "type": "array", "items": name(), "maxItems": MAX_PROFILES, "uniqueItems": true }),
    );
    set(schemas, "Machine", "params", ref_to("Params"));
    set(
        schemas,
        "Machine",
        "meta",
        json!({
            "type": "object",
            "propertyNames": name(),
            "additionalProperties": { "type": "string", "maxLength": MAX_META_VALUE_LEN },
            "maxProperties": MAX_META,
        }),
    );
    set(schemas, "Machine", "description", description());

    // Profiles.
    set(schemas, "Profile", "name", name());
    set(schemas, "Profile", "description", description());
    set(schemas, "Profile", "params", ref_to("Params"));
    set(
        schemas,
        "Profile",
        "profiles",
        json!({
            "type": "array", "items": name(), "maxItems": MAX_PROFILES, "uniqueItems": true,
            "description": "Nested profiles, consulted in order after this profile's own \
                            params; never the profile itself (`self_reference`)",
        }),
    );

    // Params.
    set(schemas, "Param", "name", name());
    set(schemas, "Param", "description", description());
    merge(
        schemas,
        "Param",
        "schema",
        json!({ "type": ["object", "boolean"],
                "description": "A JSON Schema the values must satisfy; absent means any value" }),
    );

    // Bootenvs.
    set(schemas, "BootEnv", "name", name());
    set(schemas, "BootEnv", "description", description());
    merge(
        schemas,
        "BootEnv",
        "templates",
        json!({ "maxItems": MAX_TEMPLATES }),
    );
    for list in ["required_params", "optional_params"] {
        set(schemas, "BootEnv", list, names(MAX_BOOTENV_PARAMS));
    }
    set(schemas, "ArchBoot", "kernel", boot_path());
    set(
        schemas,
        "ArchBoot",
        "initrds",
        json!({ "type": "array", "items": boot_path(), "maxItems": MAX_INITRDS }),
    );
    set(schemas, "ArchBoot", "loader", nullable(boot_path()));
    set(schemas, "TemplateRef", "name", name());
    merge(schemas, "TemplateRef", "path", json!({ "minLength": 1 }));
    set(schemas, "TemplateRef", "template_id", nullable(name()));
    if let Some(template_ref) = schemas.get_mut("TemplateRef") {
        template_ref["description"] =
            json!("A file of the bootenv: exactly one of `template_id` and `contents`.");
        template_ref["oneOf"] = json!([
            { "required": ["template_id"],
              "properties": { "template_id": { "type": "string" }, "contents": { "type": "null" } } },
            { "required": ["contents"],
              "properties": { "contents": { "type": "string" }, "template_id": { "type": "null" } } },
        ]);
    }

    // Templates.
    set(schemas, "Template", "id", name());
    set(schemas, "Template", "description", description());
    merge(
        schemas,
        "Template",
        "body",
        json!({ "maxLength": MAX_TEMPLATE_LEN }),
    );

    // Subnets, reservations, leases.
    set(schemas, "Subnet", "name", name());
    set(schemas, "Subnet", "cidr", ref_to("Cidr"));
    merge(schemas, "Subnet", "pools", json!({ "maxItems": MAX_POOLS }));
    set(schemas, "PoolRange", "start", host());
    set(schemas, "PoolRange", "end", host());
    for secs in ["lease_secs", "reserved_lease_secs"] {
        merge(schemas, "Subnet", secs, json!({ "minimum": 1 }));
    }
    set(schemas, "Subnet", "options", options());
    set(schemas, "Subnet", "next_server", nullable(host()));
    set(
        schemas,
        "DhcpOption",
        "code",
        json!({
            "type": "integer",
            "minimum": 1,
            "maximum": 254,
            "not": { "enum": [51, 53, 54] },
            "description": "Not 0 or 255 (framing) nor 51, 53, 54 (set by Cradle)",
        }),
    );
    merge(
        schemas,
        "DhcpOption",
        "value",
        json!({ "maxLength": MAX_OPTION_VALUE_LEN, "description": "A template" }),
    );
    set(schemas, "Reservation", "address", host());
    set(schemas, "Reservation", "hardware_addr", ref_to("Mac"));
    set(schemas, "Reservation", "subnet", name());
    set(schemas, "Reservation", "options", options());
    set(schemas, "Reservation", "next_server", nullable(host()));
    set(schemas, "Reservation", "description", description());
    set(schemas, "Lease", "address", host());
    set(
        schemas,
        "Lease",
        "client_id",
        json!({
            "type": "string",
            "pattern": format!(
                "^[:-]*([0-9A-Fa-f][:-]*[0-9A-Fa-f][:-]*){{1,{}}}$",
                MAX_CLIENT_ID_HEX / 2
            ),
        }),
    );
    set(
        schemas,
        "Lease",
        "hardware_addr",
        json!({ "anyOf": [{ "const": "" }, ref_to("Mac")] }),
    );
    set(schemas, "Lease", "via", nullable(host()));

    // Users, tokens, prefs.
    set(schemas, "UserView", "name", name());
    set(schemas, "TokenInfo", "id", name());
    set(schemas, "TokenInfo", "user", name());
    set(
        schemas,
        "TokenRequest",
        "ttl_secs",
        nullable(json!({
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_API_TOKEN_TTL_SECS,
            "description": format!(
                "Lifetime in seconds: at most the `max_api_token_ttl_secs` pref (default \
                 {DEFAULT_MAX_API_TOKEN_TTL_SECS}; `invalid_ttl` above it), which is at most \
                 {MAX_API_TOKEN_TTL_SECS}"
            ),
        })),
    );
    set(schemas, "TokenRequest", "description", description());
    set(schemas, "TokenRequest", "user", nullable(name()));
    set(
        schemas,
        "Scope",
        "object",
        nullable(json!({
            "type": "string",
            "pattern": format!("^[^{WHITESPACE_OR_CONTROL}/]+$"),
            "maxLength": 253,
        })),
    );
    if let Some(scope) = schemas.get_mut("Scope") {
        // `object` narrows a `kind`: without one it is `invalid_scope`.
        scope["anyOf"] = json!([
            { "not": { "required": ["object"] } },
            { "properties": { "object": { "type": "null" } } },
            { "required": ["kind"], "properties": { "kind": ref_to("ObjectKind") } },
        ]);
    }
    let mut login = schemas["TokenRequest"].clone();
    if let Some(properties) = login["properties"].as_object_mut() {
        properties.remove("user");
    }
    login["description"] = json!("`POST /auth/token`: a token for the caller.");
    schemas.insert("LoginRequest".into(), login);
    for ttl in ["unknown_token_ttl_secs", "known_token_ttl_secs"] {
        merge(
            schemas,
            "Prefs",
            ttl,
            json!({ "minimum": 1, "maximum": crate::model::MAX_TOKEN_TTL_SECS }),
        );
    }
    merge(
        schemas,
        "Prefs",
        "max_api_token_ttl_secs",
        json!({ "minimum": 1, "maximum": MAX_API_TOKEN_TTL_SECS }),
    );
    merge(
        schemas,
        "Prefs",
        "max_object_bytes",
        json!({ "minimum": MIN_MAX_OBJECT_BYTES, "maximum": MAX_MAX_OBJECT_BYTES }),
    );
    merge(
        schemas,
        "Prefs",
        "event_retention",
        json!({ "minimum": MIN_EVENT_RETENTION, "maximum": MAX_EVENT_RETENTION }),
    );
    set(schemas, "Prefs", "default_bootenv", name());
    set(schemas, "Prefs", "unknown_bootenv", name());

    // Join tokens.
    merge(
        schemas,
        "JoinTokenRequest",
        "ttl_secs",
        json!({ "minimum": 1, "maximum": MAX_JOIN_TOKEN_TTL_SECS }),
    );
    merge(
        schemas,
        "JoinTokenRequest",
        "uses",
        json!({ "minimum": 1, "maximum": MAX_JOIN_TOKEN_USES }),
    );
    for addr in ["rpc_addr", "api_addr"] {
        merge(
            schemas,
            "JoinRequest",
            addr,
            json!({ "pattern": "^[!-~]*:[!-~]*$", "maxLength": 255,
                    "description": "`host:port`, printable ASCII" }),
        );
    }

    // What a list may sort by: a field, or a dotted path into one, or an
    // indexed field (`invalid_query` otherwise).
    for kind in ObjectKind::ALL {
        let escape = |name: &str| -> String {
            name.chars()
                .flat_map(|c| {
                    let special = "\\.^$|()[]{}*+?".contains(c);
                    special.then_some('\\').into_iter().chain([c])
                })
                .collect()
        };
        let fields: Vec<String> = kind.field_names().iter().map(|f| escape(f)).collect();
        let indexed: Vec<String> = indexed_fields(*kind).iter().map(|f| escape(f)).collect();
        let mut pattern = format!("^(({})(\\..*)?", fields.join("|"));
        if !indexed.is_empty() {
            pattern.push_str(&format!("|{}", indexed.join("|")));
        }
        pattern.push_str(")$");
        schemas.insert(
            format!("{}Sort", schema_name(*kind)),
            json!({ "type": "string", "pattern": pattern }),
        );
    }

    let mut machine = schemas["Machine"].clone();
    if let Some(required) = machine["required"].as_array_mut() {
        required.push(json!("uuid"));
    }
    machine["description"] = json!("A machine as sent to replace it: with its UUID.");
    schemas.insert("MachineReplace".into(), machine);

    // The error codes, from the table: an enum, so a client or fuzzer can
    // check every error it receives, described code by code.
    let mut description = String::from(
        "Stable, machine-readable: clients match on this, never on `message`. Each code with \
         the HTTP status it comes with:",
    );
    for code in error_code::ALL {
        description.push_str(&format!(
            "\n- `{}` ({}): {}",
            code.name(),
            code.status(),
            code.description()
        ));
    }
    let names: Vec<&str> = error_code::ALL.iter().map(|c| c.name()).collect();
    schemas.insert(
        "ErrorCode".into(),
        json!({ "type": "string", "enum": names, "description": description }),
    );
    set(schemas, "ErrorBody", "code", ref_to("ErrorCode"));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    /// One `.route(...)` of `mod.rs`: its path under `/api/v1`, its methods,
    /// and whether it is public (not wrapped in `needs(..)`, the guard).
    #[derive(Debug)]
    struct Route {
        path: String,
        methods: BTreeSet<String>,
        public: bool,
    }

    /// The routes as `api::router` declares them, read from its source.
    fn routes() -> Vec<Route> {
        let source = include_str!("mod.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let mut out = Vec::new();
        for (at, _) in source.match_indices(".route(") {
            let body = &source[at + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes it.
            let mut depth = 1;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("balanced parentheses");
            let args = &body[..end];
            let path = args.split('"').nth(1).expect("a path literal").to_string();
            let mut methods = BTreeSet::new();
            for method in METHODS {
                for (i, _) in args.match_indices(&format!("{method}(")) {
                    let before = args[..i].chars().last().unwrap_or(' ');
                    if !(before.is_alphanumeric() || before == '_' || before == ':') {
                        methods.insert(method.to_string());
                    }
                }
            }
            out.push(Route {
                path,
                methods,
                public: !args.contains("needs("),
            });
        }
        assert!(out.len() > 10, "found only {} routes in mod.rs", out.len());
        out
    }

    /// The route the router picks for a concrete path: static segments win
    /// over `{param}` ones, left to right (as in axum's matcher).
    fn route_for<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
        let segments: Vec<&str> = path.split('/').collect();
        routes
            .iter()
            .filter(|r| {
                let own: Vec<&str> = r.path.split('/').collect();
                own.len() == segments.len()
                    && own
                        .iter()
                        .zip(&segments)
                        .all(|(a, b)| a.starts_with('{') || a == b)
            })
            .max_by_key(|r| {
                r.path
                    .split('/')
                    .map(|s| !s.starts_with('{'))
                    .collect::<Vec<bool>>()
            })
    }

    #[test]
    fn every_route_is_documented_and_every_operation_routed() {
        let doc = openapi();
        let routes = routes();
        let mut served = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let concrete = path.strip_prefix("/api/v1").expect("under /api/v1");
            // Documented `{key}`-style segments stand for any value: only
            // the router's own `{param}` segments match them.
            let route = route_for(&routes, concrete)
                .unwrap_or_else(|| panic!("{path} is documented but not routed"));
            served.insert(route.path.clone());
            let documented: BTreeSet<String> = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            assert_eq!(
                documented, route.methods,
                "{path}: documented methods differ from the route {}",
                route.path
            );
            for method in &documented {
                // Public: its own `security` that does not ask for a bearer
                // token (`[]`, or HTTP Basic for `/auth/token`).
                let is_public = item[method]
                    .get("security")
                    .is_some_and(|s| !s.to_string().contains("bearer"));
                assert_eq!(
                    is_public,
                    route.public,
                    "{method} {path}: documented {} but routed {}",
                    if is_public {
                        "public"
                    } else {
                        "with a bearer token"
                    },
                    if route.public {
                        "public"
                    } else {
                        "behind the token middleware"
                    }
                );
            }
        }
        for route in &routes {
            assert!(
                served.contains(&route.path),
                "route {} is not documented",
                route.path
            );
        }
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The codes the code base answers with: every `code::NAME` (through
    /// any path ending in `code::`, e.g. `error_code::`) outside tests and
    /// outside the table itself. A code is a typed constant, so naming it is
    /// the only way to emit it.
    fn emitted_codes() -> BTreeSet<&'static str> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut out = BTreeSet::new();
        for file in files {
            if file.ends_with("error_code.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            let text = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
            for (i, _) in text.match_indices("code::") {
                let before = text[..i].chars().last().unwrap_or(' ');
                if before.is_ascii_alphanumeric() && before != '_' {
                    continue;
                }
                let ident: String = text[i + "code::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `error_code::Code`, `code::with_status`: not a code.
                if ident.is_empty()
                    || ident == "ALL"
                    || ident.chars().any(|c| c.is_ascii_lowercase())
                {
                    continue;
                }
                let code =
                    error_code::Code::from_name(&ident.to_ascii_lowercase()).unwrap_or_else(|| {
                        panic!("{}: code::{ident} is not in the table", file.display())
                    });
                out.insert(code.name());
            }
        }
        out
    }

    /// The statuses some operation documents as a response.
    fn documented_statuses() -> BTreeSet<u16> {
        let mut documented = BTreeSet::new();
        for item in openapi()["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                    documented.extend(responses.keys().filter_map(|s| s.parse::<u16>().ok()));
                }
            }
        }
        documented
    }

    #[test]
    fn every_code_is_in_the_document() {
        let schemas = &openapi()["components"]["schemas"];
        let listed: Vec<&str> = schemas["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode is an enum")
            .iter()
            .map(|v| v.as_str().expect("a code name"))
            .collect();
        let table: Vec<&str> = error_code::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(listed, table, "the ErrorCode enum is not the error table");
        let description = schemas["ErrorCode"]["description"].as_str().expect("text");
        for code in error_code::ALL {
            let line = format!(
                "`{}` ({}): {}",
                code.name(),
                code.status(),
                code.description()
            );
            assert!(description.contains(&line), "{code} is not described");
        }
        assert_eq!(
            schemas["ErrorBody"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }

    #[test]
    fn every_code_is_emitted_and_its_status_documented() {
        let emitted = emitted_codes();
        assert!(emitted.len() > 40, "found only {} codes", emitted.len());
        let unused: Vec<&str> = error_code::ALL
            .iter()
            .map(|c| c.name())
            .filter(|name| !emitted.contains(name))
            .collect();
        assert!(
            unused.is_empty(),
            "codes in the table that nothing emits (remove them, or use them): {unused:?}"
        );
        // Every status but 500 that the code base answers with is some
        // operation's documented response. 405 and 415 are how the router
        // answers a method or content type a path does not take: not an
        // operation's response but the lack of one.
        let documented = documented_statuses();
        for code in error_code::ALL {
            let status = code.status();
            if !matches!(status, 405 | 415 | 500) {
                assert!(
                    documented.contains(&status),
                    "{status} ({code}) is answered but no operation documents it"
                );
            }
        }
    }

    /// Where an operation's error response names a code, that code comes
    /// with that status: hand-written descriptions cannot drift from the
    /// table.
    #[test]
    fn codes_named_in_responses_match_their_status() {
        let mut wrong = BTreeSet::new();
        for (path, item) in openapi()["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for (status, response) in responses {
                    let Ok(status @ 400..) = status.parse::<u16>() else {
                        continue;
                    };
                    let text = response["description"].as_str().unwrap_or("");
                    for (i, quoted) in text.split('`').enumerate() {
                        let is_code_like = i % 2 == 1
                            && !quoted.is_empty()
                            && quoted.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                        if !is_code_like {
                            continue;
                        }
                        match error_code::Code::from_name(quoted) {
                            Some(code) if code.status() == status => {}
                            Some(code) => {
                                wrong.insert(format!(
                                    "{method} {path}: the {status} response names `{code}` ({})",
                                    code.status()
                                ));
                            }
                            None if NOT_CODES.contains(&quoted) => {}
                            None => {
                                wrong.insert(format!(
                                    "{method} {path}: the {status} response names `{quoted}`, \
                                     not an error code"
                                ));
                            }
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Words in backquotes in error descriptions that are not codes.
    const NOT_CODES: &[&str] = &[
        "code",
        "field",
        "force",
        "max_object_bytes",
        "since",
        "test",
    ];

    #[test]
    fn every_reference_resolves() {
        let doc = openapi();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        fn walk(v: &Value, schemas: &Map<String, Value>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let name = r
                            .strip_prefix("#/components/schemas/")
                            .unwrap_or_else(|| panic!("unexpected reference {r}"));
                        assert!(schemas.contains_key(name), "unresolved reference {r}");
                    }
                    map.values().for_each(|v| walk(v, schemas));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, schemas)),
                _ => {}
            }
        }
        walk(doc, schemas);
    }

    #[test]
    fn users_are_shown_without_their_hash() {
        let doc = openapi();
        let view = &doc["components"]["schemas"]["UserView"]["properties"];
        assert!(view.get("password_hash").is_none());
        assert_eq!(
            doc["paths"]["/api/v1/users/{key}"]["get"]["responses"]["200"]["content"]
                ["application/json"]["schema"]["$ref"],
            "#/components/schemas/UserView"
        );
        let create = &doc["components"]["schemas"]["UserCreate"];
        assert!(create["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("password"))));
    }

    #[test]
    fn no_response_schema_has_a_place_for_a_hash() {
        let doc = openapi();
        fn walk(v: &Value, at: &str) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::Object(properties)) = map.get("properties") {
                        for name in ["password_hash", "secret_sha256"] {
                            assert!(!properties.contains_key(name), "{name} in {at}");
                        }
                    }
                    for (key, value) in map {
                        walk(value, &format!("{at}/{key}"));
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, at)),
                _ => {}
            }
        }
        walk(doc, "#");
        assert_eq!(
            doc["paths"]["/api/v1/cluster/tokens"]["get"]["responses"]["200"]["content"]
                ["application/json"]["schema"]["items"]["$ref"],
            "#/components/schemas/JoinToken"
        );
        let token = &doc["components"]["schemas"]["JoinToken"]["properties"];
        assert!(token.get("uses_left").is_some(), "{token}");
    }
}
