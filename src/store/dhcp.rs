//! DHCP leases in the replicated state: the lease commands' apply logic,
//! and the allocation structures behind it.
//!
//! Allocation happens here, inside apply, so every replica picks the same
//! address; times come from the command (the proposer's clock), never from
//! this node's. For a client in a subnet the address is, in order: its
//! existing binding, its reservation (by MAC), the address it asked for if
//! free and in a pool, then the subnet's picker.
//!
//! Nothing here scans a subnet. Each subnet's free addresses are kept as
//! ranges keyed by their last address (`keys::dhcp_free_key`), so finding,
//! taking and freeing an address is a seek or two (O(log n) in RocksDB),
//! whatever the number of leases. An expiry index (`dhcp_expiry_key`) lets
//! reclaim visit only what expired. The ranges are derived state: a subnet
//! whose pools or CIDR change through the API gets them rebuilt, which reads
//! the subnet's reservations and the leases holding addresses in its pools
//! (an admin action, bounded by the subnet's size, never on the DHCP path).
//! Subnets whose ranges were never built (state from a build before format
//! 2) get them built by the first lease command that needs them.
//!
//! The pickers: `hint` and `next_free` both give the lowest free address
//! (the requested one has been tried before any picker). `most_expired`
//! falls back to the lowest free address too: it would need the free
//! addresses ordered by when they were freed, a second index kept on every
//! release and reclaim, which nothing asks for yet.
//!
//! Invariant, per subnet: free ranges + addresses held by a lease (offered,
//! bound, declined) + reserved addresses = the subnet's pools (held and
//! reserved addresses may also lie outside the pools).

use std::net::Ipv4Addr;

use cradle_raft::store::KeyValue;
use serde_json::json;

use crate::error_code as code;
use crate::model::{
    normalize_client_id, validate::normalize_mac, Lease, LeaseState, ObjectKind, Reservation,
    Subnet, SubnetMode, MAX_HOSTNAME_BYTES,
};

use super::apply::{storage, Applier, Outcome};
use super::command::{LeaseRequest, Rejection, Reply};
use super::events::Action;
use super::keys::*;
use super::object::AnyObject;

/// Longest an offer holds its address.
pub const MAX_OFFER_SECS: u32 = 300;
/// Longest a declined address is quarantined.
pub const MAX_QUARANTINE_SECS: u32 = 30 * 24 * 3600;
/// Most leases one `DhcpReclaim` expires: the command is one log entry
/// among the others, so it stays small and the next round takes the rest.
pub const MAX_RECLAIM_PER_COMMAND: u32 = 256;
/// Most reservations a subnet's rebuild reads.
pub const MAX_RESERVATIONS_PER_SUBNET: usize = 65_536;
/// Most subnets the cluster holds (pool overlaps are checked against all
/// subnets whose network overlaps a new or changed one).
pub const MAX_SUBNETS: usize = 4096;

/// A node's "answered on this link" record is rewritten at most this
/// often; readers treat records older than a few times this as gone.
pub const HEARD_REFRESH_SECS: u64 = 60;

/// Records of nodes hearing links read by one `DhcpNodeDown`.
pub const MAX_HEARD_RECORDS: usize = 65_536;

/// Who answered a client on which link, from a lease command.
struct Heard {
    subnet: String,
    via: u32,
    node: u64,
    now_unix: u64,
}

impl Heard {
    fn of(request: &LeaseRequest) -> Heard {
        Heard {
            subnet: request.subnet.clone(),
            via: request.via.map(u32::from).unwrap_or(0),
            node: request.node,
            now_unix: request.now_unix,
        }
    }
}

fn not_allocatable(message: impl Into<String>) -> Rejection {
    Rejection::new(code::DHCP_NOT_ALLOCATABLE, message)
}

fn addr_bytes(bytes: &[u8]) -> Option<u32> {
    decode_u32(bytes)
}

/// A request's inputs, checked and normalized the same way on every
/// replica: apply is the second line of defence against a bad proposer.
struct Checked {
    subnet: Subnet,
    client_id: String,
    mac: String,
    hostname: String,
}

/// What the client has in the subnet now.
struct Binding {
    lease: Lease,
    /// The lease still holds its address (offered or bound), as opposed to
    /// a released or expired record whose address may have gone free.
    holding: bool,
}

impl Applier<'_, '_> {
    fn first_at_or_after(&self, prefix: &[u8], from: &[u8]) -> Result<Option<KeyValue>, Rejection> {
        self.txn
            .first_at_or_after(CF_INDEX, prefix, from)
            .inspect_err(|e| self.fault(e))
            .map_err(storage)
    }

    fn put_index(&mut self, key: &[u8], value: &[u8]) -> Result<(), Rejection> {
        self.put_raw(CF_INDEX, key, value).map_err(storage)
    }

    fn delete_index(&mut self, key: &[u8]) -> Result<(), Rejection> {
        self.delete_raw(CF_INDEX, key).map_err(storage)
    }

