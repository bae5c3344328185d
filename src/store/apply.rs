//! Applying committed commands to the replicated state.
//!
//! Everything here runs inside the Raft state machine on every replica, so it
//! is deterministic: no clocks, no randomness, and the same log gives the same
//! bytes everywhere. Cross-object rules (uniqueness, references, optimistic
//! concurrency) are checked here, against committed state, because only here
//! is the state the one every replica agrees on.
//!
//! Every read and write goes through the `Applier`'s `get_raw`/`put_raw`/
//! `delete_raw`, which keep the state digest (`digest`) and notice storage
//! faults. An entry that cannot be applied the same way everywhere (a format
//! this build does not read, a local storage fault) halts apply instead of
//! being answered: see [`StateMachineApp::apply`].

use std::sync::Mutex;

use cradle_raft::store::KeyValues;
use cradle_raft::{ApplyHalt, StateMachineApp, StoreError as RaftError, Txn};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::cluster::state::{check_join_token, ClusterNode, JoinToken};
use crate::error_code as code;
use crate::model::{
    check_param_value, expiry_term, ObjectKind, Param, Prefs, ScopeLevel, TokenInfo, PREFS_KEY,
};

use super::command::{cluster_format, Command, Rejection, Reply};
use super::digest::{self, DigestRecord, StateDigest};
use super::events::{Action, Event};
use super::frames::{self, FrameError};
use super::keys::*;
use super::limits;
use super::object::{referrers, AnyObject};
use super::record::BootstrapAdmin;

/// Cradle's state machine application, plugged into the Raft crate.
pub struct CradleApp {
    /// Events produced by applies whose batch is not yet committed to the
    /// database; published by `committed`.
    pending: Mutex<Vec<Event>>,
    events: broadcast::Sender<Event>,
}

impl CradleApp {
    /// Nothing node-local goes in: how many events are kept, like every
    /// other input of apply, is replicated state (the `event_retention`
    /// pref).
    pub fn new(events: broadcast::Sender<Event>) -> Self {
        CradleApp {
            pending: Mutex::new(Vec::new()),
            events,
        }
    }
}

/// Stops apply at `log_index`, saying why in the node's log.
fn halt(log_index: u64, reason: String) -> ApplyHalt {
    tracing::error!(
        log_index,
        %reason,
        "apply halted: this node cannot apply this log entry, and will not skip it"
    );
    ApplyHalt { log_index, reason }
}

impl StateMachineApp for CradleApp {
    fn column_families(&self) -> &'static [&'static str] {
        ALL_CFS
    }

    fn apply(
        &self,
        txn: &mut Txn<'_>,
        log_index: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApplyHalt> {
        // An entry of a format this build does not read is never answered:
        // a rejection here would be a different outcome than on the nodes
        // that read it. Checked before anything of the entry is touched.
        if let Some(format) = frames::format_of(payload) {
            if !frames::readable_formats().contains(&format) {
                return Err(halt(
                    log_index,
                    format!(
                        "log entry format {format}; this build reads formats {} to {}: \
                         upgrade this node",
                        frames::OLDEST_FORMAT,
                        frames::NEWEST_FORMAT
                    ),
                ));
            }
        }
        let digest = digest::load(txn)
            .map_err(|e| halt(log_index, format!("reading the state digest: {e}")))?;
        let mut applier = Applier {
            txn,
            digest,
            events: Vec::new(),
            fault: std::cell::RefCell::new(None),
            prefs: std::cell::RefCell::new(None),
        };
        let reply = if frames::is_framed(payload) {
            // Each command of a batch decodes, applies and answers on its
            // own: one bad command fails alone.
            match frames::decode(payload, frames::readable_formats()) {
                Ok((format, commands)) => {
                    let replies: Vec<Vec<u8>> = commands
                        .into_iter()
                        .map(|command| encode_reply(&applier.run_payload(log_index, command)))
                        .collect();
                    frames::encode(format, &replies).unwrap_or_default()
                }
                Err(e @ FrameError::UnknownFormat { .. }) => {
                    return Err(halt(log_index, e.to_string()))
                }
                Err(e) => {
                    tracing::error!(log_index, error = %e, "refusing a malformed batch entry");
                    encode_reply(&Reply::Rejected(undecodable()))
                }
            }
        } else {
            encode_reply(&applier.run_payload(log_index, payload))
        };
        if let Some(fault) = applier.fault.take() {
            // Nothing of the batch is written (the state machine drops it),
            // and the node stops rather than differ from the others.
            return Err(halt(log_index, format!("storage: {fault}")));
        }
        let record = DigestRecord {
            log_index,
            digest: applier.digest,
        };
        let events = applier.events;
        txn.put(CF_META, META_DIGEST, &record.encode())
            .map_err(|e| halt(log_index, format!("writing the state digest: {e}")))?;
        if let Ok(mut pending) = self.pending.lock() {
            pending.extend(events);
        }
        Ok(reply)
    }

    fn committed(&self) {
        let drained = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return,
        };
        for event in drained {
            // No subscribers is fine: the event is also in the events CF.
            let _ = self.events.send(event);
        }
    }

    fn snapshot_installed(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }
}

fn encode_reply(reply: &Reply) -> Vec<u8> {
    // A reply holds only stored (so depth-limited) values: encoding it
    // cannot fail.
    serde_json::to_vec(reply).unwrap_or_default()
}

/// What a client is told about a command no replica could read. The details
/// (serde's position and reason) go to the log, not to the client.
fn undecodable() -> Rejection {
    Rejection::new(
        code::INVALID_COMMAND,
        "the command could not be decoded; nothing was changed",
    )
}

pub(super) struct Applier<'t, 'db> {
    pub(super) txn: &'t mut Txn<'db>,
    /// The state digest, following every write made through `put_raw` and
    /// `delete_raw` (the only ways apply writes).
    digest: StateDigest,
    events: Vec<Event>,
    /// The first storage failure met, if any (see `fault`).
    fault: std::cell::RefCell<Option<String>>,
    /// The prefs as of the last read; forgotten when a command writes them.
    prefs: std::cell::RefCell<Option<Prefs>>,
}

pub(super) type Outcome = Result<Reply, Rejection>;

/// Most token records one purge command deletes: the purge is one log entry
/// among the others, so it stays small and the next round takes the rest.
const MAX_PURGE_PER_COMMAND: usize = 256;

