//! The stable error codes: every code the server can answer with, defined
//! once here with its HTTP status and a one-line description.
//!
//! A code is a wire contract: clients match on its name, never on the
//! message, so a name never changes once shipped (add a new code instead).
//! The store, the model and the API name codes only through these constants
//! (`code::NOT_FOUND`), so an error cannot carry a code this table does not
//! define, and its status cannot disagree with the table. The status is a
//! plain number: only `api/` turns it into an HTTP response. The OpenAPI
//! document's `ErrorCode` schema is generated from [`ALL`].

use std::fmt;

/// One stable error code. Built only by this module's constants.
#[derive(PartialEq, Eq, Hash)]
pub struct Code {
    name: &'static str,
    status: u16,
    description: &'static str,
}

impl Code {
    /// The name on the wire (`ErrorBody.code`).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The HTTP status an API response with this code carries.
    pub const fn status(&self) -> u16 {
        self.status
    }

    /// What the code means, in one line.
    pub const fn description(&self) -> &'static str {
        self.description
    }

    /// The code with this wire name, if this version defines it.
    pub fn from_name(name: &str) -> Option<&'static Code> {
        ALL.iter().copied().find(|c| c.name == name)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Lets tests and callers compare a code with the name a client sees.
impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.name == other
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name)
    }
}

/// Defines each code as a constant (documented with its description) and
/// [`ALL`], so a code cannot be defined and left out of the list.
macro_rules! codes {
    ($($konst:ident = ($status:literal, $name:literal, $description:literal);)+) => {
        $(
            #[doc = $description]
            pub const $konst: &Code = &Code {
                name: $name,
                status: $status,
                description: $description,
            };
        )+

        /// Every code, in the order of the table.
        pub const ALL: &[&Code] = &[$($konst),+];

        /// The constant's identifier beside each code, for the test that
        /// keeps names and identifiers alike.
        #[cfg(test)]
        const IDENTS: &[(&str, &Code)] = &[$((stringify!($konst), $konst)),+];
    };
}