    fn get_index(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Rejection> {
        self.get_raw(CF_INDEX, key).map_err(storage)
    }

    // ----- free ranges -----

    /// Decodes one free-range entry (key: end, value: start).
    fn free_entry(prefix: &[u8], key: &[u8], value: &[u8]) -> Result<(u32, u32), Rejection> {
        match (
            addr_bytes(value),
            key.get(prefix.len()..).and_then(addr_bytes),
        ) {
            (Some(start), Some(end)) if start <= end => Ok((start, end)),
            _ => Err(storage("corrupt free address range")),
        }
    }

    /// The free range of `subnet` holding `addr`, as (start, end): the
    /// first range ending at or after `addr`, if it starts at or before it.
    fn free_range_containing(
        &self,
        subnet: &str,
        addr: u32,
    ) -> Result<Option<(u32, u32)>, Rejection> {
        let prefix = dhcp_free_prefix(subnet);
        let Some((key, value)) = self.first_at_or_after(&prefix, &dhcp_free_key(subnet, addr))?
        else {
            return Ok(None);
        };
        let (start, end) = Self::free_entry(&prefix, &key, &value)?;
        Ok((start <= addr).then_some((start, end)))
    }

    fn is_free(&self, subnet: &str, addr: u32) -> Result<bool, Rejection> {
        Ok(self.free_range_containing(subnet, addr)?.is_some())
    }

    /// Takes `addr` out of the subnet's free ranges; false when it was not
    /// free.
    fn take_address(&mut self, subnet: &str, addr: u32) -> Result<bool, Rejection> {
        let Some((start, end)) = self.free_range_containing(subnet, addr)? else {
            return Ok(false);
        };
        if addr < end {
            // The range's key stays; only its start moves (or the part
            // below `addr` becomes a range of its own).
            self.put_index(&dhcp_free_key(subnet, end), &(addr + 1).to_be_bytes())?;
        } else {
            self.delete_index(&dhcp_free_key(subnet, end))?;
        }
        if start < addr {
            self.put_index(&dhcp_free_key(subnet, addr - 1), &start.to_be_bytes())?;
        }
        Ok(true)
    }

    /// The lowest free address of the subnet.
    fn lowest_free(&self, subnet: &str) -> Result<Option<u32>, Rejection> {
        let prefix = dhcp_free_prefix(subnet);
        match self.first_at_or_after(&prefix, &prefix)? {
            Some((key, value)) => Ok(Some(Self::free_entry(&prefix, &key, &value)?.0)),
            None => Ok(None),
        }
    }

    /// Returns `addr` to the subnet's free ranges, if it belongs there: in a
    /// pool, reserved for no one in this subnet, held by no lease.
    fn free_address(&mut self, subnet: &Subnet, addr: u32) -> Result<(), Rejection> {
        let ip = Ipv4Addr::from(addr);
        if !subnet.pools.iter().any(|p| p.contains(ip))
            || self.reserved_in(&subnet.name, ip)?.is_some()
            || self.get_index(&dhcp_held_key(addr))?.is_some()
        {
            return Ok(());
        }
        if !self.ensure_built(subnet)? {
            // Just built from the objects, which already count it free.
            return Ok(());
        }
        let name = &subnet.name;
        let prefix = dhcp_free_prefix(name);
        // The range after `addr` (the first ending at or after it): it holds
        // `addr` already, or starts right after it and grows down to it.
        let mut end = addr;
        let mut start = addr;
        if let Some((key, value)) = self.first_at_or_after(&prefix, &dhcp_free_key(name, addr))? {
            let (right_start, right_end) = Self::free_entry(&prefix, &key, &value)?;
            if right_start <= addr {
                return Ok(());
            }
            if addr.checked_add(1) == Some(right_start) {
                end = right_end;
            }
        }
        // The range ending right before `addr` joins it.
        if let Some(before) = addr.checked_sub(1) {
            if let Some(value) = self.get_index(&dhcp_free_key(name, before))? {
                start = addr_bytes(&value).ok_or_else(|| storage("corrupt free address range"))?;
                self.delete_index(&dhcp_free_key(name, before))?;
            }
        }
        self.put_index(&dhcp_free_key(name, end), &start.to_be_bytes())
    }

    /// Builds the subnet's free ranges if they were never built; true when
    /// they already existed.
    fn ensure_built(&mut self, subnet: &Subnet) -> Result<bool, Rejection> {
        if self.get_index(&dhcp_built_key(&subnet.name))?.is_some() {
            return Ok(true);
        }
        self.rebuild_free(subnet)?;
        Ok(false)
    }

    fn clear_free(&mut self, name: &str) -> Result<(), Rejection> {
        let prefix = dhcp_free_prefix(name);
        let mut from = prefix.clone();
        while let Some((key, _)) = self.first_at_or_after(&prefix, &from)? {
            self.delete_index(&key)?;
            from = [&key[..], b"\0"].concat();
        }
        self.delete_index(&dhcp_built_key(name))
    }

    /// Recomputes the subnet's free ranges from its pools, its reservations
    /// and the leases holding addresses in its pools. Reads are bounded by
    /// the subnet's reservations and held leases, never by its size in
    /// addresses; run on pool changes (an admin action) only.
    fn rebuild_free(&mut self, subnet: &Subnet) -> Result<(), Rejection> {
        self.clear_free(&subnet.name)?;
        let reservations = self
            .scan_raw(
                CF_INDEX,
                &index_prefix(ObjectKind::Reservations, "subnet", &subnet.name),
                MAX_RESERVATIONS_PER_SUBNET + 1,
            )
            .map_err(storage)?;
        // Leaving a reservation out would put its address in the free
        // ranges: refuse instead.
        if reservations.len() > MAX_RESERVATIONS_PER_SUBNET {
            return Err(Rejection::new(
                code::TOO_MANY,
                format!(
                    "subnet {:?} has more than {MAX_RESERVATIONS_PER_SUBNET} reservations",
                    subnet.name
                ),
            ));
        }
        let prefix_len = index_prefix(ObjectKind::Reservations, "subnet", &subnet.name).len();
        let mut taken: Vec<u32> = reservations
            .iter()
            .filter_map(|(key, _)| {
                std::str::from_utf8(&key[prefix_len..])
                    .ok()?
                    .parse::<Ipv4Addr>()
                    .ok()
                    .map(u32::from)
            })
            .collect();
        for pool in &subnet.pools {
            let (start, end) = (u32::from(pool.start), u32::from(pool.end));
            let mut from = dhcp_held_key(start);
            while let Some((key, _)) = self.first_at_or_after(DHCP_HELD_PREFIX, &from)? {
                let Some(addr) = addr_bytes(&key[DHCP_HELD_PREFIX.len()..]) else {
                    return Err(storage("corrupt held-address entry"));
                };
                if addr > end {
                    break;
                }
                taken.push(addr);
                from = [&key[..], b"\0"].concat();
            }
        }
        taken.sort_unstable();
        taken.dedup();
        // Pools are sorted and disjoint; adjacent free stretches (across two
        // touching pools) merge, as freeing one address at a time would.
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for pool in &subnet.pools {
            let (start, end) = (u32::from(pool.start), u32::from(pool.end));
            let first = taken.partition_point(|&a| a < start);
            let mut next = start;
            let push = |from: u32, to: u32, ranges: &mut Vec<(u32, u32)>| match ranges.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(from) => last.1 = to,
                _ => ranges.push((from, to)),
            };
            for &held in taken[first..].iter().take_while(|&&a| a <= end) {
                if held > next {
                    push(next, held - 1, &mut ranges);
                }
                next = held.saturating_add(1);
            }
            if next <= end && !(next == end && taken.binary_search(&end).is_ok()) {
                push(next, end, &mut ranges);
            }
        }
        for (start, end) in ranges {
            self.put_index(&dhcp_free_key(&subnet.name, end), &start.to_be_bytes())?;
        }
        self.put_index(&dhcp_built_key(&subnet.name), b"")
    }

    // ----- objects -----

    fn load_subnet(&self, name: &str) -> Result<Option<Subnet>, Rejection> {
        Ok(match self.load(ObjectKind::Subnets, name)? {
            Some(AnyObject::Subnet(subnet)) => Some(subnet),
            _ => None,
        })
    }

    fn load_lease(&self, addr: Ipv4Addr) -> Result<Option<Lease>, Rejection> {
        Ok(match self.load(ObjectKind::Leases, &addr.to_string())? {
            Some(AnyObject::Lease(lease)) => Some(lease),
            _ => None,
        })
    }

    /// The reservation of `addr`, if it belongs to subnet `name`.
    fn reserved_in(&self, name: &str, addr: Ipv4Addr) -> Result<Option<Reservation>, Rejection> {
        Ok(
            match self.load(ObjectKind::Reservations, &addr.to_string())? {
                Some(AnyObject::Reservation(r)) if r.subnet == name => Some(r),
                _ => None,
            },
        )
    }

    /// The client's reservation in the subnet, by MAC.
    fn reservation_for(&self, subnet: &str, mac: &str) -> Result<Option<Reservation>, Rejection> {
        if mac.is_empty() {
            return Ok(None);
        }
        let owner = self
            .get_raw(
                CF_UNIQUE,
                &unique_key(
                    ObjectKind::Reservations,
                    "subnet_mac",
                    &format!("{subnet}/{mac}"),
                ),
            )
            .map_err(storage)?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        Ok(
            match self.load(ObjectKind::Reservations, &String::from_utf8_lossy(&owner))? {
                Some(AnyObject::Reservation(r)) => Some(r),
                _ => None,
            },
        )
    }

    /// The client's binding in the subnet, if any (declined ones are not).
    fn binding(&self, subnet: &str, client_id: &str) -> Result<Option<Binding>, Rejection> {
        let Some(addr) = self
            .get_index(&dhcp_client_key(subnet, client_id))?
            .and_then(|b| addr_bytes(&b))
        else {
            return Ok(None);
        };
        let Some(lease) = self.load_lease(Ipv4Addr::from(addr))? else {
            return Ok(None);
        };
        if lease.client_id != client_id || lease.subnet != subnet {
            return Ok(None);
        }
        let holding = match lease.state {
            LeaseState::Offered | LeaseState::Bound => true,
            LeaseState::Released | LeaseState::Expired => false,
            LeaseState::Declined => return Ok(None),
        };
        Ok(Some(Binding { lease, holding }))
    }

    /// Writes a lease (new, or replacing `old` at the same address) with
    /// the allocation keys that follow it.
    fn write_lease(&mut self, old: Option<Lease>, new: Lease) -> Outcome {
        let addr = u32::from(new.address);
        // A declined address is not the decliner's to get back, even once
        // its quarantine ends.
        let was_declined = old
            .as_ref()
            .is_some_and(|o| o.state == LeaseState::Declined);
        if let Some(old) = &old {
            self.forget_lease_keys(old)?;
        }
        if new.state.holds_address() {
            self.put_index(&dhcp_held_key(addr), new.subnet.as_bytes())?;
            self.put_index(&dhcp_expiry_key(new.expires_at_unix, addr), b"")?;
        }
        if new.state != LeaseState::Declined && !was_declined {
            self.put_index(
                &dhcp_client_key(&new.subnet, &new.client_id),
                &addr.to_be_bytes(),
            )?;
        }
        let action = if old.is_some() {
            Action::Updated
        } else {
            Action::Created
        };
        self.store(old.map(AnyObject::Lease), AnyObject::Lease(new), action)
    }

    /// Removes the allocation keys `lease` wrote (not its free-range effect).
    fn forget_lease_keys(&mut self, lease: &Lease) -> Result<(), Rejection> {
        let addr = u32::from(lease.address);
        if lease.state.holds_address() {
            self.delete_index(&dhcp_held_key(addr))?;
            self.delete_index(&dhcp_expiry_key(lease.expires_at_unix, addr))?;
        }
        let client = dhcp_client_key(&lease.subnet, &lease.client_id);
        if self.get_index(&client)?.and_then(|b| addr_bytes(&b)) == Some(addr) {
            self.delete_index(&client)?;
        }
        Ok(())
    }

