//! Typed, consistent reads: a [`View`] is one RocksDB snapshot of the
//! replicated state, and every read through it sees that one state.
//!
//! A service answering one request (a DHCP reply needs a subnet, a
//! reservation, a lease and a machine) takes one view and reads everything
//! through it, so it never combines objects from two different moments. A
//! view is never half of a Raft snapshot install (see `cradle_raft::ReadView`).
//!
//! Every lookup here is bounded: by key, through a `unique` entry, through
//! the `index` column family with at most [`MAX_MATCHES`] results, or (the
//! subnet containing an address) by one unique-CIDR probe per prefix
//! length. The one scan is over param definitions, capped at
//! [`MAX_PARAM_DEFINITIONS`].
//!
//! Views are cheap (a RocksDB snapshot) and meant to be short-lived: a view
//! held open keeps RocksDB from dropping the data it shows.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cradle_raft::ReadView;
use ipnet::Ipv4Net;
use serde_json::Value;
use uuid::Uuid;

use crate::cluster::state::{ClusterNode, JoinToken};
use crate::model::validate::format_mac;
use crate::model::{
    effective_params, BootEnv, Lease, Machine, Object, ObjectKind, Param, Prefs, Profile,
    Reservation, Resolution, Subnet, Template, TokenInfo, User, PREFS_KEY,
};

use super::keys::*;
use super::{Event, StoreError};

/// Most objects one non-unique index lookup returns (leases of one client,
/// reservations of one MAC across subnets).
pub const MAX_MATCHES: usize = 64;
/// Nodes read for one link by [`View::dhcp_nodes_heard`]: more than any
/// cluster has (3 to 7 voters), so every record fits.
pub const MAX_HEARD_NODES: usize = 64;
/// Most param definitions effective-param resolution reads to find the
/// defaults. Definitions are few (tens to hundreds); beyond this the
/// resolution fails rather than read without bound on a request path.
pub const MAX_PARAM_DEFINITIONS: usize = 10_000;
/// Longest prefix a subnet can have (see `Subnet::validate`).
const MAX_SUBNET_PREFIX: u8 = 30;

/// Why [`View::effective_params`] could not resolve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ParamsError {
    #[error("machine {0:?} does not exist")]
    NoSuchMachine(String),
    #[error("more than {0} param definitions: refusing to read them all")]
    TooManyDefinitions(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// One consistent view of the replicated state (see the module doc).
pub struct View<'a> {
    read: ReadView<'a>,
    revision: u64,
}

impl<'a> View<'a> {
    pub(crate) fn new(read: ReadView<'a>) -> Result<Self, StoreError> {
        let revision = read
            .get(CF_META, META_REVISION)
            .map_err(internal)?
            .and_then(|b| decode_u64(&b))
            .unwrap_or(0);
        Ok(View { read, revision })
    }

    /// The revision of the last change this view contains.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The Raft log index of the last entry this view contains.
    pub fn applied_index(&self) -> u64 {
        self.read.applied_index()
    }

    /// Changes when a Raft snapshot replaced the state (see
    /// `cradle_raft::ReadView::install_epoch`).
    pub(crate) fn install_epoch(&self) -> u64 {
        self.read.install_epoch()
    }

