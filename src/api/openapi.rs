//! The OpenAPI 3 document served at `/api/v1/openapi.json`, generated from
//! the model types (their `ToSchema` derives) and the route table below, so
//! it cannot drift from the code that serves it.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};

use super::auth::{TokenGrant, TokenRequest};
use super::cluster::{JoinTokenGrant, JoinTokenRequest};
use super::error::ErrorBody;
use super::objects::UserInput;
use crate::cluster::join::{JoinRequest, JoinResponse};
use crate::cluster::state::JoinToken;
use crate::model::{
    BootEnv, Lease, Machine, ObjectKind, Param, Prefs, Profile, Reservation, Subnet, Template,
    TokenInfo, User,
};
use crate::store::Event;

pub async fn document() -> Json<&'static OpenApi> {
    Json(openapi())
}

/// Built once: the document depends only on the code.
pub fn openapi() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

/// The schema name of each kind's object.
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
        ObjectKind::Users => "User",
        ObjectKind::Tokens => "TokenInfo",
        ObjectKind::Prefs => "Prefs",
    }
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
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

fn path_param(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn query_param(name: &str, description: &str, kind: Type) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(kind)))
        .build()
}

fn header_param(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn if_match() -> utoipa::openapi::path::Parameter {
    header_param("If-Match", "Only if the object is at this revision")
}

fn required_json(schema: RefOr<Schema>) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content("application/json", json_content(schema))
        .build()
}

fn operation(id: String, summary: String, tag: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .tag(tag)
        .response("400", error_response("Bad input"))
        .response("401", error_response("No or invalid token"))
        .response("403", error_response("Token scope does not allow this"))
        .response("503", error_response("No leader (code `no_leader`)"))
}