    /// Frees `addr` in the subnet the lease named, if that subnet exists.
    fn free_in(&mut self, subnet: &str, addr: Ipv4Addr) -> Result<(), Rejection> {
        if let Some(subnet) = self.load_subnet(subnet)? {
            self.free_address(&subnet, u32::from(addr))?;
        }
        Ok(())
    }

    /// Ends the client's other binding in the subnet when it moves to
    /// `keep`: one binding per client per subnet.
    fn drop_other_binding(
        &mut self,
        checked: &Checked,
        keep: Ipv4Addr,
        now_unix: u64,
    ) -> Result<(), Rejection> {
        let Some(binding) = self.binding(&checked.subnet.name, &checked.client_id)? else {
            return Ok(());
        };
        if binding.lease.address == keep || !binding.holding {
            return Ok(());
        }
        let mut released = binding.lease.clone();
        released.state = LeaseState::Released;
        released.expires_at_unix = now_unix.min(binding.lease.expires_at_unix);
        self.write_lease(Some(binding.lease), released.clone())?;
        self.free_address(&checked.subnet, u32::from(released.address))
    }

    // ----- commands -----

    fn check_request(&mut self, request: &LeaseRequest) -> Result<Checked, Rejection> {
        let client_id = normalize_client_id(&request.client_id)
            .map_err(|e| Rejection::new(e.code, e.message.clone()).at("client_id"))?;
        let mac = if request.hardware_addr.is_empty() {
            String::new()
        } else {
            normalize_mac("hardware_addr", &request.hardware_addr)
                .map_err(|e| Rejection::new(e.code, e.message.clone()).at("hardware_addr"))?
        };
        let hostname = request.hostname.clone().unwrap_or_default();
        if hostname.len() > MAX_HOSTNAME_BYTES {
            return Err(Rejection::new(
                code::TOO_LONG,
                format!("hostname longer than {MAX_HOSTNAME_BYTES} bytes"),
            )
            .at("hostname"));
        }
        let subnet = self.load_subnet(&request.subnet)?.ok_or_else(|| {
            Rejection::new(
                code::DHCP_SUBNET_UNUSABLE,
                format!("subnet {:?} does not exist", request.subnet),
            )
        })?;
        if !subnet.enabled || subnet.mode == SubnetMode::Proxy {
            return Err(Rejection::new(
                code::DHCP_SUBNET_UNUSABLE,
                format!(
                    "subnet {:?} allocates no addresses (disabled, or proxy mode)",
                    subnet.name
                ),
            ));
        }
        if let Some(requested) = request.requested {
            if !subnet.is_host(requested) {
                return Err(not_allocatable(format!(
                    "{requested} is not a host address of subnet {:?} ({})",
                    subnet.name, subnet.cidr
                ))
                .at("requested"));
            }
        }
        self.ensure_built(&subnet)?;
        Ok(Checked {
            subnet,
            client_id,
            mac,
            hostname,
        })
    }

    /// Whether another client's lease keeps `addr` (regardless of expiry:
    /// only reclaim, past expiry plus a margin, lets an address go).
    fn held_by_other(&self, addr: Ipv4Addr, client_id: &str) -> Result<bool, Rejection> {
        Ok(self
            .load_lease(addr)?
            .is_some_and(|l| l.state.holds_address() && l.client_id != client_id))
    }

    /// The client's usable reservation in the subnet: a host address of the
    /// subnet that no other client's lease holds.
    fn usable_reservation(&self, checked: &Checked) -> Result<Option<Reservation>, Rejection> {
        let Some(r) = self.reservation_for(&checked.subnet.name, &checked.mac)? else {
            return Ok(None);
        };
        if !checked.subnet.is_host(r.address)
            || self.held_by_other(r.address, &checked.client_id)?
        {
            return Ok(None);
        }
        Ok(Some(r))
    }

    fn lease_for(
        &self,
        checked: &Checked,
        request: &LeaseRequest,
        address: Ipv4Addr,
        state: LeaseState,
        expires_at_unix: u64,
    ) -> Lease {
        Lease {
            address,
            client_id: checked.client_id.clone(),
            hardware_addr: checked.mac.clone(),
            subnet: checked.subnet.name.clone(),
            hostname: checked.hostname.clone(),
            state,
            expires_at_unix,
            via: request.via,
            node: Some(request.node),
            revision: 0,
        }
    }

    pub(super) fn dhcp_offer(&mut self, request: LeaseRequest) -> Outcome {
        let heard = Heard::of(&request);
        let outcome = self.offer_inner(request)?;
        self.note_heard(&heard)?;
        Ok(outcome)
    }

    pub(super) fn dhcp_bind(&mut self, request: LeaseRequest) -> Outcome {
        let heard = Heard::of(&request);
        let outcome = self.bind_inner(request)?;
        self.note_heard(&heard)?;
        Ok(outcome)
    }