    /// The underlying snapshot, for readers that iterate column families
    /// themselves (list queries).
    pub fn read(&self) -> &ReadView<'a> {
        &self.read
    }

    fn raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.read.get(cf, key).map_err(internal)
    }

    /// The object of `kind` at `key` as stored JSON (for the API, which
    /// serves it as it is).
    pub fn get_value(&self, kind: ObjectKind, key: &str) -> Result<Option<Value>, StoreError> {
        let Some(bytes) = self.raw(CF_OBJECTS, &object_key(kind, key))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("corrupt {} {key:?}: {e}", kind.as_str())))
    }

    /// The object of `T`'s kind at `key`.
    pub fn get<T: Object>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.raw(CF_OBJECTS, &object_key(T::KIND, key))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("corrupt {} {key:?}: {e}", T::KIND.as_str())))
    }

    /// The machine with this UUID.
    pub fn machine(&self, uuid: Uuid) -> Result<Option<Machine>, StoreError> {
        self.get(&uuid.to_string())
    }

    pub fn profile(&self, name: &str) -> Result<Option<Profile>, StoreError> {
        self.get(name)
    }

    pub fn param(&self, name: &str) -> Result<Option<Param>, StoreError> {
        self.get(name)
    }

    pub fn bootenv(&self, name: &str) -> Result<Option<BootEnv>, StoreError> {
        self.get(name)
    }

    pub fn template(&self, id: &str) -> Result<Option<Template>, StoreError> {
        self.get(id)
    }

    pub fn subnet(&self, name: &str) -> Result<Option<Subnet>, StoreError> {
        self.get(name)
    }

    /// The reservation of `address`.
    pub fn reservation(&self, address: Ipv4Addr) -> Result<Option<Reservation>, StoreError> {
        self.get(&address.to_string())
    }

    /// The lease of `address`.
    pub fn lease(&self, address: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        self.get(&address.to_string())
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.get(name)
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        self.get(id)
    }

    /// The cluster prefs (the defaults before bootstrap creates them).
    pub fn prefs(&self) -> Result<Prefs, StoreError> {
        Ok(self.get::<Prefs>(PREFS_KEY)?.unwrap_or_default())
    }

    /// The object that owns a unique `field` value of `kind`.
    fn by_unique<T: Object>(&self, field: &str, value: &str) -> Result<Option<T>, StoreError> {
        let Some(owner) = self.raw(CF_UNIQUE, &unique_key(T::KIND, field, value))? else {
            return Ok(None);
        };
        let key = String::from_utf8(owner).map_err(|_| {
            StoreError::Internal(format!(
                "corrupt unique entry {} {field} {value:?}",
                T::KIND.as_str()
            ))
        })?;
        // Written in the same batch as the object: a dangling entry is
        // corruption, not absence.
        self.get(&key)?.map(Some).ok_or_else(|| {
            StoreError::Internal(format!(
                "unique entry {} {field} {value:?} names missing {key:?}",
                T::KIND.as_str()
            ))
        })
    }

    /// Up to [`MAX_MATCHES`] objects whose indexed `field` is `value`, in
    /// key order.
    fn by_index<T: Object>(&self, field: &str, value: &str) -> Result<Vec<T>, StoreError> {
        let prefix = index_prefix(T::KIND, field, value);
        let mut out = Vec::new();
        for item in self
            .read
            .iter_from(CF_INDEX, &prefix, true)
            .map_err(internal)?
        {
            let (entry, _) = item.map_err(internal)?;
            let Some(key) = entry.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let key = String::from_utf8_lossy(key);
            match self.get(&key)? {
                Some(object) => out.push(object),
                None => {
                    return Err(StoreError::Internal(format!(
                        "index entry {} {field} {value:?} names missing {key:?}",
                        T::KIND.as_str()
                    )))
                }
            }
            if out.len() >= MAX_MATCHES {
                break;
            }
        }
        Ok(out)
    }

    /// The machine with this MAC among its hardware addresses.
    pub fn machine_by_mac(&self, mac: [u8; 6]) -> Result<Option<Machine>, StoreError> {
        self.by_unique("mac", &format_mac(&mac))
    }

    /// The machine whose fixed address is `address`.
    pub fn machine_by_address(&self, address: Ipv4Addr) -> Result<Option<Machine>, StoreError> {
        self.by_unique("address", &address.to_string())
    }

    /// The same as [`View::machine`], named for symmetry with the other
    /// machine lookups.
    pub fn machine_by_uuid(&self, uuid: Uuid) -> Result<Option<Machine>, StoreError> {
        self.machine(uuid)
    }

    /// The most specific subnet whose CIDR contains `address` (subnets may
    /// nest: a /24 inside a /16 picks the /24).
    ///
    /// Bounded: CIDRs are unique per subnet and stored normalized, so this
    /// probes the `unique` entry of each candidate network, longest prefix
    /// first: at most 31 point reads, whatever the number of subnets.
    pub fn subnet_containing(&self, address: Ipv4Addr) -> Result<Option<Subnet>, StoreError> {
        for prefix_len in (0..=MAX_SUBNET_PREFIX).rev() {
            let Ok(net) = Ipv4Net::new(address, prefix_len) else {
                continue;
            };
            if let Some(subnet) = self.by_unique::<Subnet>("cidr", &net.trunc().to_string())? {
                return Ok(Some(subnet));
            }
        }
        Ok(None)
    }

    /// The subnet a listener on an interface with address `interface`
    /// serves: the most specific subnet containing the interface's own
    /// address (a subnet may be narrower than the interface's network).
    pub fn subnet_for_interface(&self, interface: Ipv4Net) -> Result<Option<Subnet>, StoreError> {
        self.subnet_containing(interface.addr())
    }

    /// The lease of `address` (leases are keyed by address).
    pub fn lease_by_address(&self, address: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        self.lease(address)
    }

    /// The nodes that answered clients of `subnet` through relay `via` (or
    /// on the segment, for `None`) at or after `since_unix`: the nodes that
    /// hear that link, over which its clients are shared. At most
    /// [`MAX_HEARD_NODES`], in node id order.
    pub fn dhcp_nodes_heard(
        &self,
        subnet: &str,
        via: Option<Ipv4Addr>,
        since_unix: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let prefix = dhcp_heard_prefix(subnet, via.map(u32::from).unwrap_or(0));
        let mut nodes = Vec::new();
        for (seen, item) in self
            .read
            .iter_from(CF_INDEX, &prefix, true)
            .map_err(internal)?
            .enumerate()
        {
            let (key, value) = item.map_err(internal)?;
            let Some(node) = key.strip_prefix(prefix.as_slice()).and_then(decode_u64) else {
                break;
            };
            if decode_u64(&value).is_some_and(|at| at >= since_unix) {
                nodes.push(node);
            }
            if seen + 1 >= MAX_HEARD_NODES {
                break;
            }
        }
        Ok(nodes)
    }

    /// The client's lease in `subnet` (`client_id` hex, any case, `:` or
    /// `-` separators allowed): its current binding, or its last one if
    /// released or expired. One point read and the lease. A DHCP server cut
    /// off from the majority may re-acknowledge it only while `state` is
    /// bound and `expires_at_unix` is in the future (DESIGN.md guarantee 5).
    pub fn lease_by_client(
        &self,
        subnet: &str,
        client_id: &str,
    ) -> Result<Option<Lease>, StoreError> {
        let Ok(client_id) = crate::model::normalize_client_id(client_id) else {
            return Ok(None);
        };
        let Some(addr) = self
            .raw(CF_INDEX, &dhcp_client_key(subnet, &client_id))?
            .and_then(|b| decode_u32(&b))
        else {
            return Ok(None);
        };
        Ok(self
            .lease(Ipv4Addr::from(addr))?
            .filter(|l| l.client_id == client_id && l.subnet == subnet))
    }

    /// The lease of `client_id` in `subnet` that is bound and unexpired at
    /// `now_unix`: what a node cut off from the majority may re-acknowledge,
    /// up to its `expires_at_unix`, and nothing else.
    pub fn committed_binding(
        &self,
        subnet: &str,
        client_id: &str,
        now_unix: u64,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(self
            .lease_by_client(subnet, client_id)?
            .filter(|l| l.state == crate::model::LeaseState::Bound && l.expires_at_unix > now_unix))
    }

    /// Leases held by a DHCP client id (hex, any case, `:` or `-`
    /// separators allowed), at most [`MAX_MATCHES`], in address order.
    pub fn leases_by_client_id(&self, client_id: &str) -> Result<Vec<Lease>, StoreError> {
        let normalized: String = client_id
            .chars()
            .filter(|c| *c != ':' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        self.by_index("client_id", &normalized)
    }

    /// Reservations for this MAC, one per subnet at most, up to
    /// [`MAX_MATCHES`], in address order.
    pub fn reservations_by_mac(&self, mac: [u8; 6]) -> Result<Vec<Reservation>, StoreError> {
        self.by_index("mac", &format_mac(&mac))
    }

    /// The reservation for this MAC in `subnet` (unique per subnet).
    pub fn reservation_by_mac(
        &self,
        subnet: &str,
        mac: [u8; 6],
    ) -> Result<Option<Reservation>, StoreError> {
        self.by_unique("subnet_mac", &format!("{subnet}/{}", format_mac(&mac)))
    }

    /// Every param that resolves for the machine `key`, with its source
    /// (see `model::params`), all read from this view.
    pub fn effective_params(&self, key: &str) -> Result<Resolution, ParamsError> {
        let machine: Machine = self
            .get(key)?
            .ok_or_else(|| ParamsError::NoSuchMachine(key.to_string()))?;
        let defaults = self.param_defaults()?;
        let profiles = |name: &str| self.profile(name);
        let definitions = |name: &str| Ok::<_, StoreError>(defaults.get(name).cloned());
        Ok(effective_params(
            &machine,
            &profiles,
            &definitions,
            defaults.keys(),
        )?)
    }

    /// The param definitions that have a default, by name.
    fn param_defaults(&self) -> Result<BTreeMap<String, Param>, ParamsError> {
        let prefix = object_prefix(ObjectKind::Params);
        let mut out = BTreeMap::new();
        for (read, item) in self
            .read
            .iter_from(CF_OBJECTS, &prefix, true)
            .map_err(internal)?
            .enumerate()
        {
            let (key, value) = item.map_err(internal)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if read >= MAX_PARAM_DEFINITIONS {
                return Err(ParamsError::TooManyDefinitions(MAX_PARAM_DEFINITIONS));
            }
            let param: Param = serde_json::from_slice(&value).map_err(|e| {
                StoreError::Internal(format!(
                    "corrupt param {:?}: {e}",
                    String::from_utf8_lossy(&key[prefix.len()..])
                ))
            })?;
            if param.default.is_some() {
                out.insert(param.name.clone(), param);
            }
        }
        Ok(out)
    }

    /// Stored events after `since`, oldest first, at most `limit`.
    pub fn events_after(&self, since: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events_within(since, limit, usize::MAX)
    }

    /// Stored events after `since`, oldest first, at most `limit` of them
    /// and (past the first) at most `max_bytes` of stored JSON.
    pub fn events_within(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = event_key(since.saturating_add(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if limit == 0 {
            return Ok(out);
        }
        for item in self
            .read
            .iter_from(CF_EVENTS, &start, true)
            .map_err(internal)?
        {
            let (_, value) = item.map_err(internal)?;
            bytes = bytes.saturating_add(value.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let event: Event = serde_json::from_slice(&value)
                .map_err(|e| StoreError::Internal(format!("corrupt event: {e}")))?;
            out.push(event);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The oldest revision still in the event log, if any. How many events
    /// are kept is the state's business; this only reads what is there.
    pub fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        match self
            .read
            .iter_all(CF_EVENTS, true)
            .map_err(internal)?
            .next()
        {
            Some(item) => Ok(decode_u64(&item.map_err(internal)?.0)),
            None => Ok(None),
        }
    }

    pub(crate) fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.raw(CF_META, key)
    }

    /// The key bearer tokens are signed with; `None` before bootstrap.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(META_SIGNING_KEY)
    }

    pub fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        Ok(self.meta(META_BOOTSTRAPPED)?.is_some())
    }

    /// The cluster CA (certificate PEM, key PEM).
    pub fn cluster_ca(&self) -> Result<Option<(String, String)>, StoreError> {
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        match (self.meta(META_CA_CERT)?, self.meta(META_CA_KEY)?) {
            (Some(cert), Some(key)) => Ok(Some((text(cert), text(key)))),
            _ => Ok(None),
        }
    }

    pub fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        self.cluster_record(&join_token_key(id))
    }

    pub fn cluster_node(&self, id: u64) -> Result<Option<ClusterNode>, StoreError> {
        self.cluster_record(&node_key(id))
    }

    /// Join tokens and nodes are few (the registry of a cluster of at most
    /// a handful of voters and their learners): read whole.
    pub fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        self.cluster_records(b"join_token/")
    }

    /// Every node ever registered, removed ones included, in id order.
    pub fn cluster_nodes(&self) -> Result<Vec<ClusterNode>, StoreError> {
        self.cluster_records(b"node/")
    }

    fn cluster_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.raw(CF_CLUSTER, key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StoreError::Internal(format!(
                    "corrupt cluster record {}: {e}",
                    String::from_utf8_lossy(key)
                ))
            }),
            None => Ok(None),
        }
    }

    fn cluster_records<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .read
            .iter_from(CF_CLUSTER, prefix, true)
            .map_err(internal)?
        {
            let (key, value) = item.map_err(internal)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(
                serde_json::from_slice(&value)
                    .map_err(|e| StoreError::Internal(format!("corrupt cluster record: {e}")))?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use cradle_raft::{NodeConfig, NodeInfo, RaftNode};
    use serde_json::{json, Value};
    use tokio::sync::broadcast;

    use super::*;
    use crate::model::ParamSource;
    use crate::store::apply::CradleApp;
    use crate::store::{Command, Store};

    /// A one-node store in `dir` keeping `retention` events (the
    /// `event_retention` pref, set by the store's first write), with a live
    /// channel of `channel` events.
    pub(crate) async fn test_store(dir: &std::path::Path, retention: u64, channel: usize) -> Store {
        let (events, _) = broadcast::channel(channel);
        let app = Arc::new(CradleApp::new(events.clone()));
        let info = NodeInfo {
            rpc_addr: "127.0.0.1:1".into(),
            api_addr: "127.0.0.1:2".into(),
        };
        let raft = Arc::new(
            RaftNode::open(NodeConfig::new(1, dir, info), app)
                .await
                .unwrap(),
        );
        raft.initialize_single().await.unwrap();
        let (store, batcher) = Store::new(raft, events);
        let (stop, shutdown) = crate::service::Shutdown::new();
        // The batcher ends once every `Store` is gone; it owns its stop signal
        // until then.
        tokio::spawn(async move {
            let _stop = stop;
            batcher.run(shutdown).await
        });
        if retention != crate::model::DEFAULT_EVENT_RETENTION {
            store
                .submit(
                    Command::Create {
                        kind: ObjectKind::Prefs,
                        object: json!({ "event_retention": retention }),
                    },
                    store.write_deadline(),
                )
                .await
                .expect("setting the event retention pref");
        }
        store
    }

    pub(crate) async fn create(store: &Store, kind: ObjectKind, object: Value) -> u64 {
        store
            .submit(Command::Create { kind, object }, store.write_deadline())
            .await
            .unwrap_or_else(|e| panic!("creating {kind:?}: {e}"))
            .revision
    }

    /// Binds `address` to `client_id` in `subnet`, as the DHCP server does
    /// for a REQUEST, at time 1000.
    async fn bind(store: &Store, subnet: &str, client_id: &str, address: &str) {
        let request = crate::store::LeaseRequest {
            subnet: subnet.into(),
            client_id: client_id.into(),
            hardware_addr: String::new(),
            requested: Some(ip(address)),
            now_unix: 1_000,
            node: 1,
            via: None,
            hostname: None,
            offer_secs: 0,
        };
        store
            .submit(Command::DhcpBind { request }, store.write_deadline())
            .await
            .unwrap_or_else(|e| panic!("binding {address}: {e}"));
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const UUID: &str = "6f1c1f5e-8d7a-4c1e-9a53-1d2b3c4d5e6f";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn lookups_find_by_every_index_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), crate::model::DEFAULT_EVENT_RETENTION, 1_024).await;
        for (name, cidr, pool) in [
            ("wide", "10.0.0.0/16", ("10.0.6.1", "10.0.6.100")),
            ("narrow", "10.0.5.0/24", ("10.0.5.40", "10.0.5.50")),
            ("other", "192.168.1.0/24", ("192.168.1.10", "192.168.1.20")),
        ] {
            create(
                &store,
                ObjectKind::Subnets,
                json!({"name": name, "cidr": cidr,
                    "pools": [{"start": pool.0, "end": pool.1}]}),
            )
            .await;
        }
        create(
            &store,
            ObjectKind::Machines,
            json!({"uuid": UUID, "name": "m1", "hardware_addrs": ["52:54:00:00:00:01"],
                "address": "10.0.5.20"}),
        )
        .await;
        for (address, subnet) in [("10.0.9.30", "wide"), ("10.0.5.30", "narrow")] {
            create(
                &store,
                ObjectKind::Reservations,
                json!({"address": address, "hardware_addr": "52:54:00:00:00:01", "subnet": subnet}),
            )
            .await;
        }
        bind(&store, "narrow", "01:52:54:00:00:00:01", "10.0.5.40").await;

        let view = store.view().unwrap();
        let name = |s: Option<Subnet>| s.map(|s| s.name);
        assert_eq!(
            name(view.subnet_containing(ip("10.0.5.7")).unwrap()).as_deref(),
            Some("narrow")
        );
        assert_eq!(
            name(view.subnet_containing(ip("10.0.9.1")).unwrap()).as_deref(),
            Some("wide")
        );
        assert_eq!(
            name(view.subnet_containing(ip("192.168.1.255")).unwrap()).as_deref(),
            Some("other")
        );
        assert_eq!(
            name(view.subnet_containing(ip("172.16.0.1")).unwrap()),
            None
        );
        assert_eq!(
            name(
                view.subnet_for_interface("10.0.5.1/16".parse().unwrap())
                    .unwrap()
            )
            .as_deref(),
            Some("narrow")
        );

        let uuid: Uuid = UUID.parse().unwrap();
        let machine = view.machine_by_mac(MAC).unwrap().unwrap();
        assert_eq!(machine.uuid, uuid);
        assert_eq!(
            view.machine_by_address(ip("10.0.5.20")).unwrap(),
            Some(machine.clone())
        );
        assert_eq!(view.machine_by_uuid(uuid).unwrap(), Some(machine));
        assert_eq!(view.machine_by_mac([0x52, 0x54, 0, 0, 0, 2]).unwrap(), None);
        assert_eq!(view.machine_by_address(ip("10.0.5.21")).unwrap(), None);

        let addresses =
            |rs: Vec<Reservation>| rs.into_iter().map(|r| r.address).collect::<Vec<_>>();
        assert_eq!(
            addresses(view.reservations_by_mac(MAC).unwrap()),
            [ip("10.0.5.30"), ip("10.0.9.30")]
        );
        assert_eq!(
            view.reservation_by_mac("wide", MAC)
                .unwrap()
                .map(|r| r.address),
            Some(ip("10.0.9.30"))
        );
        assert_eq!(view.reservation_by_mac("other", MAC).unwrap(), None);

        let lease = view.lease_by_address(ip("10.0.5.40")).unwrap().unwrap();
        assert_eq!(lease.client_id, "01525400000001");
        for spelling in [
            "01525400000001",
            "01:52:54:00:00:00:01",
            "01-52-54-00-00-00-01",
        ] {
            assert_eq!(
                view.leases_by_client_id(spelling).unwrap(),
                std::slice::from_ref(&lease)
            );
        }
        // The client's lease in a subnet, and what a node cut off from the
        // majority may re-acknowledge.
        assert_eq!(
            view.lease_by_client("narrow", "01-52-54-00-00-00-01")
                .unwrap(),
            Some(lease.clone())
        );
        assert_eq!(
            view.lease_by_client("wide", "01525400000001").unwrap(),
            None
        );
        assert_eq!(view.lease_by_client("narrow", "not hex").unwrap(), None);
        assert_eq!(
            view.committed_binding("narrow", "01525400000001", 1_000)
                .unwrap(),
            Some(lease.clone())
        );
        assert_eq!(
            view.committed_binding("narrow", "01525400000001", 1_000 + 3600)
                .unwrap(),
            None,
            "expired by the caller's clock"
        );
        drop(view);

        // One client with more lease records than a lookup returns (each
        // move releases the last binding; the records stay).
        for n in 0..MAX_MATCHES + 3 {
            bind(&store, "wide", "ff00", &format!("10.0.6.{}", n + 1)).await;
        }
        let view = store.view().unwrap();
        assert_eq!(view.leases_by_client_id("ff00").unwrap().len(), MAX_MATCHES);
        store.raft().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_view_keeps_showing_one_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), crate::model::DEFAULT_EVENT_RETENTION, 1_024).await;
        let first = create(&store, ObjectKind::Profiles, json!({"name": "a"})).await;
        let before = store.view().unwrap();
        let second = create(&store, ObjectKind::Profiles, json!({"name": "b"})).await;
        let after = store.view().unwrap();

        assert_eq!(before.revision(), first);
        assert!(before.profile("a").unwrap().is_some());
        assert!(before.profile("b").unwrap().is_none());
        assert_eq!(before.events_after(0, 10).unwrap().len(), 1);
        assert_eq!(after.revision(), second);
        assert!(after.profile("b").unwrap().is_some());
        assert!(after.applied_index() > before.applied_index());
        assert_eq!(before.prefs().unwrap(), Prefs::default());
        store.raft().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn effective_params_resolve_within_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), crate::model::DEFAULT_EVENT_RETENTION, 1_024).await;
        create(
            &store,
            ObjectKind::Params,
            json!({"name": "ntp", "schema": {"type": "string"}, "default": "pool.ntp.org"}),
        )
        .await;
        create(&store, ObjectKind::Params, json!({"name": "rack"})).await;
        create(
            &store,
            ObjectKind::Profiles,
            json!({"name": "site", "params": {"rack": "r1", "dns": "10.0.0.53"}}),
        )
        .await;
        create(
            &store,
            ObjectKind::Machines,
            json!({"uuid": UUID, "name": "m1", "profiles": ["site"], "params": {"dns": "1.1.1.1"}}),
        )
        .await;
        let view = store.view().unwrap();
        let resolved = view.effective_params(UUID).unwrap();
        let sources: Vec<(&str, &Value, &ParamSource)> = resolved
            .params
            .iter()
            .map(|(n, p)| (n.as_str(), &p.value, &p.source))
            .collect();
        let site = ParamSource::Profile {
            name: "site".into(),
        };
        assert_eq!(
            sources,
            [
                ("dns", &json!("1.1.1.1"), &ParamSource::Machine),
                ("ntp", &json!("pool.ntp.org"), &ParamSource::Default),
                ("rack", &json!("r1"), &site),
            ]
        );
        // No bootstrap here, so no global profile: reported, not guessed.
        assert_eq!(resolved.missing_profiles, ["global"]);
        assert!(matches!(
            view.effective_params("6f1c1f5e-8d7a-4c1e-9a53-000000000000"),
            Err(ParamsError::NoSuchMachine(_))
        ));
        store.raft().shutdown().await.unwrap();
    }
}