fn build() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for kind in ObjectKind::ALL {
        let plural = kind.as_str();
        let object = schema_ref(schema_name(*kind));
        let body_schema = if *kind == ObjectKind::Users {
            schema_ref("UserInput")
        } else if *kind == ObjectKind::Tokens {
            schema_ref("TokenRequest")
        } else {
            object.clone()
        };
        let array = RefOr::T(Schema::Array(utoipa::openapi::schema::Array::new(
            object.clone(),
        )));
        let mut list = operation(format!("list_{plural}"), format!("List {plural}"), plural)
            .parameter(query_param(
                "limit",
                "Page size (1..=10000, default 1000)",
                Type::Integer,
            ))
            .parameter(query_param(
                "offset",
                "Skip this many matches",
                Type::Integer,
            ))
            .parameter(query_param(
                "cursor",
                "Resume after a page's `X-Next-Cursor`",
                Type::String,
            ))
            .parameter(query_param(
                "sort",
                "Dotted field path to sort by",
                Type::String,
            ))
            .parameter(query_param("desc", "Sort descending", Type::Boolean))
            .parameter(query_param(
                "consistent",
                "Linearizable read through the leader",
                Type::Boolean,
            ))
            .response(
                "200",
                ok_response("Matching objects; `X-Next-Cursor` when more remain", array),
            );
        list = list.description(Some(
            "Any other query parameter `field=value` filters: indexed fields use the index, \
             dotted paths (e.g. `params.rack`) scan.",
        ));
        let create = operation(
            format!("create_{plural}"),
            format!("Create one of {plural}"),
            plural,
        )
        .request_body(Some(required_json(body_schema.clone())))
        .response(
            "201",
            ok_response("Created; ETag is its revision", object.clone()),
        )
        .response(
            "409",
            error_response("Already exists, duplicate, missing reference"),
        );
        paths = paths.path(
            format!("/api/v1/{plural}"),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list)
                .operation(HttpMethod::Post, create)
                .build(),
        );

        let key = path_param("key", "The object's key");
        let show = operation(
            format!("show_{plural}"),
            format!("Show one of {plural}"),
            plural,
        )
        .parameter(key.clone())
        .parameter(query_param(
            "consistent",
            "Linearizable read through the leader",
            Type::Boolean,
        ))
        .response(
            "200",
            ok_response("The object; ETag is its revision", object.clone()),
        )
        .response("404", error_response("No such object"));
        let replace = operation(
            format!("replace_{plural}"),
            format!("Replace one of {plural}"),
            plural,
        )
        .parameter(key.clone())
        .parameter(if_match())
        .request_body(Some(required_json(body_schema)))
        .response("200", ok_response("Replaced", object.clone()))
        .response("412", error_response("Stale If-Match"));
        let patch = operation(
            format!("patch_{plural}"),
            format!("JSON-Patch one of {plural}"),
            plural,
        )
        .parameter(key.clone())
        .parameter(if_match())
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json-patch+json",
                    json_content(RefOr::T(Schema::Array(
                        utoipa::openapi::schema::Array::new(
                            ObjectBuilder::new().schema_type(Type::Object),
                        ),
                    ))),
                )
                .build(),
        ))
        .response("200", ok_response("Patched", object.clone()))
        .response(
            "409",
            error_response("A `test` operation failed (code `patch_test_failed`)"),
        )
        .response("412", error_response("Stale If-Match"));
        let delete = operation(
            format!("delete_{plural}"),
            format!("Delete one of {plural}"),
            plural,
        )
        .parameter(key)
        .parameter(if_match())
        .response(
            "200",
            ok_response(
                "Deleted (tokens: revoked)",
                RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into()),
            ),
        )
        .response("409", error_response("Still in use"));
        paths = paths.path(
            format!("/api/v1/{plural}/{{key}}"),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, show)
                .operation(HttpMethod::Put, replace)
                .operation(HttpMethod::Patch, patch)
                .operation(HttpMethod::Delete, delete)
                .build(),
        );
    }
    for kind in [ObjectKind::Machines, ObjectKind::Profiles] {
        let plural = kind.as_str();
        let map = RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into());
        paths = paths.path(
            format!("/api/v1/{plural}/{{key}}/params"),
            PathItem::new(
                HttpMethod::Get,
                operation(
                    format!("params_{plural}"),
                    format!("The params set on one of {plural}"),
                    plural,
                )
                .parameter(path_param("key", "The object's key"))
                .response("200", ok_response("name → value", map.clone())),
            ),
        );
        paths = paths.path(
            format!("/api/v1/{plural}/{{key}}/params/{{name}}"),
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    operation(
                        format!("param_get_{plural}"),
                        "One param's value".into(),
                        plural,
                    )
                    .parameter(path_param("key", "The object's key"))
                    .parameter(path_param("name", "The param"))
                    .response("200", ok_response("The value", map.clone())),
                )
                .operation(
                    HttpMethod::Put,
                    operation(
                        format!("param_set_{plural}"),
                        "Set one param (body: the JSON value)".into(),
                        plural,
                    )
                    .parameter(path_param("key", "The object's key"))
                    .parameter(path_param("name", "The param"))
                    .response(
                        "200",
                        ok_response("All params after the change", map.clone()),
                    ),
                )
                .operation(
                    HttpMethod::Delete,
                    operation(
                        format!("param_delete_{plural}"),
                        "Unset one param".into(),
                        plural,
                    )
                    .parameter(path_param("key", "The object's key"))
                    .parameter(path_param("name", "The param"))
                    .response("200", ok_response("All params after the change", map)),
                )
                .build(),
        );
    }
    paths = paths
        .path(
            "/api/v1/machines/{key}/effective-params",
            PathItem::new(
                HttpMethod::Get,
                operation(
                    "effective_params".into(),
                    "Resolved params and where each came from".into(),
                    "machines",
                )
                .parameter(path_param("key", "The machine's UUID"))
                .response(
                    "200",
                    ok_response(
                        "name → {value, source}",
                        RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into()),
                    ),
                ),
            ),
        )
        .path(
            "/api/v1/auth/token",
            PathItem::new(
                HttpMethod::Post,
                OperationBuilder::new()
                    .operation_id(Some("issue_token"))
                    .summary(Some("Exchange HTTP Basic credentials for a bearer token"))
                    .tag("auth")
                    .security(SecurityRequirement::new("basic", Vec::<String>::new()))
                    .request_body(Some(
                        RequestBodyBuilder::new()
                            .content("application/json", json_content(schema_ref("TokenRequest")))
                            .build(),
                    ))
                    .response("200", ok_response("The token", schema_ref("TokenGrant")))
                    .response("401", error_response("Wrong credentials")),
            ),
        )
        .path(
            "/api/v1/auth/whoami",
            PathItem::new(
                HttpMethod::Get,
                operation("whoami".into(), "The caller's token claims".into(), "auth").response(
                    "200",
                    ok_response(
                        "Claims",
                        RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into()),
                    ),
                ),
            ),
        )
        .path(
            "/api/v1/ca",
            PathItem::new(
                HttpMethod::Get,
                OperationBuilder::new()
                    .operation_id(Some("ca"))
                    .summary(Some("The cluster CA certificate (PEM), for pinning"))
                    .tag("auth")
                    .response("200", ResponseBuilder::new().description("PEM").build()),
            ),
        )
        .path(
            "/api/v1/status",
            PathItem::new(
                HttpMethod::Get,
                operation(
                    "status".into(),
                    "This node's view of the cluster".into(),
                    "cluster",
                )
                .response(
                    "200",
                    ok_response(
                        "Status",
                        RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into()),
                    ),
                ),
            ),
        )
        .path(
            "/api/v1/events",
            PathItem::new(
                HttpMethod::Get,
                operation(
                    "events".into(),
                    "Server-sent events of every change, in commit order".into(),
                    "events",
                )
                .parameter(query_param(
                    "since",
                    "Resume after this revision",
                    Type::Integer,
                ))
                .parameter(query_param(
                    "kind",
                    "Only this kind (repeatable)",
                    Type::String,
                ))
                .parameter(header_param("Last-Event-ID", "Resume after this revision"))
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("`text/event-stream`; each `data:` is an Event")
                        .content("text/event-stream", json_content(schema_ref("Event")))
                        .build(),
                )
                .response(
                    "410",
                    error_response("`since` is older than the kept events"),
                ),
            ),
        );

    let object_schema = || RefOr::T(ObjectBuilder::new().schema_type(Type::Object).into());
    paths = paths
        .path(
            "/api/v1/cluster/tokens",
            PathItemBuilder::new()
                .operation(
                    HttpMethod::Get,
                    operation("list_join_tokens".into(), "Join tokens (never their secrets)".into(), "cluster")
                        .response("200", ok_response("Join tokens", RefOr::T(Schema::Array(utoipa::openapi::schema::Array::new(schema_ref("JoinToken")))))),
                )
                .operation(
                    HttpMethod::Post,
                    operation("create_join_token".into(), "Issue a join token and its `cradle join` command".into(), "cluster")
                        .request_body(Some(
                            RequestBodyBuilder::new()
                                .content("application/json", json_content(schema_ref("JoinTokenRequest")))
                                .build(),
                        ))
                        .response("201", ok_response("The token, shown once", schema_ref("JoinTokenGrant"))),
                )
                .build(),
        )
        .path(
            "/api/v1/cluster/tokens/{id}",
            PathItem::new(
                HttpMethod::Delete,
                operation("revoke_join_token".into(), "Revoke a join token".into(), "cluster")
                    .parameter(path_param("id", "The token id"))
                    .response("200", ok_response("Revoked", object_schema()))
                    .response("404", error_response("No such token")),
            ),
        )
        .path(
            "/api/v1/cluster/join",
            PathItem::new(
                HttpMethod::Post,
                OperationBuilder::new()
                    .operation_id(Some("join"))
                    .summary(Some("Spend a join token: register a node and sign its CSR"))
                    .tag("cluster")
                    .request_body(Some(required_json(schema_ref("JoinRequest"))))
                    .response("200", ok_response("The node's id and certificate", schema_ref("JoinResponse")))
                    .response("400", error_response("Bad CSR or address"))
                    .response(
                        "401",
                        error_response("Token invalid, expired, used up or revoked (`invalid_join_token`, `join_token_*`)"),
                    ),
            ),
        )
        .path(
            "/api/v1/cluster/nodes",
            PathItem::new(
                HttpMethod::Get,
                operation("list_nodes".into(), "Members: addresses, role, lag".into(), "cluster")
                    .response("200", ok_response("Members", RefOr::T(Schema::Array(utoipa::openapi::schema::Array::new(object_schema()))))),
            ),
        )
        .path(
            "/api/v1/cluster/nodes/{id}",
            PathItem::new(
                HttpMethod::Delete,
                operation("remove_node".into(), "Remove a member (membership change)".into(), "cluster")
                    .parameter(path_param("id", "The node id"))
                    .parameter(query_param("force", "Allow removing the answering node or the last voter", Type::Boolean))
                    .response("200", ok_response("Removed", object_schema()))
                    .response("409", error_response("`removing_self` or `last_voter` without force")),
            ),
        );

    let components = ComponentsBuilder::new()
        .schema_from::<Machine>()
        .schema_from::<Profile>()
        .schema_from::<Param>()
        .schema_from::<BootEnv>()
        .schema_from::<Template>()
        .schema_from::<Subnet>()
        .schema_from::<Reservation>()
        .schema_from::<Lease>()
        .schema_from::<User>()
        .schema_from::<TokenInfo>()
        .schema_from::<Prefs>()
        .schema_from::<Event>()
        .schema_from::<ErrorBody>()
        .schema_from::<UserInput>()
        .schema_from::<TokenRequest>()
        .schema_from::<TokenGrant>()
        .schema_from::<JoinToken>()
        .schema_from::<JoinTokenRequest>()
        .schema_from::<JoinTokenGrant>()
        .schema_from::<JoinRequest>()
        .schema_from::<JoinResponse>()
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

    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Cradle API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Fleet state of a Cradle network-boot cluster. Every member serves every call.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .security(Some([SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build()
}