codes! {
    // 400: the request itself is wrong; sending it again changes nothing.
    BAD_REQUEST = (400, "bad_request", "The request is malformed in a way no more specific code names (a path parameter or query the router could not read)");
    MALFORMED_JSON = (400, "malformed_json", "The request body is not well-formed JSON");
    INVALID_BODY = (400, "invalid_body", "The request body is JSON of the wrong shape for this call, or could not be read");
    INVALID_QUERY = (400, "invalid_query", "A query parameter is unknown or has a bad value (limit, offset, cursor, sort, filter, since, kind)");
    QUERY_TOO_BROAD = (400, "query_too_broad", "A list would read more than a request may (20,000 objects): filter on an indexed field or sort by one");
    INVALID_IF_MATCH = (400, "invalid_if_match", "`If-Match` is not `*` or a list of entity tags, or names more than one revision");
    INVALID_IF_NONE_MATCH = (400, "invalid_if_none_match", "`If-None-Match` is not `*` or a list of entity tags");
    INVALID_PATCH = (400, "invalid_patch", "A JSON Patch operation cannot apply (a path the object does not have), or patches what only PUT may change");
    DUPLICATE_KEY = (400, "duplicate_key", "A key appears twice in one JSON object of the request body");
    TOO_DEEP = (400, "too_deep", "JSON nested deeper than the server's limit, in the body or in what a patch would make");
    TOO_MANY_PATCH_OPS = (400, "too_many_patch_ops", "A JSON Patch has more operations than the server's limit");
    WEAK_PASSWORD = (400, "weak_password", "The new password is too short");
    INVALID_TTL = (400, "invalid_ttl", "A lifetime in seconds is outside the range allowed (token or join-token TTL, a TTL pref)");
    INVALID_USES = (400, "invalid_uses", "A join token's use count is outside the range allowed");
    INVALID_ADDRESS = (400, "invalid_address", "An address is not valid where it is given (not host:port, or not assignable to a host)");
    INVALID_CSR = (400, "invalid_csr", "A joining node's certificate signing request does not parse or cannot be signed");
    INVALID_COMMAND = (400, "invalid_command", "A replicated command could not be decoded or is not allowed (a nested batch); nothing changed");
    INVALID_JSON = (400, "invalid_json", "An object's JSON is not well formed, or is truncated");
    UNKNOWN_FIELD = (400, "unknown_field", "A field the kind does not have (a typo is refused, never dropped)");
    MISSING_FIELD = (400, "missing_field", "A required field is absent");
    INVALID_TYPE = (400, "invalid_type", "A field has the wrong JSON type");
    INVALID_VALUE = (400, "invalid_value", "A field has the right JSON type but a value that does not parse (address, UUID, CIDR, enum variant)");
    REQUIRED = (400, "required", "A required string is empty");
    INVALID_NAME = (400, "invalid_name", "A name is empty, too long, or has characters a name may not have");
    TOO_LONG = (400, "too_long", "A string or document is longer than its limit");
    TOO_MANY = (400, "too_many", "A list or map has more entries than its limit");
    INVALID_MAC = (400, "invalid_mac", "Not a MAC address");
    MISSING_UUID = (400, "missing_uuid", "A machine has no UUID");
    DUPLICATE_PROFILE = (400, "duplicate_profile", "A profile list names the same profile twice");
    SELF_REFERENCE = (400, "self_reference", "A profile includes itself");
    INVALID_TEMPLATE = (400, "invalid_template", "Template text does not parse, or uses more than the template limits allow");
    INVALID_TEMPLATE_SOURCE = (400, "invalid_template_source", "A boot environment's template sets both or neither of `template_id` and `contents`");
    DUPLICATE_TEMPLATE = (400, "duplicate_template", "A boot environment names two templates alike");
    INVALID_PATH = (400, "invalid_path", "A path has whitespace, control characters or a `..` segment, or a path parameter does not parse");
    DUPLICATE_PARAM = (400, "duplicate_param", "A param is listed twice, or as both required and optional");
    INVALID_SCHEMA = (400, "invalid_schema", "A param's schema is not a valid JSON Schema");
    INVALID_DEFAULT = (400, "invalid_default", "A param's default does not match its own schema");
    INVALID_PARAM_VALUE = (400, "invalid_param_value", "A param value does not match the schema of that param");
    INVALID_CIDR = (400, "invalid_cidr", "A subnet's CIDR is not a network address and prefix");
    POOL_OUTSIDE_SUBNET = (400, "pool_outside_subnet", "An address pool reaches outside its subnet");
    POOL_REVERSED = (400, "pool_reversed", "An address pool ends before it starts");
    POOL_OVERLAP = (400, "pool_overlap", "Two address pools of a subnet overlap");
    INVALID_LEASE_TIME = (400, "invalid_lease_time", "A lease time is under one second or out of range");
    INVALID_OPTION_CODE = (400, "invalid_option_code", "A DHCP option code is pad or end, not an option");
    RESERVED_OPTION_CODE = (400, "reserved_option_code", "A DHCP option Cradle sets itself");
    DUPLICATE_OPTION = (400, "duplicate_option", "A DHCP option is set twice");
    INVALID_CLIENT_ID = (400, "invalid_client_id", "Not a hex DHCP client identifier of 1 to 255 bytes");
    INVALID_PASSWORD_HASH = (400, "invalid_password_hash", "A stored password hash is not a PHC string");
    INVALID_EXPIRY = (400, "invalid_expiry", "A token would expire before it is created");
    INVALID_SCOPE = (400, "invalid_scope", "A token scope names no kind, or not an object key");

    // 401: who is asking is not established.
    UNAUTHORIZED = (401, "unauthorized", "No valid credentials: no bearer token, a malformed or unknown one, or a wrong password");
    TOKEN_EXPIRED = (401, "token_expired", "The bearer token has expired; log in again");
    TOKEN_REVOKED = (401, "token_revoked", "The bearer token has been revoked");
    TOKEN_SUPERSEDED = (401, "token_superseded", "The token's user changed (password, rights, re-created) since it was issued");
    INVALID_JOIN_TOKEN = (401, "invalid_join_token", "The join token is malformed, unknown, or its secret does not match");
    JOIN_TOKEN_REVOKED = (401, "join_token_revoked", "The join token has been revoked");
    JOIN_TOKEN_EXPIRED = (401, "join_token_expired", "The join token has expired");
    JOIN_TOKEN_USED_UP = (401, "join_token_used_up", "The join token has no uses left");

    // 403.
    FORBIDDEN = (403, "forbidden", "The token's scope or the user's rights do not cover this call");

    // 404.
    NOT_FOUND = (404, "not_found", "No such object, route, param or member");

    // 405.
    METHOD_NOT_ALLOWED = (405, "method_not_allowed", "The path does not take this method (`Allow` lists those it takes)");
    READ_ONLY = (405, "read_only", "This object cannot be changed or deleted this way (prefs are not deleted; a token is only revoked; a lease changes only through DHCP, and DELETE releases it)");

    // 408.
    BODY_TIMEOUT = (408, "body_timeout", "The request body did not arrive in time");

    // 409: the request conflicts with the current state; it may succeed once that changes.
    ALREADY_EXISTS = (409, "already_exists", "An object with this key already exists");
    DUPLICATE = (409, "duplicate", "A unique field (name, MAC, address) already belongs to another object");
    IN_USE = (409, "in_use", "Other objects still refer to this one");
    KEY_MISMATCH = (409, "key_mismatch", "The body names another key than the path, or a patch changes the key");
    MISSING_REFERENCE = (409, "missing_reference", "A referenced object (profile, boot environment, user, ...) does not exist");
    PATCH_TEST_FAILED = (409, "patch_test_failed", "A JSON Patch `test` operation did not match the object");
    REMOVING_SELF = (409, "removing_self", "A node cannot remove itself without `force`");
    LAST_VOTER = (409, "last_voter", "Removing the last voter would end the cluster");
    STALE_USER = (409, "stale_user", "The user changed while a token was being issued for it; ask again");
    DHCP_SUBNET_UNUSABLE = (409, "dhcp_subnet_unusable", "The DHCP subnet does not exist, is disabled, or is in proxy mode: it allocates nothing");
    DHCP_POOL_EXHAUSTED = (409, "dhcp_pool_exhausted", "The subnet has no free address in its pools");
    DHCP_ADDRESS_TAKEN = (409, "dhcp_address_taken", "The address is held by another client's lease (offered, bound, or declined and quarantined)");
    DHCP_NOT_ALLOCATABLE = (409, "dhcp_not_allocatable", "The address cannot be given to this client: outside the subnet's pools, reserved for another client, not the client's reservation, or declined");
    DHCP_NO_BINDING = (409, "dhcp_no_binding", "The client holds no lease of that address (or none in that subnet) to bind, release or decline");
    LOG_FORMAT_UNSUPPORTED = (409, "log_format_unsupported", "A registered node cannot read the log entry format this change or this node writes; finish upgrading every node first");

    // 410.
    EVENTS_EXPIRED = (410, "events_expired", "The events asked for are no longer kept; list the objects and resume from their revision");

    // 412.
    PRECONDITION_FAILED = (412, "precondition_failed", "`If-Match` names another revision (or only weak tags), or `If-None-Match` the current one");

    // 413.
    BODY_TOO_LARGE = (413, "body_too_large", "The request body is larger than the server's limit");
    TOO_LARGE = (413, "too_large", "The object would be larger than the `max_object_bytes` pref");

    // 415.
    UNSUPPORTED_MEDIA_TYPE = (415, "unsupported_media_type", "The body's content type is not one this call takes");

    // 429.
    TOO_MANY_REQUESTS = (429, "too_many_requests", "Too many logins or joins from this source or for this user; `Retry-After` says when to retry");

    // 500.
    INTERNAL = (500, "internal", "A fault on the server (storage, corrupt record); the message says what");

    // 503: the cluster cannot answer now; retry.
    NO_LEADER = (503, "no_leader", "No Raft leader could be reached in time; nothing was written, retry");
    NO_QUORUM = (503, "no_quorum", "The leader cannot reach a quorum; nothing was written, retry");
    UNAVAILABLE = (503, "unavailable", "The cluster or this node cannot take the request now (shutting down, unreachable); retry");
    OUTCOME_UNKNOWN = (503, "outcome_unknown", "The write may or may not have been applied; check before retrying");
    DEADLINE_EXCEEDED = (503, "deadline_exceeded", "The write waited past its deadline (for a leader, or behind other writes) before it could be proposed; nothing was written, retry");
    BUSY = (503, "busy", "The node is at capacity (requests, lists or password hashing); retry shortly");
}