    /// Records that `heard.node` answers clients of the subnet through the
    /// relay (or on the segment), refreshed at most every
    /// [`HEARD_REFRESH_SECS`] so that a busy link costs no extra writes.
    fn note_heard(&mut self, heard: &Heard) -> Result<(), Rejection> {
        let key = dhcp_heard_key(&heard.subnet, heard.via, heard.node);
        let last = self
            .get_index(&key)?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0);
        if heard.now_unix >= last.saturating_add(HEARD_REFRESH_SECS) || heard.now_unix < last {
            self.put_index(&key, &heard.now_unix.to_be_bytes())?;
        }
        Ok(())
    }

    /// Forgets every record of `node` hearing a DHCP link (at most
    /// [`MAX_HEARD_RECORDS`] read: links × nodes, far fewer in practice).
    pub(super) fn dhcp_node_down(&mut self, node: u64) -> Outcome {
        let records = self
            .scan_raw(CF_INDEX, DHCP_HEARD_PREFIX, MAX_HEARD_RECORDS)
            .map_err(storage)?;
        let suffix = node.to_be_bytes();
        let mut forgotten = 0u64;
        for (key, _) in records {
            if key.ends_with(&suffix) {
                self.delete_index(&key)?;
                forgotten += 1;
            }
        }
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(json!({ "forgotten": forgotten })),
        })
    }

    fn offer_inner(&mut self, request: LeaseRequest) -> Outcome {
        if request.offer_secs == 0 || request.offer_secs > MAX_OFFER_SECS {
            return Err(Rejection::new(
                code::INVALID_VALUE,
                format!("offer_secs must be 1 to {MAX_OFFER_SECS}"),
            )
            .at("offer_secs"));
        }
        let checked = self.check_request(&request)?;
        let now = request.now_unix;
        let name = checked.subnet.name.clone();
        let reservation = self.usable_reservation(&checked)?;
        let reservations_only = checked.subnet.mode == SubnetMode::ReservationsOnly;

        let mut chosen = None;
        if let Some(binding) = self.binding(&name, &checked.client_id)? {
            let addr = binding.lease.address;
            // A binding made before its address was reserved for someone
            // else is not offered again (the reservation takes it once the
            // binding ends).
            let reserved_for_other = self
                .reserved_in(&name, addr)?
                .is_some_and(|r| r.hardware_addr != checked.mac);
            let allowed = !reserved_for_other
                && (!reservations_only || reservation.as_ref().is_some_and(|r| r.address == addr));
            if allowed {
                if binding.lease.state == LeaseState::Bound && binding.lease.expires_at_unix > now {
                    return Ok(Reply::Done {
                        revision: binding.lease.revision,
                        object: Some(AnyObject::Lease(binding.lease).to_value()?),
                    });
                }
                if binding.holding || self.is_free(&name, u32::from(addr))? {
                    chosen = Some(addr);
                }
            }
        }
        if chosen.is_none() {
            chosen = reservation.as_ref().map(|r| r.address);
        }
        if chosen.is_none() && reservations_only {
            return Err(not_allocatable(format!(
                "subnet {name:?} allocates reserved addresses only, and this client has none"
            )));
        }
        if chosen.is_none() {
            if let Some(requested) = request.requested {
                if self.is_free(&name, u32::from(requested))? {
                    chosen = Some(requested);
                }
            }
        }
        if chosen.is_none() {
            // Every picker starts from the lowest free address: `hint` has
            // already tried the requested one, and `most_expired` would need
            // an ordering of free addresses by when they were freed, which
            // this store does not keep (see the module doc).
            chosen = self.lowest_free(&name)?.map(Ipv4Addr::from);
        }
        let Some(address) = chosen else {
            return Err(Rejection::new(
                code::DHCP_POOL_EXHAUSTED,
                format!("subnet {name:?} has no free address"),
            ));
        };
        self.take_address(&name, u32::from(address))?;
        self.drop_other_binding(&checked, address, now)?;
        let previous = self.load_lease(address)?;
        let expires = now.saturating_add(u64::from(request.offer_secs));
        let lease = self.lease_for(&checked, &request, address, LeaseState::Offered, expires);
        self.write_lease(previous, lease)
    }

    fn bind_inner(&mut self, request: LeaseRequest) -> Outcome {
        let checked = self.check_request(&request)?;
        let now = request.now_unix;
        let name = checked.subnet.name.clone();
        let binding = self.binding(&name, &checked.client_id)?;
        let target = match request.requested {
            Some(requested) => requested,
            None => match &binding {
                Some(b) if b.holding => b.lease.address,
                _ => {
                    return Err(Rejection::new(
                        code::DHCP_NO_BINDING,
                        format!(
                            "the client holds no lease in subnet {name:?} and asked for no address"
                        ),
                    ))
                }
            },
        };
        if !checked.subnet.is_host(target) {
            return Err(not_allocatable(format!(
                "{target} is not a host address of subnet {name:?}"
            )));
        }
        let existing = self.load_lease(target)?;
        let own = match &existing {
            Some(l) if l.state.holds_address() && l.client_id != checked.client_id => {
                return Err(Rejection::new(
                    code::DHCP_ADDRESS_TAKEN,
                    format!("{target} is held by another client"),
                ))
            }
            Some(l) if l.state == LeaseState::Declined => {
                return Err(not_allocatable(format!(
                    "{target} was declined and is quarantined"
                )))
            }
            Some(l) => l.state.holds_address() && l.subnet == name,
            None => false,
        };
        let reservation = self.reservation_for(&name, &checked.mac)?;
        let reserved_here = reservation.as_ref().is_some_and(|r| r.address == target);
        if let Some(r) = &reservation {
            if !reserved_here
                && checked.subnet.is_host(r.address)
                && !self.held_by_other(r.address, &checked.client_id)?
            {
                return Err(not_allocatable(format!(
                    "this client's address in subnet {name:?} is its reservation {}",
                    r.address
                )));
            }
        }
        if checked.subnet.mode == SubnetMode::ReservationsOnly && !reserved_here {
            return Err(not_allocatable(format!(
                "subnet {name:?} allocates reserved addresses only"
            )));
        }
        // Even the client's own binding: once its address is reserved for
        // another client, renewing is NAKed and the client starts over.
        if !reserved_here && self.reserved_in(&name, target)?.is_some() {
            return Err(not_allocatable(format!(
                "{target} is reserved for another client"
            )));
        }
        if !own && !reserved_here && !self.take_address(&name, u32::from(target))? {
            return Err(not_allocatable(format!(
                "{target} is not a free address of subnet {name:?}'s pools"
            )));
        }
        self.drop_other_binding(&checked, target, now)?;
        let secs = if reserved_here {
            checked.subnet.reserved_lease_secs
        } else {
            checked.subnet.lease_secs
        };
        let expires = now.saturating_add(u64::from(secs));
        let previous = self.load_lease(target)?;
        let lease = self.lease_for(&checked, &request, target, LeaseState::Bound, expires);
        self.write_lease(previous, lease)
    }

    /// The client's own holding lease of `address`.
    fn own_lease(&self, client_id: &str, address: Ipv4Addr) -> Result<Lease, Rejection> {
        let client_id = normalize_client_id(client_id)
            .map_err(|e| Rejection::new(e.code, e.message.clone()).at("client_id"))?;
        match self.load_lease(address)? {
            Some(l)
                if l.client_id == client_id
                    && matches!(l.state, LeaseState::Offered | LeaseState::Bound) =>
            {
                Ok(l)
            }
            _ => Err(Rejection::new(
                code::DHCP_NO_BINDING,
                format!("the client holds no lease of {address}"),
            )),
        }
    }

    pub(super) fn dhcp_release(
        &mut self,
        client_id: &str,
        address: Ipv4Addr,
        now_unix: u64,
    ) -> Outcome {
        let lease = self.own_lease(client_id, address)?;
        let mut released = lease.clone();
        released.state = LeaseState::Released;
        released.expires_at_unix = now_unix.min(lease.expires_at_unix);
        let subnet = lease.subnet.clone();
        let reply = self.write_lease(Some(lease), released)?;
        self.free_in(&subnet, address)?;
        Ok(reply)
    }

    pub(super) fn dhcp_decline(
        &mut self,
        client_id: &str,
        address: Ipv4Addr,
        now_unix: u64,
        quarantine_secs: u32,
    ) -> Outcome {
        if quarantine_secs > MAX_QUARANTINE_SECS {
            return Err(Rejection::new(
                code::INVALID_VALUE,
                format!("quarantine_secs must be at most {MAX_QUARANTINE_SECS}"),
            )
            .at("quarantine_secs"));
        }
        let lease = self.own_lease(client_id, address)?;
        let mut declined = lease.clone();
        declined.state = LeaseState::Declined;
        declined.expires_at_unix = now_unix.saturating_add(u64::from(quarantine_secs));
        self.write_lease(Some(lease), declined)
    }

    pub(super) fn dhcp_reclaim(&mut self, before_unix: u64, limit: u32) -> Outcome {
        let limit = limit.min(MAX_RECLAIM_PER_COMMAND);
        let mut reclaimed = 0u32;
        let mut visited = 0u32;
        let mut from = DHCP_EXPIRY_PREFIX.to_vec();
        let mut more = false;
        while let Some((key, _)) = self.first_at_or_after(DHCP_EXPIRY_PREFIX, &from)? {
            let rest = &key[DHCP_EXPIRY_PREFIX.len()..];
            let (Some(expires), Some(addr)) = (
                rest.get(..8).and_then(decode_u64),
                rest.get(8..).and_then(addr_bytes),
            ) else {
                return Err(storage("corrupt lease expiry entry"));
            };
            if expires > before_unix {
                break;
            }
            if visited == limit {
                more = true;
                break;
            }
            visited += 1;
            from = [&key[..], b"\0"].concat();
            let address = Ipv4Addr::from(addr);
            match self.load_lease(address)? {
                Some(lease) if lease.state.holds_address() && lease.expires_at_unix == expires => {
                    let mut expired = lease.clone();
                    expired.state = LeaseState::Expired;
                    let subnet = lease.subnet.clone();
                    self.write_lease(Some(lease), expired)?;
                    self.free_in(&subnet, address)?;
                    reclaimed += 1;
                }
                // Written with its lease, removed with it: a stray entry is
                // dropped rather than block the index.
                _ => self.delete_index(&key)?,
            }
        }
        Ok(Reply::Done {
            revision: self.current_revision()?,
            object: Some(json!({ "reclaimed": reclaimed, "more": more })),
        })
    }

    /// DELETE of a lease through the API: a forced release. The record
    /// goes, and the address is free at once (if in a pool and reserved for
    /// no one).
    pub(super) fn delete_lease(&mut self, key: &str, if_match: Option<u64>) -> Outcome {
        let Ok(address) = key.parse::<Ipv4Addr>() else {
            return Err(Rejection::new(
                code::NOT_FOUND,
                format!("leases {key:?} does not exist"),
            ));
        };
        let lease = self.load_lease(address)?;
        if let Some(lease) = &lease {
            if if_match.is_none_or(|r| r == lease.revision) {
                self.forget_lease_keys(lease)?;
            }
        }
        let reply = self.delete_object(ObjectKind::Leases, key, if_match)?;
        if let Some(lease) = lease {
            self.free_in(&lease.subnet, address)?;
        }
        Ok(reply)
    }

    /// Keeps the free ranges right after a subnet or reservation was
    /// written through the API (`previous` is what it replaced).
    pub(super) fn dhcp_object_written(
        &mut self,
        previous: Option<&AnyObject>,
        object: &AnyObject,
    ) -> Result<(), Rejection> {
        match (previous, object) {
            (previous, AnyObject::Subnet(subnet)) => {
                let changed = match previous {
                    Some(AnyObject::Subnet(old)) => {
                        old.pools != subnet.pools || old.cidr != subnet.cidr
                    }
                    _ => true,
                };
                if changed {
                    self.rebuild_free(subnet)?;
                }
            }
            (previous, AnyObject::Reservation(reservation)) => {
                if let Some(AnyObject::Reservation(old)) = previous {
                    if old.subnet != reservation.subnet {
                        self.free_in(&old.subnet, old.address)?;
                    }
                }
                if let Some(subnet) = self.load_subnet(&reservation.subnet)? {
                    if self.ensure_built(&subnet)? {
                        self.take_address(&subnet.name, u32::from(reservation.address))?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The same after a subnet or reservation was deleted.
    pub(super) fn dhcp_object_deleted(&mut self, object: &AnyObject) -> Result<(), Rejection> {
        match object {
            AnyObject::Subnet(subnet) => self.clear_free(&subnet.name),
            AnyObject::Reservation(r) => self.free_in(&r.subnet, r.address),
            _ => Ok(()),
        }
    }

    /// Two subnets may nest (a /24 inside a /16), but their pools may not
    /// overlap: the same address in two subnets' free ranges could go to two
    /// clients.
    pub(super) fn check_subnet_pools(
        &self,
        subnet: &Subnet,
        creating: bool,
    ) -> Result<(), Rejection> {
        let prefix = [&index_field_prefix(ObjectKind::Subnets, "cidr")[..]].concat();
        let entries = self
            .scan_raw(CF_INDEX, &prefix, MAX_SUBNETS + 1)
            .map_err(storage)?;
        if creating && entries.len() >= MAX_SUBNETS {
            return Err(Rejection::new(
                code::TOO_MANY,
                format!("a cluster holds at most {MAX_SUBNETS} subnets"),
            ));
        }
        for (key, _) in entries {
            let rest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let Some((cidr, name)) = rest.split_once('\0') else {
                continue;
            };
            if name == subnet.name {
                continue;
            }
            let Ok(cidr) = cidr.parse::<ipnet::Ipv4Net>() else {
                continue;
            };
            if !(cidr.contains(&subnet.cidr.network()) || subnet.cidr.contains(&cidr.network())) {
                continue;
            }
            let Some(other) = self.load_subnet(name)? else {
                continue;
            };
            for pool in &subnet.pools {
                if let Some(theirs) = other
                    .pools
                    .iter()
                    .find(|p| p.start <= pool.end && pool.start <= p.end)
                {
                    return Err(Rejection::new(
                        code::POOL_OVERLAP,
                        format!(
                            "pool {}-{} overlaps pool {}-{} of subnet {:?}",
                            pool.start, pool.end, theirs.start, theirs.end, other.name
                        ),
                    )
                    .at("pools"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Through the real apply, on a temporary RocksDB.

    use std::collections::{BTreeMap, BTreeSet};

    use cradle_raft::{StateMachineApp, Txn};
    use serde_json::Value;
    use tokio::sync::broadcast;

    use super::*;
    use crate::store::apply::CradleApp;
    use crate::store::command::Command;
    use crate::store::digest::{self, DigestRecord};
    use crate::store::frames;

    const NOW: u64 = 1_700_000_000;

    struct Harness {
        _dir: tempfile::TempDir,
        db: rocksdb::DB,
        app: CradleApp,
        index: u64,
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let db = rocksdb::DB::open_cf(&options, dir.path(), ALL_CFS).unwrap();
            let (events, _) = broadcast::channel(16);
            Harness {
                _dir: dir,
                db,
                app: CradleApp::new(events),
                index: 0,
            }
        }

        fn run(&mut self, command: &Command) -> Reply {
            self.run_all(std::slice::from_ref(command)).pop().unwrap()
        }

        /// Applies each command as its own entry, all in one batch.
        fn run_all(&mut self, commands: &[Command]) -> Vec<Reply> {
            let mut txn = Txn::new(&self.db);
            let replies = commands
                .iter()
                .map(|c| {
                    self.index += 1;
                    let bytes = self
                        .app
                        .apply(&mut txn, self.index, &serde_json::to_vec(c).unwrap())
                        .unwrap();
                    serde_json::from_slice(&bytes).unwrap()
                })
                .collect();
            self.db.write(txn.into_batch()).unwrap();
            replies
        }

        fn create(&mut self, kind: ObjectKind, object: Value) {
            let reply = self.run(&Command::Create { kind, object });
            assert_eq!(code(&reply), "done", "{reply:?}");
        }

        /// Every key and value of the application's column families, but
        /// the digest record (which names the last log index).
        fn dump(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
            dump(&self.db)
        }

        fn free(&self, subnet: &str) -> BTreeSet<u32> {
            let prefix = dhcp_free_prefix(subnet);
            let cf = self.db.cf_handle(CF_INDEX).unwrap();
            let mut out = BTreeSet::new();
            let mut last_end: Option<u32> = None;
            for item in self.db.prefix_iterator_cf(cf, &prefix) {
                let (k, v) = item.unwrap();
                if !k.starts_with(&prefix) {
                    break;
                }
                let end = decode_u32(&k[prefix.len()..]).unwrap();
                let start = decode_u32(&v).unwrap();
                assert!(start <= end);
                if let Some(last) = last_end {
                    assert!(last + 1 < start, "ranges overlap or touch");
                }
                last_end = Some(end);
                out.extend(start..=end);
            }
            out
        }

        fn leases(&self) -> Vec<Lease> {
            let cf = self.db.cf_handle(CF_OBJECTS).unwrap();
            let prefix = object_prefix(ObjectKind::Leases);
            self.db
                .prefix_iterator_cf(cf, &prefix)
                .map(|i| i.unwrap())
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| serde_json::from_slice(&v).unwrap())
                .collect()
        }

        fn reserved(&self) -> Vec<Reservation> {
            let cf = self.db.cf_handle(CF_OBJECTS).unwrap();
            let prefix = object_prefix(ObjectKind::Reservations);
            self.db
                .prefix_iterator_cf(cf, &prefix)
                .map(|i| i.unwrap())
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| serde_json::from_slice(&v).unwrap())
                .collect()
        }

        /// Free ranges + held + reserved = the pools, exactly, and no
        /// client holds two addresses in the subnet.
        fn check_invariant(&self, subnet: &Subnet) {
            let pool: BTreeSet<u32> = subnet
                .pools
                .iter()
                .flat_map(|p| u32::from(p.start)..=u32::from(p.end))
                .collect();
            let free = self.free(&subnet.name);
            let mut accounted = free.clone();
            let mut holders = BTreeSet::new();
            for lease in self.leases() {
                if lease.state.holds_address() && lease.subnet == subnet.name {
                    let a = u32::from(lease.address);
                    assert!(!free.contains(&a), "{} is held and free", lease.address);
                    accounted.insert(a);
                    if lease.state != LeaseState::Declined {
                        assert!(
                            holders.insert(lease.client_id.clone()),
                            "{} holds two addresses",
                            lease.client_id
                        );
                    }
                }
            }
            for r in self.reserved() {
                if r.subnet == subnet.name {
                    let a = u32::from(r.address);
                    assert!(!free.contains(&a), "{} is reserved and free", r.address);
                    accounted.insert(a);
                }
            }
            let in_pool: BTreeSet<u32> = accounted.intersection(&pool).copied().collect();
            assert_eq!(in_pool, pool);
            assert!(free.is_subset(&pool));
        }
    }

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

    fn code(reply: &Reply) -> &str {
        match reply {
            Reply::Rejected(r) => r.code.name(),
            _ => "done",
        }
    }

    fn lease(reply: &Reply) -> Lease {
        match reply {
            Reply::Done {
                object: Some(o), ..
            } => serde_json::from_value(o.clone()).unwrap(),
            other => panic!("expected a lease: {other:?}"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn request(client: &str, requested: Option<&str>) -> LeaseRequest {
        LeaseRequest {
            subnet: "lab".into(),
            client_id: client.into(),
            hardware_addr: String::new(),
            requested: requested.map(ip),
            now_unix: NOW,
            node: 1,
            via: None,
            hostname: None,
            offer_secs: 30,
        }
    }

    fn with_mac(mut r: LeaseRequest, mac: &str) -> LeaseRequest {
        r.hardware_addr = mac.into();
        r
    }

    fn offer(r: LeaseRequest) -> Command {
        Command::DhcpOffer { request: r }
    }

    fn bind(r: LeaseRequest) -> Command {
        Command::DhcpBind { request: r }
    }

    fn release(client: &str, address: &str) -> Command {
        Command::DhcpRelease {
            client_id: client.into(),
            address: ip(address),
            now_unix: NOW,
        }
    }

    fn subnet_json(name: &str, cidr: &str, pools: &[(&str, &str)], extra: Value) -> Value {
        let mut v = json!({
            "name": name,
            "cidr": cidr,
            "pools": pools.iter().map(|(s, e)| json!({"start": s, "end": e})).collect::<Vec<_>>(),
        });
        if let (Some(map), Value::Object(extra)) = (v.as_object_mut(), extra) {
            map.extend(extra);
        }
        v
    }

    fn lab(h: &mut Harness) -> Subnet {
        let value = subnet_json(
            "lab",
            "10.0.0.0/24",
            &[("10.0.0.10", "10.0.0.20")],
            json!({"lease_secs": 3600, "reserved_lease_secs": 7200}),
        );
        h.create(ObjectKind::Subnets, value.clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_allocation_path() {
        let mut h = Harness::new();
        let subnet = lab(&mut h);
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.0.0.15", "hardware_addr": "52:54:00:00:00:15", "subnet": "lab"}),
        );
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.0.0.50", "hardware_addr": "52:54:00:00:00:50", "subnet": "lab"}),
        );
        h.check_invariant(&subnet);

        // The picker: the lowest free address, held as a short offer.
        let l = lease(&h.run(&offer(request("01aa", None))));
        assert_eq!((l.address, l.state), (ip("10.0.0.10"), LeaseState::Offered));
        assert_eq!(l.expires_at_unix, NOW + 30);
        // The existing binding comes first.
        let again = lease(&h.run(&offer(request("01:AA", Some("10.0.0.19")))));
        assert_eq!(again.address, ip("10.0.0.10"));
        let bound = lease(&h.run(&bind(request("01aa", Some("10.0.0.10")))));
        assert_eq!(
            (bound.state, bound.expires_at_unix),
            (LeaseState::Bound, NOW + 3600)
        );
        // A bound client is offered its lease, unchanged.
        let offered = lease(&h.run(&offer(request("01aa", None))));
        assert_eq!(offered, bound);
        // The requested address, when free and in a pool.
        assert_eq!(
            lease(&h.run(&offer(request("02", Some("10.0.0.12"))))).address,
            ip("10.0.0.12")
        );
        // Taken: the picker instead.
        assert_eq!(
            lease(&h.run(&offer(request("03", Some("10.0.0.12"))))).address,
            ip("10.0.0.11")
        );
        assert_eq!(
            code(&h.run(&bind(request("04", Some("10.0.0.12"))))),
            "dhcp_address_taken"
        );
        // Reservations: in the pool, and outside it, with their lease time.
        let r = lease(&h.run(&offer(with_mac(request("05", None), "52:54:00:00:00:15"))));
        assert_eq!(r.address, ip("10.0.0.15"));
        let r = lease(&h.run(&bind(with_mac(
            request("05", Some("10.0.0.15")),
            "52:54:00:00:00:15",
        ))));
        assert_eq!(r.expires_at_unix, NOW + 7200);
        let r = lease(&h.run(&offer(with_mac(
            request("06", Some("10.0.0.13")),
            "52:54:00:00:00:50",
        ))));
        assert_eq!(r.address, ip("10.0.0.50"));
        // A client with a reservation is NAKed for any other address.
        assert_eq!(
            code(&h.run(&bind(with_mac(
                request("06", Some("10.0.0.13")),
                "52:54:00:00:00:50"
            )))),
            "dhcp_not_allocatable"
        );
        // Nobody else gets a reserved address, or one outside the pools or the subnet.
        assert_eq!(
            code(&h.run(&bind(request("07", Some("10.0.0.50"))))),
            "dhcp_address_taken"
        );
        assert_eq!(
            code(&h.run(&bind(request("08", Some("10.0.0.15"))))),
            "dhcp_address_taken"
        );
        h.run(&release("06", "10.0.0.50"));
        assert_eq!(
            code(&h.run(&bind(request("07", Some("10.0.0.50"))))),
            "dhcp_not_allocatable"
        );
        assert_eq!(
            code(&h.run(&bind(request("07", Some("10.0.0.99"))))),
            "dhcp_not_allocatable"
        );
        assert_eq!(
            code(&h.run(&bind(request("07", Some("10.0.1.5"))))),
            "dhcp_not_allocatable"
        );
        assert_eq!(
            code(&h.run(&offer(request("07", Some("10.0.1.5"))))),
            "dhcp_not_allocatable"
        );
        // No binding and no address asked for.
        assert_eq!(code(&h.run(&bind(request("07", None)))), "dhcp_no_binding");
        // A REQUEST straight for a free address binds it (init-reboot).
        let direct = lease(&h.run(&bind(request("07", Some("10.0.0.18")))));
        assert_eq!(
            (direct.address, direct.state),
            (ip("10.0.0.18"), LeaseState::Bound)
        );
        // Moving to another address ends the old binding.
        let moved = lease(&h.run(&bind(request("07", Some("10.0.0.17")))));
        assert_eq!(moved.address, ip("10.0.0.17"));
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.18"))));
        h.check_invariant(&subnet);

        // Release frees at once; the client gets it back while still free.
        assert_eq!(code(&h.run(&release("01aa", "10.0.0.10"))), "done");
        assert_eq!(
            code(&h.run(&release("01aa", "10.0.0.10"))),
            "dhcp_no_binding"
        );
        assert_eq!(code(&h.run(&release("09", "10.0.0.12"))), "dhcp_no_binding");
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.10"))));
        assert_eq!(
            lease(&h.run(&offer(request("01aa", None)))).address,
            ip("10.0.0.10")
        );
        h.check_invariant(&subnet);

        // Decline quarantines: the address goes to no one until reclaimed.
        let decline = Command::DhcpDecline {
            client_id: "02".into(),
            address: ip("10.0.0.12"),
            now_unix: NOW,
            quarantine_secs: 600,
        };
        assert_eq!(code(&h.run(&decline)), "done");
        let view_free = h.free("lab");
        assert!(!view_free.contains(&u32::from(ip("10.0.0.12"))));
        assert_eq!(
            code(&h.run(&bind(request("02", Some("10.0.0.12"))))),
            "dhcp_not_allocatable"
        );
        assert_eq!(
            code(&h.run(&bind(request("09", Some("10.0.0.12"))))),
            "dhcp_address_taken"
        );
        h.check_invariant(&subnet);

        // Reclaim: offers past their expiry, then the quarantine.
        let reclaim = |before_unix| Command::DhcpReclaim {
            before_unix,
            limit: 100,
        };
        let n = |reply: &Reply| match reply {
            Reply::Done {
                object: Some(o), ..
            } => o["reclaimed"].as_u64().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(n(&h.run(&reclaim(NOW + 29))), 0);
        // Offers to 01aa (10), 03 (11), 06 was released; offer to 05 was bound.
        assert_eq!(n(&h.run(&reclaim(NOW + 30))), 2);
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.11"))));
        assert_eq!(n(&h.run(&reclaim(NOW + 600))), 1);
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.12"))));
        h.check_invariant(&subnet);
        // A limit of one takes one.
        h.run(&offer(request("0a", None)));
        h.run(&offer(request("0b", None)));
        let limited = h.run(&Command::DhcpReclaim {
            before_unix: NOW + 31,
            limit: 1,
        });
        assert_eq!(n(&limited), 1);
        match &limited {
            Reply::Done {
                object: Some(o), ..
            } => assert_eq!(o["more"], true),
            _ => unreachable!(),
        }
        h.check_invariant(&subnet);

        // The generic API: leases are read-only, DELETE is a forced release.
        let create = h.run(&Command::Create {
            kind: ObjectKind::Leases,
            object: json!({"address": "10.0.0.14", "client_id": "ff", "expires_at_unix": 1}),
        });
        assert_eq!(code(&create), "read_only");
        let patch = h.run(&Command::Patch {
            kind: ObjectKind::Leases,
            key: "10.0.0.17".into(),
            patch: serde_json::from_value(
                json!([{"op": "replace", "path": "/expires_at_unix", "value": 1}]),
            )
            .unwrap(),
            if_match: None,
        });
        assert_eq!(code(&patch), "read_only");
        let delete = h.run(&Command::Delete {
            kind: ObjectKind::Leases,
            key: "10.0.0.17".into(),
            if_match: None,
        });
        assert_eq!(code(&delete), "done");
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.17"))));
        assert_eq!(
            lease(&h.run(&bind(request("0c", Some("10.0.0.17"))))).client_id,
            "0c"
        );
        h.check_invariant(&subnet);

        // A reservation made for someone else on a bound address: the
        // holder's renewal is NAKed and it moves; the address stays out of
        // the free ranges, for the reservation's owner.
        assert_eq!(
            lease(&h.run(&bind(request("0d", Some("10.0.0.16"))))).address,
            ip("10.0.0.16")
        );
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.0.0.16", "hardware_addr": "52:54:00:00:00:16", "subnet": "lab"}),
        );
        assert_eq!(
            code(&h.run(&bind(request("0d", Some("10.0.0.16"))))),
            "dhcp_not_allocatable"
        );
        let moved = lease(&h.run(&offer(request("0d", None))));
        assert_ne!(moved.address, ip("10.0.0.16"));
        assert!(!h.free("lab").contains(&u32::from(ip("10.0.0.16"))));
        let owner = with_mac(request("0e", None), "52:54:00:00:00:16");
        assert_eq!(lease(&h.run(&offer(owner))).address, ip("10.0.0.16"));
        h.check_invariant(&subnet);

        // Reservations and pool edits keep the ranges right.
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.0.0.19", "hardware_addr": "52:54:00:00:00:19", "subnet": "lab"}),
        );
        assert!(!h.free("lab").contains(&u32::from(ip("10.0.0.19"))));
        h.check_invariant(&subnet);
        let deleted = h.run(&Command::Delete {
            kind: ObjectKind::Reservations,
            key: "10.0.0.19".into(),
            if_match: None,
        });
        assert_eq!(code(&deleted), "done");
        assert!(h.free("lab").contains(&u32::from(ip("10.0.0.19"))));
        let wider = subnet_json(
            "lab",
            "10.0.0.0/24",
            &[("10.0.0.10", "10.0.0.30"), ("10.0.0.100", "10.0.0.101")],
            json!({"lease_secs": 3600, "reserved_lease_secs": 7200}),
        );
        let replaced = h.run(&Command::Replace {
            kind: ObjectKind::Subnets,
            key: "lab".into(),
            object: wider.clone(),
            if_match: None,
        });
        assert_eq!(code(&replaced), "done");
        let wider: Subnet = serde_json::from_value(wider).unwrap();
        h.check_invariant(&wider);
        // A nested subnet may not share pool addresses.
        let nested = h.run(&Command::Create {
            kind: ObjectKind::Subnets,
            object: subnet_json(
                "inner",
                "10.0.0.0/25",
                &[("10.0.0.25", "10.0.0.40")],
                json!({}),
            ),
        });
        assert_eq!(code(&nested), "pool_overlap");
        let nested = h.run(&Command::Create {
            kind: ObjectKind::Subnets,
            object: subnet_json(
                "inner",
                "10.0.0.0/25",
                &[("10.0.0.31", "10.0.0.40")],
                json!({}),
            ),
        });
        assert_eq!(code(&nested), "done");
    }

    #[test]
    fn modes_and_exhaustion() {
        let mut h = Harness::new();
        for (name, cidr, extra) in [
            ("only", "10.1.0.0/24", json!({"mode": "reservations_only"})),
            ("proxy", "10.2.0.0/24", json!({"mode": "proxy"})),
            ("off", "10.3.0.0/24", json!({"enabled": false})),
            ("tiny", "10.4.0.0/24", json!({"picker": "most_expired"})),
        ] {
            let start = cidr.replace("0/24", "10");
            let end = cidr.replace("0/24", "11");
            h.create(
                ObjectKind::Subnets,
                subnet_json(name, cidr, &[(&start, &end)], extra),
            );
        }
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.1.0.20", "hardware_addr": "52:54:00:00:01:20", "subnet": "only"}),
        );
        let on = |subnet: &str, mut r: LeaseRequest| {
            r.subnet = subnet.into();
            r
        };
        assert_eq!(
            code(&h.run(&offer(on("only", request("01", None))))),
            "dhcp_not_allocatable"
        );
        assert_eq!(
            code(&h.run(&bind(on("only", request("01", Some("10.1.0.10")))))),
            "dhcp_not_allocatable"
        );
        let r = lease(&h.run(&offer(on(
            "only",
            with_mac(request("02", None), "52:54:00:00:01:20"),
        ))));
        assert_eq!(r.address, ip("10.1.0.20"));
        for subnet in ["proxy", "off", "nowhere"] {
            assert_eq!(
                code(&h.run(&offer(on(subnet, request("01", None))))),
                "dhcp_subnet_unusable"
            );
            assert_eq!(
                code(&h.run(&bind(on(subnet, request("01", None))))),
                "dhcp_subnet_unusable"
            );
        }
        assert_eq!(
            lease(&h.run(&offer(on("tiny", request("01", None))))).address,
            ip("10.4.0.10")
        );
        assert_eq!(
            lease(&h.run(&offer(on("tiny", request("02", None))))).address,
            ip("10.4.0.11")
        );
        assert_eq!(
            code(&h.run(&offer(on("tiny", request("03", None))))),
            "dhcp_pool_exhausted"
        );
    }

    #[test]
    fn garbage_is_refused_alone_and_changes_nothing() {
        let mut h = Harness::new();
        lab(&mut h);
        h.run(&offer(request("01", None)));
        let before = h.dump();
        let mut huge = request("02", None);
        huge.hostname = Some("h".repeat(MAX_HOSTNAME_BYTES + 1));
        let mut zero_offer = request("02", None);
        zero_offer.offer_secs = 0;
        let cases = vec![
            (offer(request("not hex", None)), "invalid_client_id"),
            (bind(request("", Some("10.0.0.10"))), "invalid_client_id"),
            (offer(with_mac(request("02", None), "nope")), "invalid_mac"),
            (offer(huge), "too_long"),
            (offer(zero_offer), "invalid_value"),
            (
                offer(request("02", Some("192.168.7.7"))),
                "dhcp_not_allocatable",
            ),
            (bind(request("02", Some("0.0.0.0"))), "dhcp_not_allocatable"),
            (
                offer(LeaseRequest {
                    subnet: "nope".into(),
                    ..request("02", None)
                }),
                "dhcp_subnet_unusable",
            ),
            (release("02", "10.0.0.10"), "dhcp_no_binding"),
            (release("zz", "10.0.0.10"), "invalid_client_id"),
            (
                Command::DhcpDecline {
                    client_id: "01".into(),
                    address: ip("10.0.0.10"),
                    now_unix: NOW,
                    quarantine_secs: MAX_QUARANTINE_SECS + 1,
                },
                "invalid_value",
            ),
            (
                Command::Delete {
                    kind: ObjectKind::Leases,
                    key: "garbage".into(),
                    if_match: None,
                },
                "not_found",
            ),
        ];
        for (command, expected) in &cases {
            assert_eq!(code(&h.run(command)), *expected, "{command:?}");
        }
        assert_eq!(h.dump(), before);
        // In one framed entry, with a good command in the middle: each
        // answers for itself.
        let mut frames_in = vec![serde_json::to_vec(&cases[0].0).unwrap()];
        frames_in.push(serde_json::to_vec(&offer(request("03", None))).unwrap());
        frames_in.push(b"{\"op\":\"dhcp_offer\",\"request\":{\"subnet\":1}}".to_vec());
        let entry = frames::encode(frames::FORMAT_V2, &frames_in).unwrap();
        let mut txn = Txn::new(&h.db);
        let answer = h.app.apply(&mut txn, 1000, &entry).unwrap();
        let codes: Vec<String> = frames::decode(&answer, frames::readable_formats())
            .unwrap()
            .1
            .into_iter()
            .map(|f| code(&serde_json::from_slice(f).unwrap()).to_string())
            .collect();
        assert_eq!(codes, ["invalid_client_id", "done", "invalid_command"]);
    }

    /// A tiny deterministic generator, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn no_address_is_ever_held_by_two_clients() {
        let mut h = Harness::new();
        let subnet = lab(&mut h);
        h.create(
            ObjectKind::Reservations,
            json!({"address": "10.0.0.13", "hardware_addr": "52:54:00:00:00:01", "subnet": "lab"}),
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let clients: Vec<String> = (0..24).map(|i| format!("{:02x}", i + 1)).collect();
        // What clients were told: address → the client it was given to.
        let mut given: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut now = NOW;
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for step in 0..4000 {
            now += rng.below(20);
            let client = clients[rng.below(clients.len() as u64) as usize].clone();
            let mac = if client == "01" {
                "52:54:00:00:00:01"
            } else {
                ""
            };
            // Mostly the client's own address (as real clients send), else
            // any address around the pool, inside and out.
            let own = given.iter().find(|(_, c)| **c == client).map(|(a, _)| *a);
            let address = match own {
                Some(own) if rng.below(4) != 0 => own,
                _ => Ipv4Addr::from(u32::from(ip("10.0.0.8")) + rng.below(16) as u32),
            };
            let mut r = with_mac(request(&client, None), mac);
            r.now_unix = now;
            if rng.below(2) == 0 {
                r.requested = Some(address);
            }
            let (command, kind) = match rng.below(10) {
                0..=2 => (offer(r), "offer"),
                3..=5 => (bind(r), "bind"),
                6 => (
                    Command::DhcpRelease {
                        client_id: client.clone(),
                        address,
                        now_unix: now,
                    },
                    "release",
                ),
                7 => (
                    Command::DhcpDecline {
                        client_id: client.clone(),
                        address,
                        now_unix: now,
                        quarantine_secs: 60,
                    },
                    "decline",
                ),
                _ => (
                    Command::DhcpReclaim {
                        before_unix: now,
                        limit: rng.below(4) as u32,
                    },
                    "reclaim",
                ),
            };
            let reply = h.run(&command);
            *counts
                .entry(if code(&reply) == "done" {
                    kind
                } else {
                    "refused"
                })
                .or_default() += 1;
            if code(&reply) == "done" {
                match kind {
                    "offer" | "bind" => {
                        let l = lease(&reply);
                        if let Some(holder) = given.get(&l.address) {
                            assert_eq!(holder, &client, "step {step}: {} given twice", l.address);
                        }
                        given.retain(|_, c| c != &client);
                        given.insert(l.address, client.clone());
                    }
                    "release" => {
                        given.remove(&address);
                    }
                    _ => {}
                }
            }
            // Reclaim, decline and moves end holdings: what the store still
            // holds is what the clients may still use.
            let holding: BTreeMap<Ipv4Addr, String> = h
                .leases()
                .into_iter()
                .filter(|l| l.state.holds_address())
                .map(|l| (l.address, l.client_id))
                .collect();
            given.retain(|a, c| holding.get(a) == Some(c));
            h.check_invariant(&subnet);
        }
        println!("randomized commands by outcome: {counts:?}");
        for kind in ["offer", "bind", "release", "decline", "reclaim", "refused"] {
            assert!(
                counts.get(kind).copied().unwrap_or(0) > 30,
                "{kind}: {counts:?}"
            );
        }
    }

    #[test]
    fn allocation_stays_fast_with_100k_leases() {
        let mut h = Harness::new();
        let value = subnet_json(
            "big",
            "10.64.0.0/14",
            &[("10.64.0.1", "10.67.255.254")],
            json!({}),
        );
        h.create(ObjectKind::Subnets, value);
        let big = |client: u32| LeaseRequest {
            subnet: "big".into(),
            ..request(&format!("{client:08x}"), None)
        };
        let total = 100_000u32;
        let per_batch = 1000u32;
        let started = std::time::Instant::now();
        for batch in 0..total / per_batch {
            let commands: Vec<Command> = (0..per_batch)
                .map(|i| offer(big(batch * per_batch + i)))
                .collect();
            for reply in h.run_all(&commands) {
                assert_eq!(code(&reply), "done");
            }
        }
        println!(
            "filled {total} leases in {:?} ({:?} per offer, debug build)",
            started.elapsed(),
            started.elapsed() / total
        );
        // Now allocations, binds and releases among 100,000 leases: each
        // reads a bounded number of keys.
        let rounds = 200u32;
        let mut txn = Txn::new(&h.db);
        let mut most_reads = 0;
        let started = std::time::Instant::now();
        for i in 0..rounds {
            let client = total + i;
            for command in [offer(big(client)), bind(big(client))] {
                let before = txn.keys_read();
                h.index += 1;
                let reply = h
                    .app
                    .apply(&mut txn, h.index, &serde_json::to_vec(&command).unwrap())
                    .unwrap();
                let reply: Reply = serde_json::from_slice(&reply).unwrap();
                assert_eq!(code(&reply), "done");
                most_reads = most_reads.max(txn.keys_read() - before);
            }
        }
        let elapsed = started.elapsed();
        h.db.write(txn.into_batch()).unwrap();
        println!(
            "with {total} leases: {:?} per offer+bind pair, at most {most_reads} keys read per command",
            elapsed / rounds
        );
        assert!(
            most_reads <= 64,
            "{most_reads} keys read for one allocation"
        );
        // The addresses went in order: the next free one is right after.
        let next = lease(&h.run(&offer(big(total + rounds))));
        assert_eq!(
            u32::from(next.address),
            u32::from(ip("10.64.0.1")) + total + rounds
        );

        // Reclaim visits only what expired, in expiry order, a bounded
        // number per command.
        let commands = 20u32;
        let mut txn = Txn::new(&h.db);
        let mut most_reads = 0;
        let started = std::time::Instant::now();
        for _ in 0..commands {
            let before = txn.keys_read();
            h.index += 1;
            let command = Command::DhcpReclaim {
                before_unix: NOW + 30,
                limit: 10_000,
            };
            let reply = h
                .app
                .apply(&mut txn, h.index, &serde_json::to_vec(&command).unwrap())
                .unwrap();
            match serde_json::from_slice::<Reply>(&reply).unwrap() {
                Reply::Done {
                    object: Some(o), ..
                } => {
                    assert_eq!(o["reclaimed"], MAX_RECLAIM_PER_COMMAND, "{o}");
                }
                other => panic!("{other:?}"),
            }
            most_reads = most_reads.max(txn.keys_read() - before);
        }
        let elapsed = started.elapsed();
        h.db.write(txn.into_batch()).unwrap();
        println!(
            "reclaim: {:?} per command of {MAX_RECLAIM_PER_COMMAND} leases, at most {most_reads} keys read per command",
            elapsed / commands
        );
        assert!(most_reads <= 64 * u64::from(MAX_RECLAIM_PER_COMMAND));
        assert_eq!(
            lease(&h.run(&offer(big(total + rounds + 1)))).address,
            ip("10.64.0.1"),
            "the first offers expired and their addresses are free"
        );
    }

    /// A history of lease commands over one small subnet.
    fn history() -> Vec<Vec<u8>> {
        let mut commands = vec![
            Command::Create {
                kind: ObjectKind::Subnets,
                object: subnet_json(
                    "lab",
                    "10.0.0.0/24",
                    &[("10.0.0.10", "10.0.0.40")],
                    json!({}),
                ),
            },
            Command::Create {
                kind: ObjectKind::Reservations,
                object: json!({"address": "10.0.0.12", "hardware_addr": "52:54:00:00:00:01", "subnet": "lab"}),
            },
        ];
        let mut rng = Rng(42);
        for step in 0..300u64 {
            let client = format!("{:02x}", rng.below(20) + 1);
            let mut r = request(&client, None);
            r.now_unix = NOW + step;
            let address = Ipv4Addr::from(u32::from(ip("10.0.0.10")) + rng.below(30) as u32);
            commands.push(match rng.below(6) {
                0 | 1 => offer(r),
                2 => bind(LeaseRequest {
                    requested: Some(address),
                    ..r
                }),
                3 => bind(r),
                4 => Command::DhcpRelease {
                    client_id: client,
                    address,
                    now_unix: NOW + step,
                },
                _ => Command::DhcpReclaim {
                    before_unix: NOW + step,
                    limit: 3,
                },
            });
        }
        commands
            .iter()
            .map(|c| serde_json::to_vec(c).unwrap())
            .collect()
    }

    fn replay(commands: &[Vec<u8>], per_entry: usize, per_batch: usize) -> Harness {
        let h = Harness::new();
        let entries: Vec<Vec<u8>> = if per_entry == 0 {
            commands.to_vec()
        } else {
            commands
                .chunks(per_entry)
                .map(|chunk| frames::encode(frames::FORMAT_V2, chunk).unwrap())
                .collect()
        };
        for (n, batch) in entries.chunks(per_batch).enumerate() {
            let mut txn = Txn::new(&h.db);
            for (k, entry) in batch.iter().enumerate() {
                h.app
                    .apply(&mut txn, (n * per_batch + k + 1) as u64, entry)
                    .unwrap();
            }
            h.db.write(txn.into_batch()).unwrap();
        }
        h
    }

    #[test]
    fn the_same_log_in_any_batching_gives_the_same_state() {
        let commands = history();
        let replicas = [
            replay(&commands, 0, 1),
            replay(&commands, 1, 1000),
            replay(&commands, 7, 3),
            replay(&commands, 1000, 1),
        ];
        let first = replicas[0].dump();
        let digest_of = |h: &Harness| {
            let meta = h.db.cf_handle(CF_META).unwrap();
            DigestRecord::decode(&h.db.get_cf(meta, META_DIGEST).unwrap().unwrap())
                .unwrap()
                .digest
        };
        let digest = digest_of(&replicas[0]);
        for replica in &replicas[1..] {
            assert_eq!(replica.dump(), first);
            assert_eq!(digest_of(replica), digest);
        }
        // What apply maintained is what a full scan gives.
        let txn = Txn::new(&replicas[2].db);
        assert_eq!(digest::recompute(&txn).unwrap(), digest);
        assert!(replicas[0].leases().len() > 10);
    }
}