/// Most old events one change trims: one normally (retention keeps the feed
/// a fixed length), more while a lowered `event_retention` pref catches up,
/// a bounded amount per change so that catching up stays spread out.
const MAX_EVENTS_TRIMMED_PER_CHANGE: u64 = 64;

/// Most registry records read to find the cluster's log format.
const MAX_REGISTRY_RECORDS: usize = 10_000;

pub(super) fn storage(e: impl std::fmt::Display) -> Rejection {
    Rejection::new(code::INTERNAL, format!("storage: {e}"))
}

impl Applier<'_, '_> {
    /// Every write of apply goes through here, so the digest follows it.
    pub(super) fn put_raw(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), RaftError> {
        let old = self.get_raw(cf, key)?;
        self.txn
            .put(cf, key, value)
            .inspect_err(|e| self.fault(e))?;
        self.digest.change(cf, key, old.as_deref(), Some(value));
        Ok(())
    }

    pub(super) fn delete_raw(&mut self, cf: &str, key: &[u8]) -> Result<(), RaftError> {
        if let Some(old) = self.get_raw(cf, key)? {
            self.txn.delete(cf, key).inspect_err(|e| self.fault(e))?;
            self.digest.change(cf, key, Some(&old), None);
        }
        Ok(())
    }

    /// Every read of apply goes through here, so a failed one is noticed.
    pub(super) fn get_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, RaftError> {
        self.txn.get(cf, key).inspect_err(|e| self.fault(e))
    }

