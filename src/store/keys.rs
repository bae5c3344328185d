//! How objects, indexes and events are laid out in the application's column
//! families. Components are separated by NUL, which validated names and
//! index values never contain.

use crate::model::ObjectKind;

/// Objects as JSON, key `kind/key`.
pub const CF_OBJECTS: &str = "objects";
/// Secondary index for list filters and reverse references, key
/// `kind\0field\0value\0key`, empty value.
pub const CF_INDEX: &str = "index";
/// Uniqueness constraints, key `kind\0field\0value`, value = owning key.
pub const CF_UNIQUE: &str = "unique";
/// Counters and secrets: the revision counter, the token signing key.
pub const CF_META: &str = "meta";
/// The change feed, key = big-endian revision, value = event JSON.
pub const CF_EVENTS: &str = "events";

/// Cluster records: `join_token/<id>` and `node/<id>` (see `cluster::state`).
pub const CF_CLUSTER: &str = "cluster";

pub const ALL_CFS: &[&str] = &[
    CF_OBJECTS, CF_INDEX, CF_UNIQUE, CF_META, CF_EVENTS, CF_CLUSTER,
];

pub const META_REVISION: &[u8] = b"revision";
pub const META_SIGNING_KEY: &[u8] = b"signing_key";
pub const META_BOOTSTRAPPED: &[u8] = b"bootstrapped";
/// The cluster CA, so any voter can sign a joining node's certificate. Never
/// served by the API.
pub const META_CA_CERT: &[u8] = b"ca_cert";
pub const META_CA_KEY: &[u8] = b"ca_key";
/// The id the next joining node gets; ids are never reused.
pub const META_NEXT_NODE_ID: &[u8] = b"next_node_id";
/// The state digest and the log index it belongs to (see `digest`).
pub const META_DIGEST: &[u8] = b"digest";
/// The newest log entry format every registered node reads (big-endian
/// `u32`), kept by apply whenever the node registry changes.
pub const META_LOG_FORMAT: &[u8] = b"log_format";
/// Every event at or below this revision has been trimmed (big-endian `u64`).
pub const META_EVENTS_TRIMMED: &[u8] = b"events_trimmed";

pub fn join_token_key(id: &str) -> Vec<u8> {
    format!("join_token/{id}").into_bytes()
}

pub fn node_key(id: u64) -> Vec<u8> {
    // Zero-padded so nodes list in id order.
    format!("node/{id:020}").into_bytes()
}

pub fn object_key(kind: ObjectKind, key: &str) -> Vec<u8> {
    format!("{}/{}", kind.as_str(), key).into_bytes()
}

pub fn object_prefix(kind: ObjectKind) -> Vec<u8> {
    format!("{}/", kind.as_str()).into_bytes()
}

pub fn index_key(kind: ObjectKind, field: &str, value: &str, key: &str) -> Vec<u8> {
    format!("{}\0{field}\0{value}\0{key}", kind.as_str()).into_bytes()
}

pub fn index_prefix(kind: ObjectKind, field: &str, value: &str) -> Vec<u8> {
    format!("{}\0{field}\0{value}\0", kind.as_str()).into_bytes()
}

/// Every index entry of one field of a kind, in value order.
pub fn index_field_prefix(kind: ObjectKind, field: &str) -> Vec<u8> {
    format!("{}\0{field}\0", kind.as_str()).into_bytes()
}

pub fn unique_key(kind: ObjectKind, field: &str, value: &str) -> Vec<u8> {
    format!("{}\0{field}\0{value}", kind.as_str()).into_bytes()
}

pub fn event_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub fn decode_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// DHCP allocation state, kept in `index` under the pseudo-kind `dhcp` (in
/// an existing column family, so snapshots to and from builds without it
/// still install). Derived from the subnet, reservation and lease objects;
/// written only by apply (`store::dhcp`).
///
/// - `dhcp\0free\0<subnet>\0<end>` → `<start>`: one free address range of
///   the subnet (big-endian `u32` addresses, inclusive), non-adjacent. Keyed
///   by the range's last address so that taking its first (what the picker
///   does) rewrites the value in place: keyed by its start, every allocation
///   would delete a key, and RocksDB seeks step over deletions until
///   compaction drops them.
/// - `dhcp\0built\0<subnet>`: the subnet's free ranges exist.
/// - `dhcp\0held\0<addr>` → subnet name: a lease (offered, bound,
///   declined) holds the address.
/// - `dhcp\0expiry\0<expires_at_unix u64><addr>`: when a holding lease ends.
/// - `dhcp\0client\0<subnet>\0<client_id>` → `<addr>`: the client's
///   binding (current, or released and maybe still free) in the subnet.
pub const DHCP_FREE_PREFIX: &[u8] = b"dhcp\0free\0";
pub const DHCP_BUILT_PREFIX: &[u8] = b"dhcp\0built\0";
pub const DHCP_HELD_PREFIX: &[u8] = b"dhcp\0held\0";
pub const DHCP_EXPIRY_PREFIX: &[u8] = b"dhcp\0expiry\0";
pub const DHCP_CLIENT_PREFIX: &[u8] = b"dhcp\0client\0";
/// `dhcp\0heard\0<subnet>\0<relay addr u32, 0 for none><node u64>` →
/// `<unix u64>`: the node answered a client of that subnet through that
/// relay (or on the segment) at that time. Which nodes hear a link.
pub const DHCP_HEARD_PREFIX: &[u8] = b"dhcp\0heard\0";

pub fn dhcp_heard_prefix(subnet: &str, via: u32) -> Vec<u8> {
    [
        DHCP_HEARD_PREFIX,
        subnet.as_bytes(),
        b"\0",
        &via.to_be_bytes(),
    ]
    .concat()
}

pub fn dhcp_heard_key(subnet: &str, via: u32, node: u64) -> Vec<u8> {
    [&dhcp_heard_prefix(subnet, via)[..], &node.to_be_bytes()].concat()
}

pub fn dhcp_free_prefix(subnet: &str) -> Vec<u8> {
    [DHCP_FREE_PREFIX, subnet.as_bytes(), b"\0"].concat()
}

pub fn dhcp_free_key(subnet: &str, end: u32) -> Vec<u8> {
    [&dhcp_free_prefix(subnet)[..], &end.to_be_bytes()].concat()
}

pub fn dhcp_built_key(subnet: &str) -> Vec<u8> {
    [DHCP_BUILT_PREFIX, subnet.as_bytes()].concat()
}

pub fn dhcp_held_key(address: u32) -> Vec<u8> {
    [DHCP_HELD_PREFIX, &address.to_be_bytes()].concat()
}

pub fn dhcp_expiry_key(expires_at_unix: u64, address: u32) -> Vec<u8> {
    [
        DHCP_EXPIRY_PREFIX,
        &expires_at_unix.to_be_bytes(),
        &address.to_be_bytes(),
    ]
    .concat()
}

pub fn dhcp_client_key(subnet: &str, client_id: &str) -> Vec<u8> {
    [
        DHCP_CLIENT_PREFIX,
        subnet.as_bytes(),
        b"\0",
        client_id.as_bytes(),
    ]
    .concat()
}