/// The codes with `status`, in table order.
pub fn with_status(status: u16) -> impl Iterator<Item = &'static Code> {
    ALL.iter().copied().filter(move |c| c.status == status)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_code_has_a_name_status_and_description() {
        let mut names = BTreeSet::new();
        for (ident, code) in IDENTS {
            assert_eq!(
                code.name,
                ident.to_ascii_lowercase(),
                "the constant {ident} and its wire name differ"
            );
            assert!(
                code.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}: names are snake_case ASCII"
            );
            assert!(names.insert(code.name), "{code} is defined twice");
            assert!(
                (400..600).contains(&code.status),
                "{code}: {} is not an error status",
                code.status
            );
            let status = axum::http::StatusCode::from_u16(code.status).ok();
            assert!(
                status.and_then(|s| s.canonical_reason()).is_some(),
                "{code}: {} is not a status HTTP names",
                code.status
            );
            let description = code.description.trim();
            assert!(description.len() > 10, "{code} has no description");
            assert!(
                !description.contains('\n') && !description.ends_with('.'),
                "{code}: a description is one line, without a final period"
            );
            assert_eq!(Code::from_name(code.name), Some(*code));
        }
        assert_eq!(IDENTS.len(), ALL.len());
        assert_eq!(Code::from_name("no_such_code"), None);
    }

    #[test]
    fn codes_compare_and_serialize_by_name() {
        assert_eq!(NOT_FOUND, "not_found");
        assert_ne!(NOT_FOUND, ALREADY_EXISTS);
        assert_eq!(
            serde_json::to_string(NO_QUORUM).unwrap(),
            "\"no_quorum\"".to_string()
        );
        assert_eq!(format!("{INTERNAL} {INTERNAL:?}"), "internal internal");
        let conflicts: Vec<&str> = with_status(409).map(Code::name).collect();
        assert!(conflicts.contains(&"missing_reference"));
    }
}