    pub(super) fn scan_raw(
        &self,
        cf: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<KeyValues, RaftError> {
        self.txn
            .scan_prefix(cf, prefix, limit)
            .inspect_err(|e| self.fault(e))
    }

    /// A read or write of this replica's database failed: a local fault the
    /// other replicas do not share, so the entry must not be answered here
    /// as if it were refused. Apply halts on it instead (see `apply`).
    pub(super) fn fault(&self, e: &RaftError) {
        let mut fault = self.fault.borrow_mut();
        if fault.is_none() {
            *fault = Some(e.to_string());
        }
    }

    fn run_payload(&mut self, log_index: u64, payload: &[u8]) -> Reply {
        match serde_json::from_slice::<Command>(payload) {
            Ok(command) => self.run(command),
            Err(e) => {
                tracing::error!(log_index, error = %e, "refusing an undecodable command");
                Reply::Rejected(undecodable())
            }
        }
    }

    fn run(&mut self, command: Command) -> Reply {
        match command {
            Command::Batch { commands } => Reply::Batch {
                replies: commands
                    .into_iter()
                    // Nested batches are flattened by the proposer; refuse
                    // rather than recurse on a crafted payload.
                    .map(|c| match c {
                        Command::Batch { .. } => {
                            Reply::Rejected(Rejection::new(code::INVALID_COMMAND, "nested batch"))
                        }
                        other => self.run_one(other),
                    })
                    .collect(),
            },
            other => self.run_one(other),
        }
    }

    fn run_one(&mut self, command: Command) -> Reply {
        let outcome = match command {
            Command::Bootstrap {
                admin,
                signing_key,
                ca_cert_pem,
                ca_key_pem,
                founder,
            } => self.bootstrap(admin, signing_key, &ca_cert_pem, &ca_key_pem, founder),
            Command::CreateJoinToken { token } => self.create_join_token(token),
            Command::RevokeJoinToken { id } => self.revoke_join_token(&id),
            Command::Join {
                token_id,
                secret_sha256,
                now_unix,
                rpc_addr,
                api_addr,
            } => self.join(&token_id, &secret_sha256, now_unix, rpc_addr, api_addr),
            Command::RemoveNode { id } => self.remove_node(id),
            Command::SetNodeFormat { id, log_format } => self.set_node_format(id, log_format),
            Command::Create { kind, object } => self.create(kind, object),
            Command::Replace {
                kind,
                key,
                object,
                if_match,
            } => self.replace(kind, &key, object, if_match),
            Command::Patch {
                kind,
                key,
                patch,
                if_match,
            } => self.patch(kind, &key, &patch, if_match),
            Command::Delete {
                kind,
                key,
                if_match,
            } => self.delete(kind, &key, if_match),
            Command::PurgeExpiredTokens { now_unix, limit } => {
                self.purge_expired_tokens(now_unix, limit)
            }
            Command::DhcpOffer { request } => self.dhcp_offer(request),
            Command::DhcpBind { request } => self.dhcp_bind(request),
            Command::DhcpRelease {
                client_id,
                address,
                now_unix,
            } => self.dhcp_release(&client_id, address, now_unix),
            Command::DhcpDecline {
                client_id,
                address,
                now_unix,
                quarantine_secs,
            } => self.dhcp_decline(&client_id, address, now_unix, quarantine_secs),
            Command::DhcpReclaim { before_unix, limit } => self.dhcp_reclaim(before_unix, limit),
            Command::DhcpNodeDown { node } => self.dhcp_node_down(node),
            Command::Batch { .. } => Err(Rejection::new(code::INVALID_COMMAND, "nested batch")),
        };
        outcome.unwrap_or_else(Reply::Rejected)
    }

    fn bootstrap(
        &mut self,
        admin: BootstrapAdmin,
        signing_key: String,
        ca_cert_pem: &str,
        ca_key_pem: &str,
        founder: ClusterNode,
    ) -> Outcome {
        if self
            .get_raw(CF_META, META_BOOTSTRAPPED)
            .map_err(storage)?
            .is_some()
        {
            return Ok(Reply::Done {
                revision: self.current_revision()?,
                object: None,
            });
        }
        self.put_raw(CF_META, META_SIGNING_KEY, signing_key.as_bytes())
            .map_err(storage)?;
        self.put_raw(CF_META, META_BOOTSTRAPPED, b"1")
            .map_err(storage)?;
        self.put_raw(CF_META, META_CA_CERT, ca_cert_pem.as_bytes())
            .map_err(storage)?;
        self.put_raw(CF_META, META_CA_KEY, ca_key_pem.as_bytes())
            .map_err(storage)?;
        self.put_raw(CF_META, META_NEXT_NODE_ID, &(founder.id + 1).to_be_bytes())
            .map_err(storage)?;
        self.put_record(&node_key(founder.id), &founder)?;
        self.registry_changed()?;
        let user = serde_json::to_value(admin.to_user()).map_err(storage)?;
        self.create(ObjectKind::Users, user)?;
        self.create(
            ObjectKind::Profiles,
            serde_json::json!({"name": "global", "description": "Params every machine inherits"}),
        )?;
        let prefs = serde_json::to_value(crate::model::Prefs::default()).map_err(storage)?;
        self.create(ObjectKind::Prefs, prefs)?;
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: None,
        })
    }

    fn put_record<T: serde::Serialize>(&mut self, key: &[u8], record: &T) -> Result<(), Rejection> {
        let bytes = serde_json::to_vec(record).map_err(storage)?;
        self.put_raw(CF_CLUSTER, key, &bytes).map_err(storage)
    }

    fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, Rejection> {
        match self.get_raw(CF_CLUSTER, key).map_err(storage)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(storage),
            None => Ok(None),
        }
    }

    fn create_join_token(&mut self, token: JoinToken) -> Outcome {
        let key = join_token_key(&token.id);
        if self.get_record::<JoinToken>(&key)?.is_some() {
            return Err(Rejection::new(
                code::ALREADY_EXISTS,
                "a join token with this id exists",
            ));
        }
        self.put_record(&key, &token)?;
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: None,
        })
    }

    fn revoke_join_token(&mut self, id: &str) -> Outcome {
        let key = join_token_key(id);
        let mut token: JoinToken = self.get_record(&key)?.ok_or_else(|| {
            Rejection::new(code::NOT_FOUND, format!("join token {id:?} does not exist"))
        })?;
        token.revoked = true;
        self.put_record(&key, &token)?;
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: None,
        })
    }

    fn join(
        &mut self,
        token_id: &str,
        secret_sha256: &str,
        now_unix: u64,
        rpc_addr: String,
        api_addr: String,
    ) -> Outcome {
        let key = join_token_key(token_id);
        let token: Option<JoinToken> = self.get_record(&key)?;
        check_join_token(token.as_ref(), secret_sha256, now_unix)
            .map_err(|refusal| Rejection::new(refusal.code(), refusal.to_string()))?;
        let Some(mut token) = token else {
            return Err(Rejection::new(
                code::INVALID_JOIN_TOKEN,
                "no such join token",
            ));
        };
        token.uses_left -= 1;
        self.put_record(&key, &token)?;
        let id = self
            .get_raw(CF_META, META_NEXT_NODE_ID)
            .map_err(storage)?
            .and_then(|b| decode_u64(&b))
            .unwrap_or(2);
        self.put_raw(CF_META, META_NEXT_NODE_ID, &(id + 1).to_be_bytes())
            .map_err(storage)?;
        let node = ClusterNode {
            id,
            rpc_addr,
            api_addr,
            joined_at_unix: now_unix,
            removed: false,
            // Until the node registers what it reads, nothing is written
            // for it that the first format cannot say.
            log_format: frames::FORMAT_V1,
        };
        self.put_record(&node_key(id), &node)?;
        self.registry_changed()?;
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(serde_json::to_value(&node).map_err(storage)?),
        })
    }

    fn remove_node(&mut self, id: u64) -> Outcome {
        let key = node_key(id);
        let mut node: ClusterNode = self
            .get_record(&key)?
            .ok_or_else(|| Rejection::new(code::NOT_FOUND, format!("node {id} is not a member")))?;
        node.removed = true;
        self.put_record(&key, &node)?;
        self.registry_changed()?;
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(serde_json::to_value(&node).map_err(storage)?),
        })
    }

    fn set_node_format(&mut self, id: u64, log_format: u32) -> Outcome {
        let key = node_key(id);
        let mut node: ClusterNode = self
            .get_record(&key)?
            .ok_or_else(|| Rejection::new(code::NOT_FOUND, format!("node {id} is not a member")))?;
        if node.log_format != log_format {
            node.log_format = log_format;
            self.put_record(&key, &node)?;
            self.registry_changed()?;
        }
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(serde_json::to_value(&node).map_err(storage)?),
        })
    }

    /// Keeps `META_LOG_FORMAT`, the newest format every registered node
    /// reads, for proposers to read with one get.
    fn registry_changed(&mut self) -> Result<(), Rejection> {
        let records = self
            .scan_raw(CF_CLUSTER, b"node/", MAX_REGISTRY_RECORDS)
            .map_err(storage)?;
        let mut nodes = Vec::with_capacity(records.len());
        for (_, bytes) in records {
            nodes.push(serde_json::from_slice::<ClusterNode>(&bytes).map_err(storage)?);
        }
        let format = cluster_format(&nodes, frames::FORMAT_V1);
        self.put_raw(CF_META, META_LOG_FORMAT, &format.to_be_bytes())
            .map_err(storage)
    }

    /// The `max_object_bytes` pref as committed (the default before
    /// bootstrap creates the prefs).
    fn max_object_bytes(&self) -> Result<usize, Rejection> {
        let limit = self.prefs()?.max_object_bytes;
        Ok(usize::try_from(limit).unwrap_or(usize::MAX))
    }

    /// The committed prefs (the defaults before bootstrap creates them),
    /// read once per entry: every command checks a limit they hold.
    fn prefs(&self) -> Result<Prefs, Rejection> {
        if let Some(prefs) = self.prefs.borrow().as_ref() {
            return Ok(prefs.clone());
        }
        let prefs = match self.load(ObjectKind::Prefs, PREFS_KEY)? {
            Some(AnyObject::Prefs(prefs)) => prefs,
            _ => Prefs::default(),
        };
        *self.prefs.borrow_mut() = Some(prefs.clone());
        Ok(prefs)
    }

    fn create(&mut self, kind: ObjectKind, value: Value) -> Outcome {
        refuse_lease_write(kind)?;
        limits::check_value(&value, self.max_object_bytes()?, "the object")?;
        let object = AnyObject::decode(kind, value)?;
        let key = object.key();
        if self.load(kind, &key)?.is_some() {
            return Err(Rejection::new(
                code::ALREADY_EXISTS,
                format!("{} {key:?} already exists", kind.as_str()),
            ));
        }
        self.store(None, object, Action::Created)
    }

    fn replace(
        &mut self,
        kind: ObjectKind,
        key: &str,
        value: Value,
        if_match: Option<u64>,
    ) -> Outcome {
        refuse_lease_write(kind)?;
        limits::check_value(&value, self.max_object_bytes()?, "the object")?;
        let existing = self.load_required(kind, key)?;
        check_if_match(&existing, if_match)?;
        let object = AnyObject::decode(kind, value)?;
        if object.key() != key {
            return Err(Rejection::new(
                code::KEY_MISMATCH,
                format!(
                    "the body names {:?} but the path names {key:?}",
                    object.key()
                ),
            ));
        }
        self.store(Some(existing), object, Action::Updated)
    }

    fn patch(
        &mut self,
        kind: ObjectKind,
        key: &str,
        patch: &json_patch::Patch,
        if_match: Option<u64>,
    ) -> Outcome {
        refuse_lease_write(kind)?;
        limits::check_patch(patch)?;
        let max_bytes = self.max_object_bytes()?;
        let existing = self.load_required(kind, key)?;
        check_if_match(&existing, if_match)?;
        let mut document = existing.to_value()?;
        // One operation at a time, each result checked: a few `copy`
        // operations can double the document each, so checking only the end
        // result would let one patch allocate without bound first.
        for (index, operation) in patch.0.iter().enumerate() {
            json_patch::patch_unsafe(&mut document, std::slice::from_ref(operation)).map_err(
                |e| {
                    let code = match e.kind {
                        json_patch::PatchErrorKind::TestFailed => code::PATCH_TEST_FAILED,
                        _ => code::INVALID_PATCH,
                    };
                    Rejection::new(code, format!("operation {index}: {}", e.kind))
                        .at(e.path.to_string())
                },
            )?;
            limits::check_value(
                &document,
                max_bytes,
                &format!("the object after operation {index}"),
            )?;
        }
        let object = AnyObject::decode(kind, document)?;
        if object.key() != key {
            return Err(Rejection::new(
                code::KEY_MISMATCH,
                "a patch may not change the object's key",
            ));
        }
        self.store(Some(existing), object, Action::Updated)
    }

    fn purge_expired_tokens(&mut self, now_unix: u64, limit: u32) -> Outcome {
        let limit = (limit as usize).min(MAX_PURGE_PER_COMMAND);
        let prefix = index_field_prefix(ObjectKind::Tokens, "expires_at_unix");
        let now_term = expiry_term(now_unix);
        let entries = self.scan_raw(CF_INDEX, &prefix, limit).map_err(storage)?;
        let mut purged = 0u64;
        for (entry, _) in entries.into_iter().take(limit) {
            let rest = String::from_utf8_lossy(&entry[prefix.len()..]).into_owned();
            let Some((term, id)) = rest.split_once('\0') else {
                continue;
            };
            if term >= now_term.as_str() {
                break;
            }
            self.delete(ObjectKind::Tokens, id, None)?;
            purged += 1;
        }
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(serde_json::json!({ "purged": purged })),
        })
    }

    fn delete(&mut self, kind: ObjectKind, key: &str, if_match: Option<u64>) -> Outcome {
        if kind == ObjectKind::Leases {
            return self.delete_lease(key, if_match);
        }
        self.delete_object(kind, key, if_match)
    }

    /// Deletes an object after the checks every delete shares.
    pub(super) fn delete_object(
        &mut self,
        kind: ObjectKind,
        key: &str,
        if_match: Option<u64>,
    ) -> Outcome {
        let existing = self.load_required(kind, key)?;
        check_if_match(&existing, if_match)?;
        for (referrer_kind, field) in referrers(kind) {
            let users = self
                .scan_raw(CF_INDEX, &index_prefix(*referrer_kind, field, key), 1)
                .map_err(storage)?;
            if let Some((index_entry, _)) = users.first() {
                let user = String::from_utf8_lossy(index_entry)
                    .rsplit('\0')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                return Err(Rejection::new(
                    code::IN_USE,
                    format!(
                        "{} {key:?} is still used by {} {user:?}",
                        kind.as_str(),
                        referrer_kind.as_str()
                    ),
                ));
            }
        }
        self.unindex(&existing)?;
        self.delete_raw(CF_OBJECTS, &object_key(kind, key))
            .map_err(storage)?;
        self.dhcp_object_deleted(&existing)?;
        if kind == ObjectKind::Prefs {
            *self.prefs.borrow_mut() = None;
        }
        let revision = self.next_revision()?;
        self.record(Event {
            revision,
            kind,
            key: key.to_string(),
            action: Action::Deleted,
            object: None,
        })?;
        Ok(Reply::Done {
            revision,
            object: None,
        })
    }

    /// A new token record must belong to its user as the user is now (same
    /// generation, rights that cover the scope) and live no longer than the
    /// `max_api_token_ttl_secs` pref allows. The proposer checked the same
    /// against its own replica; this is the committed, agreed answer.
    fn check_new_token(&self, token: &TokenInfo) -> Result<(), Rejection> {
        let user = match self.load(ObjectKind::Users, &token.user)? {
            Some(AnyObject::User(user)) => user,
            _ => {
                return Err(Rejection::new(
                    code::MISSING_REFERENCE,
                    format!("users {:?} does not exist", token.user),
                )
                .at("user"))
            }
        };
        if user.generation != token.user_generation {
            return Err(Rejection::new(
                code::STALE_USER,
                format!(
                    "user {:?} changed while the token was being issued; ask again",
                    user.name
                ),
            ));
        }
        if token.scope.level == ScopeLevel::Admin && !user.admin {
            return Err(Rejection::new(
                code::FORBIDDEN,
                format!("user {:?} may not hold an admin token", user.name),
            )
            .at("scope.level"));
        }
        let max_ttl = self.prefs()?.max_api_token_ttl_secs;
        let ttl = token.expires_at_unix.saturating_sub(token.created_at_unix);
        if ttl > max_ttl {
            return Err(Rejection::new(
                code::INVALID_TTL,
                format!(
                    "ttl_secs must be between 1 and {max_ttl} (the max_api_token_ttl_secs pref)"
                ),
            )
            .at("ttl_secs"));
        }
        Ok(())
    }

    /// Writes `object` (new, or replacing `previous`) after the checks every
    /// write shares: uniqueness, references, param values.
    pub(super) fn store(
        &mut self,
        previous: Option<AnyObject>,
        mut object: AnyObject,
        action: Action,
    ) -> Outcome {
        let kind = object.kind();
        let key = object.key();
        if let Some(previous) = &previous {
            // A change that changes nothing (an empty patch, a PUT of the
            // same body) is not a change: no revision, no event.
            let mut unchanged = object.clone();
            unchanged.set_revision(previous.revision());
            if let (AnyObject::User(new), AnyObject::User(old)) = (&mut unchanged, previous) {
                new.generation = old.generation;
            }
            if &unchanged == previous {
                return Ok(Reply::Done {
                    revision: previous.revision(),
                    object: Some(previous.to_value()?),
                });
            }
        }
        match (&object, &previous) {
            (AnyObject::Token(token), None) => self.check_new_token(token)?,
            (AnyObject::Token(token), Some(AnyObject::Token(old))) => {
                check_token_change(old, token)?
            }
            _ => {}
        }
        for (field, value) in object.unique_terms() {
            if let Some(owner) = self
                .get_raw(CF_UNIQUE, &unique_key(kind, field, &value))
                .map_err(storage)?
            {
                if owner != key.as_bytes() {
                    return Err(Rejection::new(
                        code::DUPLICATE,
                        format!(
                            "{field} {value:?} already belongs to {} {:?}",
                            kind.as_str(),
                            String::from_utf8_lossy(&owner)
                        ),
                    )
                    .at(field));
                }
            }
        }
        for reference in object.references() {
            if self.load(reference.kind, &reference.key)?.is_none() {
                return Err(Rejection::new(
                    code::MISSING_REFERENCE,
                    format!(
                        "{} {:?} does not exist",
                        reference.kind.as_str(),
                        reference.key
                    ),
                )
                .at(reference.field));
            }
        }
        if let AnyObject::Subnet(subnet) = &object {
            self.check_subnet_pools(subnet, previous.is_none())?;
        }
        if let Some(params) = object.param_values() {
            for (name, value) in params {
                if let Some(AnyObject::Param(definition)) = self.load(ObjectKind::Params, name)? {
                    check_param(&definition, name, value)?;
                }
            }
        }
        // Everything that can refuse comes before the first write: a
        // rejected command leaves nothing behind in the batch.
        let revision = self.current_revision()? + 1;
        object.set_revision(revision);
        if let AnyObject::User(user) = &mut object {
            user.generation = match &previous {
                Some(AnyObject::User(old))
                    if old.password_hash == user.password_hash && old.admin == user.admin =>
                {
                    old.generation
                }
                // Created (or re-created under an old name), a new
                // password, or a change of rights: earlier tokens end.
                _ => revision,
            };
        }
        let value = object.to_value()?;
        let bytes = serde_json::to_vec(&value).map_err(storage)?;
        let max_bytes = self.max_object_bytes()?;
        if bytes.len() > max_bytes {
            return Err(Rejection::new(
                code::TOO_LARGE,
                format!(
                    "the object would be {} bytes, more than {max_bytes} (the max_object_bytes pref)",
                    bytes.len()
                ),
            ));
        }
        if let Some(previous) = &previous {
            self.unindex(previous)?;
        }
        self.next_revision()?;
        self.put_raw(CF_OBJECTS, &object_key(kind, &key), &bytes)
            .map_err(storage)?;
        if kind == ObjectKind::Prefs {
            *self.prefs.borrow_mut() = None;
        }
        for (field, term) in object.index_terms() {
            self.put_raw(CF_INDEX, &index_key(kind, field, &term, &key), b"")
                .map_err(storage)?;
        }
        for (field, term) in object.unique_terms() {
            self.put_raw(CF_UNIQUE, &unique_key(kind, field, &term), key.as_bytes())
                .map_err(storage)?;
        }
        self.dhcp_object_written(previous.as_ref(), &object)?;
        self.record(Event {
            revision,
            kind,
            key,
            action,
            object: Some(value.clone()),
        })?;
        Ok(Reply::Done {
            revision,
            object: Some(value),
        })
    }

    pub(super) fn unindex(&mut self, object: &AnyObject) -> Result<(), Rejection> {
        let kind = object.kind();
        let key = object.key();
        for (field, term) in object.index_terms() {
            self.delete_raw(CF_INDEX, &index_key(kind, field, &term, &key))
                .map_err(storage)?;
        }
        for (field, term) in object.unique_terms() {
            self.delete_raw(CF_UNIQUE, &unique_key(kind, field, &term))
                .map_err(storage)?;
        }
        Ok(())
    }

    pub(super) fn load(&self, kind: ObjectKind, key: &str) -> Result<Option<AnyObject>, Rejection> {
        let Some(bytes) = self
            .get_raw(CF_OBJECTS, &object_key(kind, key))
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(storage)?;
        AnyObject::decode_stored(kind, value).map(Some)
    }

    fn load_required(&self, kind: ObjectKind, key: &str) -> Result<AnyObject, Rejection> {
        self.load(kind, key)?.ok_or_else(|| {
            Rejection::new(
                code::NOT_FOUND,
                format!("{} {key:?} does not exist", kind.as_str()),
            )
        })
    }

    pub(super) fn current_revision(&self) -> Result<u64, Rejection> {
        Ok(self
            .get_raw(CF_META, META_REVISION)
            .map_err(storage)?
            .and_then(|b| decode_u64(&b))
            .unwrap_or(0))
    }

    pub(super) fn next_revision(&mut self) -> Result<u64, Rejection> {
        let next = self.current_revision()? + 1;
        self.put_raw(CF_META, META_REVISION, &next.to_be_bytes())
            .map_err(storage)?;
        Ok(next)
    }

    pub(super) fn record(&mut self, event: Event) -> Result<(), Rejection> {
        let bytes = serde_json::to_vec(&event).map_err(storage)?;
        self.put_raw(CF_EVENTS, &event_key(event.revision), &bytes)
            .map_err(storage)?;
        self.trim_events(event.revision)?;
        self.events.push(event);
        Ok(())
    }

    /// Keeps the newest `event_retention` (a pref, so the same on every
    /// replica) events, trimming from the oldest.
    fn trim_events(&mut self, revision: u64) -> Result<(), Rejection> {
        let retention = self.prefs()?.event_retention.max(1);
        let target = revision.saturating_sub(retention);
        let stored = self
            .get_raw(CF_META, META_EVENTS_TRIMMED)
            .map_err(storage)?
            .and_then(|bytes| decode_u64(&bytes));
        let trimmed = match stored {
            Some(trimmed) => trimmed,
            // State from before the cursor: start below the oldest event
            // kept, which is at most this change's own.
            None => self
                .scan_raw(CF_EVENTS, b"", 1)
                .map_err(storage)?
                .first()
                .and_then(|(key, _)| decode_u64(key))
                .unwrap_or(revision)
                .saturating_sub(1),
        };
        let mut cursor = trimmed;
        while cursor < target && cursor - trimmed < MAX_EVENTS_TRIMMED_PER_CHANGE {
            cursor += 1;
            self.delete_raw(CF_EVENTS, &event_key(cursor))
                .map_err(storage)?;
        }
        if stored == Some(cursor) {
            return Ok(());
        }
        self.put_raw(CF_META, META_EVENTS_TRIMMED, &cursor.to_be_bytes())
            .map_err(storage)
    }
}

/// Leases change only through the DHCP commands, which keep the free
/// address ranges and the expiry index with them; DELETE is a forced
/// release. A lease written any other way could hand one address to two
/// clients.
fn refuse_lease_write(kind: ObjectKind) -> Result<(), Rejection> {
    if kind == ObjectKind::Leases {
        return Err(Rejection::new(
            code::READ_ONLY,
            "leases change only through DHCP; DELETE releases one",
        ));
    }
    Ok(())
}

/// A token record may change in one way only: being revoked.
fn check_token_change(old: &TokenInfo, new: &TokenInfo) -> Result<(), Rejection> {
    let mut expected = old.clone();
    expected.revoked = new.revoked;
    expected.revision = new.revision;
    if &expected != new || (old.revoked && !new.revoked) {
        return Err(Rejection::new(
            code::READ_ONLY,
            "a token record cannot be changed, only revoked",
        ));
    }
    Ok(())
}

fn check_if_match(existing: &AnyObject, if_match: Option<u64>) -> Result<(), Rejection> {
    match if_match {
        Some(expected) if expected != existing.revision() => Err(Rejection::new(
            code::PRECONDITION_FAILED,
            format!(
                "If-Match revision {expected} is stale: the object is at revision {}",
                existing.revision()
            ),
        )),
        _ => Ok(()),
    }
}

fn check_param(definition: &Param, name: &str, value: &Value) -> Result<(), Rejection> {
    check_param_value(definition, value)
        .map_err(|e| Rejection::new(e.code, e.message.clone()).at(format!("params.{name}")))
}

#[cfg(test)]
mod tests {
    //! Apply on its own, fed entries no honest proposer would write: the
    //! second line of defence must hold without the first.

    use super::*;
    use serde_json::json;

    fn open(dir: &std::path::Path) -> rocksdb::DB {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        rocksdb::DB::open_cf(&options, dir, ALL_CFS).unwrap()
    }

    fn reply(bytes: &[u8]) -> Reply {
        serde_json::from_slice(bytes).unwrap()
    }

    fn code(reply: &Reply) -> &str {
        match reply {
            Reply::Rejected(r) => r.code.name(),
            _ => "done",
        }
    }

    /// Applies an entry this build reads.
    fn apply_ok(app: &CradleApp, txn: &mut Txn<'_>, index: u64, payload: &[u8]) -> Vec<u8> {
        app.apply(txn, index, payload).unwrap()
    }

    fn bootstrap() -> Vec<u8> {
        serde_json::to_vec(&Command::Bootstrap {
            admin: BootstrapAdmin {
                name: "admin".into(),
                description: String::new(),
                password_hash: String::new(),
            },
            signing_key: "k".into(),
            ca_cert_pem: "c".into(),
            ca_key_pem: "k".into(),
            founder: ClusterNode {
                id: 1,
                rpc_addr: "127.0.0.1:1".into(),
                api_addr: "127.0.0.1:2".into(),
                joined_at_unix: 1,
                removed: false,
                log_format: frames::NEWEST_FORMAT,
            },
        })
        .unwrap()
    }

    fn nested_text(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn poison_entries_are_refused_alone_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (events, _) = broadcast::channel(16);
        let app = CradleApp::new(events);
        let mut txn = Txn::new(&db);
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 1, &bootstrap()))),
            "done"
        );

        // A batch: good, garbage, too deep for any JSON parser, deep but
        // parsable, good. Each answers for itself.
        let good = |name: &str| {
            serde_json::to_vec(&Command::Create {
                kind: ObjectKind::Profiles,
                object: json!({"name": name, "params": {"k": "v"}}),
            })
            .unwrap()
        };
        let unparsable = format!(
            r#"{{"op":"create","kind":"profiles","object":{{"name":"x","params":{{"a":{}}}}}}}"#,
            nested_text(200)
        );
        let deep = format!(
            r#"{{"op":"create","kind":"profiles","object":{{"name":"y","params":{{"a":{}}}}}}}"#,
            nested_text(60)
        );
        let payload = frames::encode(
            frames::FORMAT_V1,
            &[
                good("p1"),
                b"\xff garbage".to_vec(),
                unparsable.into_bytes(),
                deep.into_bytes(),
                good("p2"),
            ],
        )
        .unwrap();
        let answer = apply_ok(&app, &mut txn, 2, &payload);
        let replies: Vec<Reply> = frames::decode(&answer, frames::readable_formats())
            .unwrap()
            .1
            .into_iter()
            .map(reply)
            .collect();
        let codes: Vec<&str> = replies.iter().map(code).collect();
        assert_eq!(
            codes,
            [
                "done",
                "invalid_command",
                "invalid_command",
                "too_deep",
                "done"
            ]
        );
        // The message tells nothing of the decoder's internals.
        if let Reply::Rejected(r) = &replies[1] {
            assert!(!r.message.contains("line"), "{}", r.message);
        }

        // A patch that doubles the object per operation stops at the size
        // limit, and leaves the object as it was.
        let before = txn
            .get(CF_OBJECTS, &object_key(ObjectKind::Profiles, "p1"))
            .unwrap();
        let ops: Vec<serde_json::Value> = (0..30)
            .map(|k| json!({"op": "copy", "from": "/params", "path": format!("/params/c{k}")}))
            .collect();
        let doubling = serde_json::to_vec(&json!({
            "op": "patch", "kind": "profiles", "key": "p1", "patch": ops, "if_match": null
        }))
        .unwrap();
        // Raise nothing: the default limit is 1 MiB, 2^30 copies would be GBs.
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 3, &doubling))),
            "too_large"
        );
        let after = txn
            .get(CF_OBJECTS, &object_key(ObjectKind::Profiles, "p1"))
            .unwrap();
        assert_eq!(before, after);

        // More operations than allowed, unchecked by any proposer.
        let ops: Vec<serde_json::Value> = (0..=limits::MAX_PATCH_OPS)
            .map(|_| json!({"op": "test", "path": "/name", "value": "p1"}))
            .collect();
        let long = serde_json::to_vec(&json!({
            "op": "patch", "kind": "profiles", "key": "p1", "patch": ops, "if_match": null
        }))
        .unwrap();
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 4, &long))),
            "too_many_patch_ops"
        );

        // A malformed envelope is refused whole, and the legacy batch form
        // still applies.
        assert_eq!(
            code(&reply(&apply_ok(
                &app,
                &mut txn,
                5,
                b"\x00B\x01\x00\x00\x00\x09ab"
            ))),
            "invalid_command"
        );
        let legacy = serde_json::to_vec(&json!({"op": "batch", "commands": [
            {"op": "create", "kind": "profiles", "object": {"name": "p3"}}
        ]}))
        .unwrap();
        match reply(&apply_ok(&app, &mut txn, 6, &legacy)) {
            Reply::Batch { replies } => assert_eq!(code(&replies[0]), "done"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_records_follow_their_user_and_the_ttl_pref() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (events, _) = broadcast::channel(16);
        let app = CradleApp::new(events);
        let mut txn = Txn::new(&db);
        apply_ok(&app, &mut txn, 1, &bootstrap());
        let admin_generation = match AnyObject::decode_stored(
            ObjectKind::Users,
            serde_json::from_slice(
                &txn.get(CF_OBJECTS, &object_key(ObjectKind::Users, "admin"))
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
        {
            AnyObject::User(user) => user.generation,
            other => panic!("{other:?}"),
        };
        assert!(admin_generation > 0);
        let token = |id: &str, generation: u64, ttl: u64| {
            serde_json::to_vec(&Command::Create {
                kind: ObjectKind::Tokens,
                object: json!({"id": id, "user": "admin", "scope": {"level": "admin"},
                    "created_at_unix": 1000, "expires_at_unix": 1000 + ttl,
                    "user_generation": generation}),
            })
            .unwrap()
        };
        let apply = |txn: &mut Txn<'_>, payload: &[u8]| {
            code(&reply(&apply_ok(&app, txn, 9, payload))).to_string()
        };
        assert_eq!(
            apply(&mut txn, &token("t1", admin_generation, 3600)),
            "done"
        );
        assert_eq!(
            apply(&mut txn, &token("t2", admin_generation + 1, 3600)),
            "stale_user"
        );
        assert_eq!(
            apply(&mut txn, &token("t3", admin_generation, 8 * 24 * 3600)),
            "invalid_ttl"
        );
        // A token record cannot be extended, only revoked.
        let extend = serde_json::to_vec(&json!({"op": "patch", "kind": "tokens", "key": "t1",
            "patch": [{"op": "replace", "path": "/expires_at_unix", "value": 99999999}], "if_match": null}))
        .unwrap();
        assert_eq!(apply(&mut txn, &extend), "read_only");
        // Purged once expired, by the proposer's clock.
        let purge = |now: u64| {
            serde_json::to_vec(&Command::PurgeExpiredTokens {
                now_unix: now,
                limit: 10,
            })
            .unwrap()
        };
        assert_eq!(apply(&mut txn, &purge(4000)), "done");
        assert!(txn
            .get(CF_OBJECTS, &object_key(ObjectKind::Tokens, "t1"))
            .unwrap()
            .is_some());
        assert_eq!(apply(&mut txn, &purge(4601)), "done");
        assert!(txn
            .get(CF_OBJECTS, &object_key(ObjectKind::Tokens, "t1"))
            .unwrap()
            .is_none());
    }

    fn create(kind: ObjectKind, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&Command::Create { kind, object }).unwrap()
    }

    /// A history touching every column family: objects with indexes and
    /// unique terms, changes and deletes, events past a small retention,
    /// cluster records.
    fn history() -> Vec<Vec<u8>> {
        let mut commands = vec![
            bootstrap(),
            serde_json::to_vec(&json!({"op": "patch", "kind": "prefs", "key": "prefs",
                "patch": [{"op": "replace", "path": "/event_retention", "value": 16}],
                "if_match": null}))
            .unwrap(),
            serde_json::to_vec(&Command::CreateJoinToken {
                token: JoinToken {
                    id: "t".into(),
                    secret_sha256: "00".into(),
                    created_at_unix: 1,
                    expires_at_unix: 100,
                    uses_left: 1,
                    revoked: false,
                    description: String::new(),
                },
            })
            .unwrap(),
        ];
        for i in 0..30 {
            commands.push(create(
                ObjectKind::Profiles,
                json!({"name": format!("p{i}"), "params": {"k": i}}),
            ));
        }
        for i in 0..10 {
            commands.push(
                serde_json::to_vec(&json!({"op": "patch", "kind": "profiles",
                    "key": format!("p{i}"),
                    "patch": [{"op": "replace", "path": "/params/k", "value": -i}],
                    "if_match": null}))
                .unwrap(),
            );
            commands.push(
                serde_json::to_vec(&Command::Delete {
                    kind: ObjectKind::Profiles,
                    key: format!("p{}", 29 - i),
                    if_match: None,
                })
                .unwrap(),
            );
        }
        // Refused ones change nothing, wherever they fall.
        commands.push(create(ObjectKind::Profiles, json!({"name": "p0"})));
        commands
    }

    /// Every key and value of the application's column families.
    fn dump(db: &rocksdb::DB) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for name in ALL_CFS {
            let cf = db.cf_handle(name).unwrap();
            for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.unwrap();
                if !(*name == CF_META && &*k == META_DIGEST) {
                    out.push((name.to_string(), k.to_vec(), v.to_vec()));
                }
            }
        }
        out
    }

    fn stored_digest(db: &rocksdb::DB) -> DigestRecord {
        let meta = db.cf_handle(CF_META).unwrap();
        DigestRecord::decode(&db.get_cf(meta, META_DIGEST).unwrap().unwrap()).unwrap()
    }

    /// Applies `commands` as entries of `per_entry` commands each (framed;
    /// plain JSON when 0), committing a batch every `per_batch` entries, as
    /// Raft groups them; returns the database.
    fn replay(
        dir: &std::path::Path,
        commands: &[Vec<u8>],
        per_entry: usize,
        per_batch: usize,
    ) -> rocksdb::DB {
        let db = open(dir);
        let (events, _) = broadcast::channel(1024);
        let app = CradleApp::new(events);
        let entries: Vec<Vec<u8>> = if per_entry == 0 {
            commands.to_vec()
        } else {
            commands
                .chunks(per_entry)
                .map(|chunk| frames::encode(frames::FORMAT_V1, chunk).unwrap())
                .collect()
        };
        for (n, batch) in entries.chunks(per_batch).enumerate() {
            let mut txn = Txn::new(&db);
            for (k, entry) in batch.iter().enumerate() {
                apply_ok(&app, &mut txn, (n * per_batch + k + 1) as u64, entry);
            }
            db.write(txn.into_batch()).unwrap();
        }
        db
    }

    #[test]
    fn the_digest_does_not_depend_on_how_entries_were_batched() {
        let commands = history();
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let replicas = [
            replay(dirs[0].path(), &commands, 0, 1),
            replay(dirs[1].path(), &commands, 1, 1000),
            replay(dirs[2].path(), &commands, 7, 3),
            replay(dirs[3].path(), &commands, 1000, 1),
        ];
        let first = dump(&replicas[0]);
        let digest = stored_digest(&replicas[0]).digest;
        for replica in &replicas[1..] {
            assert_eq!(dump(replica), first);
            assert_eq!(stored_digest(replica).digest, digest);
        }
        // What apply maintained is what a full scan gives.
        let txn = Txn::new(&replicas[2]);
        assert_eq!(digest::recompute(&txn).unwrap(), digest);
        // The retention pref trimmed the feed to exactly its length.
        let events = replicas[0].cf_handle(CF_EVENTS).unwrap();
        let kept = replicas[0]
            .iterator_cf(events, rocksdb::IteratorMode::Start)
            .count();
        assert_eq!(kept, 16);
        // The index is that of the last entry applied.
        assert_eq!(stored_digest(&replicas[0]).log_index, commands.len() as u64);
        assert_eq!(stored_digest(&replicas[3]).log_index, 1);
    }

    #[test]
    fn state_without_a_digest_gets_one_from_a_full_scan() {
        let commands = history();
        let dir = tempfile::tempdir().unwrap();
        let db = replay(dir.path(), &commands[..10], 1, 1);
        let expected = {
            let other = tempfile::tempdir().unwrap();
            let full = replay(other.path(), &commands[..12], 1, 1);
            stored_digest(&full).digest
        };
        // As an earlier build left it: no digest record.
        let meta = db.cf_handle(CF_META).unwrap();
        db.delete_cf(meta, META_DIGEST).unwrap();
        let (events, _) = broadcast::channel(16);
        let app = CradleApp::new(events);
        let mut txn = Txn::new(&db);
        apply_ok(&app, &mut txn, 11, &commands[10]);
        apply_ok(&app, &mut txn, 12, &commands[11]);
        db.write(txn.into_batch()).unwrap();
        assert_eq!(stored_digest(&db).digest, expected);
    }

    #[test]
    fn an_entry_of_an_unknown_format_halts_apply() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (events, _) = broadcast::channel(16);
        let app = CradleApp::new(events);
        let mut txn = Txn::new(&db);
        apply_ok(&app, &mut txn, 1, &bootstrap());
        db.write(txn.into_batch()).unwrap();
        let before = dump(&db);

        // Hand-made: a well-formed envelope of the next format, carrying a
        // command this build would otherwise apply.
        let next = frames::NEWEST_FORMAT + 1;
        let entry =
            frames::encode(next, &[create(ObjectKind::Profiles, json!({"name": "x"}))]).unwrap();
        let mut txn = Txn::new(&db);
        let halt = app.apply(&mut txn, 42, &entry).unwrap_err();
        assert_eq!(halt.log_index, 42);
        assert!(
            halt.reason.contains(&format!("format {next}")),
            "{}",
            halt.reason
        );
        // And one whose frames are not even readable: the format decides
        // first, so it halts too rather than being refused as malformed.
        let garbage = [&b"\x00B"[..], &[u8::try_from(next).unwrap()], b"\xff"].concat();
        assert_eq!(app.apply(&mut txn, 43, &garbage).unwrap_err().log_index, 43);
        db.write(txn.into_batch()).unwrap();
        assert_eq!(dump(&db), before);
    }

    #[test]
    fn the_registry_keeps_the_format_every_node_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let (events, _) = broadcast::channel(16);
        let app = CradleApp::new(events);
        let mut txn = Txn::new(&db);
        apply_ok(&app, &mut txn, 1, &bootstrap());
        let format =
            |txn: &Txn<'_>| decode_u32(&txn.get(CF_META, META_LOG_FORMAT).unwrap().unwrap());
        assert_eq!(format(&txn), Some(frames::NEWEST_FORMAT));
        let set = |id: u64, log_format: u32| {
            serde_json::to_vec(&Command::SetNodeFormat { id, log_format }).unwrap()
        };
        // A second node joins; it has not registered a format yet.
        let token = serde_json::to_vec(&Command::CreateJoinToken {
            token: JoinToken {
                id: "t".into(),
                secret_sha256: "ab".into(),
                created_at_unix: 1,
                expires_at_unix: 100,
                uses_left: 1,
                revoked: false,
                description: String::new(),
            },
        })
        .unwrap();
        apply_ok(&app, &mut txn, 2, &token);
        let join = serde_json::to_vec(&Command::Join {
            token_id: "t".into(),
            secret_sha256: "ab".into(),
            now_unix: 2,
            rpc_addr: "r".into(),
            api_addr: "a".into(),
        })
        .unwrap();
        assert_eq!(code(&reply(&apply_ok(&app, &mut txn, 3, &join))), "done");
        assert_eq!(format(&txn), Some(frames::FORMAT_V1));
        // The founder registering a later format (2 stands in for one to
        // come) moves nothing while the other reads only format 1...
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 4, &set(1, 2)))),
            "done"
        );
        assert_eq!(format(&txn), Some(1));
        // ... until the other registers it too.
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 5, &set(2, 2)))),
            "done"
        );
        assert_eq!(format(&txn), Some(2));
        // An unknown node cannot register.
        assert_eq!(
            code(&reply(&apply_ok(&app, &mut txn, 6, &set(9, 2)))),
            "not_found"
        );
    }
}
