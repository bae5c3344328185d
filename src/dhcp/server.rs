//! The DHCP protocol on one node: what to answer to each request, and the
//! service that receives and sends.
//!
//! Every decision reads one snapshot view of the replicated state; every
//! lease change is a command through the log, and a DHCPACK (or OFFER) goes
//! out only after its command committed (RFC 2131 §4.3 with Raft as the
//! stable storage). A node that cannot commit (no leader, no quorum, the
//! deadline passed) re-acknowledges only a binding already committed to
//! that client, and only up to its committed expiry (DESIGN.md, guarantee
//! 5); it never allocates.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::interfaces::Interface;
use super::owner::{self, Role, Transactions};
use super::packet::{MessageType, Packet, MIN_REPLY_BYTES};
use super::pxe::{self, Firmware, LoaderOverrides};
use super::socket::{reply_destination, DhcpSocket, Egress, Received};
use super::templates::OptionTemplates;
use super::values;
use crate::clock::Clock;
use crate::metrics::{DhcpMetrics, MessageLabel, RoleLabel};
use crate::model::{DhcpOption, Lease, Machine, ObjectKind, Reservation, Subnet, SubnetMode};
use crate::service::{Limit, Service, ServiceError, Shutdown};
use crate::store::{Command, LeaseRequest, Store, StoreError, View};

/// A node counts as hearing a link for this long after it last answered a
/// client there (records are refreshed every `HEARD_REFRESH_SECS`).
const HEARD_MEMORY_SECS: u64 = 10 * crate::store::dhcp::HEARD_REFRESH_SECS;
/// Relay hops beyond which a request is looping between relays (RFC 1542
/// §4.1.1 lets relays discard past 16).
const MAX_HOPS: u8 = 16;
/// How long a committed OFFER holds its address for the client's REQUEST.
pub const OFFER_SECS: u32 = 60;
/// A lease command waits at most this long to be proposed: a client
/// retransmits after 4 s, and the retransmission is answered afresh, so an
/// answer later than that helps nobody.
pub const COMMIT_DEADLINE: Duration = Duration::from_secs(3);
/// Machine updates (address, GUID) waiting to be written; more are dropped
/// (the next request from the machine tries again).
const MACHINE_UPDATE_QUEUE: usize = 1_024;
/// The `file` field holds 128 bytes with its terminating NUL.
const MAX_FILE_FIELD: usize = 127;

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The DHCP port (67): addressing and, per subnet, boot options.
    Dhcp,
    /// The PXE boot server port (4011): proxyDHCP's second exchange.
    Proxy,
}

/// The responder's settings, from the node's flags.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub node_id: u64,
    /// The port replies to unrelayed clients go to (68).
    pub client_port: u16,
    /// The boot HTTP port `http://` boot files name.
    pub boot_http_port: u16,
    /// Seconds a client must be trying before the next node takes over.
    pub takeover_secs: u64,
    /// Seconds a declined address stays out of use.
    pub decline_secs: u32,
    /// Interfaces whose broadcasts are answered (relayed requests are
    /// answered whatever interface they arrive on).
    pub interfaces: Vec<Interface>,
}

/// A reply ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV4,
    pub egress: Option<Egress>,
}

/// Why a request got no answer: a stable label for the drop counter, and
/// a detail for the debug log.
struct Dropped {
    reason: &'static str,
    detail: String,
}

fn dropped(reason: &'static str, detail: impl Into<String>) -> Dropped {
    Dropped {
        reason,
        detail: detail.into(),
    }
}

impl From<StoreError> for Dropped {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Rejected(r) => dropped(r.code.name(), r.message.clone()),
            _ => dropped("no_quorum", e.to_string()),
        }
    }
}

/// Answers DHCP requests from replicated state. Shared by the node's DHCP
/// sockets.
pub struct Responder {
    store: Store,
    config: ResponderConfig,
    metrics: DhcpMetrics,
    clock: Clock,
    transactions: Transactions,
    templates: OptionTemplates,
    clients: super::flood::ClientLimiter,
    machine_updates: mpsc::Sender<MachineUpdate>,
}

/// What a DHCP exchange taught about a known machine.
#[derive(Debug)]
pub struct MachineUpdate {
    uuid: String,
    revision: u64,
    address: Option<Ipv4Addr>,
    client_guid: Option<String>,
}

/// Everything a reply is built from.
struct Context<'p> {
    packet: &'p Packet,
    subnet: Subnet,
    reservation: Option<Reservation>,
    machine: Option<Machine>,
    /// This node's address on the client's link: server identifier and
    /// next-server.
    server_addr: Ipv4Addr,
    /// The interface to broadcast on for an unrelayed client.
    egress: Option<Egress>,
    firmware: Option<Firmware>,
    bootenv_loader: Option<String>,
}

impl Responder {
    /// The responder and the receiving end of its machine-update queue (for
    /// [`run_machine_updates`]).
    pub fn new(
        store: Store,
        config: ResponderConfig,
        metrics: DhcpMetrics,
        clock: Clock,
    ) -> (Responder, mpsc::Receiver<MachineUpdate>) {
        let (machine_updates, updates) = mpsc::channel(MACHINE_UPDATE_QUEUE);
        // Every refusal the parser can give shows as a zero from the start,
        // so a dashboard sees the series before the first bad packet.
        for reason in super::packet::PacketError::REASONS {
            metrics
                .dropped
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc_by(0);
        }
        (
            Responder {
                store,
                config,
                metrics,
                clock,
                transactions: Transactions::default(),
                templates: OptionTemplates::default(),
                clients: super::flood::ClientLimiter::default(),
                machine_updates,
            },
            updates,
        )
    }

    /// The answer to one datagram, if any. Never panics on any input;
    /// every silence is counted by reason and logged at debug level.
    pub async fn answer(&self, bytes: &[u8], received: &Received, port: Port) -> Option<Outgoing> {
        match self.try_answer(bytes, received, port).await {
            Ok(Some(out)) => Some(out),
            Ok(None) => None,
            Err(Dropped { reason, detail }) => {
                self.metrics.drop(reason);
                tracing::debug!(
                    source = %received.source,
                    reason,
                    detail = %detail,
                    "DHCP request dropped"
                );
                None
            }
        }
    }

    async fn try_answer(
        &self,
        bytes: &[u8],
        received: &Received,
        port: Port,
    ) -> Result<Option<Outgoing>, Dropped> {
        if received.truncated {
            return Err(dropped(
                "oversized",
                "larger than any DHCP packet Cradle reads",
            ));
        }
        let packet = Packet::parse(bytes).map_err(|e| dropped(e.reason(), e.to_string()))?;
        if !matches!(packet.op, super::packet::Op::Request) {
            return Err(dropped("bootreply", "a BOOTREPLY sent to the server"));
        }
        if packet.hops > MAX_HOPS {
            return Err(dropped(
                "too_many_hops",
                format!("relayed {} times", packet.hops),
            ));
        }
        let message = packet
            .message_type()
            .ok_or_else(|| dropped("no_message_type", "BOOTP without DHCP message type"))?;
        self.metrics
            .received
            .get_or_create(&MessageLabel {
                message: message_name(message),
            })
            .inc();
        let relayed = !packet.giaddr.is_unspecified();
        if !relayed && !self.serves_interface(received.ifindex) {
            return Err(dropped(
                "interface_not_served",
                format!("arrived on interface {}", received.ifindex),
            ));
        }
        if matches!(
            message,
            MessageType::Discover
                | MessageType::Request
                | MessageType::Release
                | MessageType::Decline
        ) && !self.clients.allow(packet.hardware_addr())
        {
            return Err(dropped(
                "client_rate_limited",
                "more lease changes than a booting client makes",
            ));
        }
        match message {
            MessageType::Discover | MessageType::Request | MessageType::Inform => {}
            MessageType::Release => return self.release(&packet).await.map(|()| None),
            MessageType::Decline => return self.decline(&packet).await.map(|()| None),
            other => {
                return Err(dropped(
                    "unexpected_message",
                    format!("a {} sent to the server", message_name(other)),
                ))
            }
        }
        let view = self.store.view().map_err(Dropped::from)?;
        let ctx = self.context(&view, &packet, received)?;
        if !ctx.subnet.enabled {
            return Err(dropped("subnet_off", ctx.subnet.name.clone()));
        }
        // A client that picked this node (its server identifier, or a
        // renewal unicast to it) is answered by it, whoever owns it.
        let chosen = packet.server_identifier() == Some(ctx.server_addr)
            || (!relayed && !packet.ciaddr.is_unspecified() && !received.dest_addr.is_broadcast());
        let role = if chosen && message == MessageType::Request {
            Role::Chosen
        } else {
            self.role(&view, &packet, &ctx.subnet.name)?
        };
        let reply = match (port, ctx.subnet.mode, message) {
            (Port::Proxy, _, MessageType::Request | MessageType::Discover)
            | (_, SubnetMode::Proxy, MessageType::Discover) => self.proxy(&ctx, message)?,
            (_, SubnetMode::Proxy, _) => {
                return Err(dropped("proxy_only", "addressing is another server's"))
            }
            (_, _, MessageType::Discover) => self.discover(&view, &ctx).await?,
            (_, _, MessageType::Request) => self.request(&view, &ctx).await?,
            (_, _, MessageType::Inform) => self.reply(&ctx, MessageType::Ack, None, None)?,
            _ => return Ok(None),
        };
        let Some((reply, bytes)) = reply else {
            return Ok(None);
        };
        self.metrics
            .answered
            .get_or_create(&RoleLabel {
                role: role.as_str(),
            })
            .inc();
        self.metrics
            .sent
            .get_or_create(&MessageLabel {
                message: reply.message_type().map(message_name).unwrap_or("unknown"),
            })
            .inc();
        let is_nak = reply.message_type() == Some(MessageType::Nak);
        let dest = match port {
            // The PXE boot server exchange is unicast from an addressed
            // client, answered to where it came from.
            Port::Proxy => received.source,
            // A relay is answered on the port it sent from: 67 for a
            // standard relay agent, its own port for a lab relay on an
            // unprivileged port.
            Port::Dhcp => reply_destination(
                packet.giaddr,
                packet.ciaddr,
                reply.yiaddr,
                packet.broadcast_flag(),
                is_nak,
                received.source.port(),
                self.config.client_port,
            ),
        };
        // A broadcast leaves by the interface the request came in on; a
        // unicast by the route, from the address the client or relay spoke to.
        let egress = if dest.ip().is_broadcast() {
            ctx.egress.or(Some(Egress {
                ifindex: received.ifindex,
                source: ctx.server_addr,
            }))
        } else {
            Some(Egress {
                ifindex: 0,
                source: ctx.server_addr,
            })
        };
        Ok(Some(Outgoing {
            bytes,
            dest,
            egress,
        }))
    }

    fn serves_interface(&self, ifindex: u32) -> bool {
        self.config.interfaces.is_empty()
            || self.config.interfaces.iter().any(|i| i.index == ifindex)
    }

    /// Whether this node answers this client now, and as what. Clients are
    /// shared over the nodes that hear their link: the voters that answered
    /// clients of this subnet through the same relay (or on the segment)
    /// recently, and this node. A relay that sends to one node only makes
    /// that node the only one hearing it, so it answers every client; a
    /// relay that sends to every node has its clients shared. A link with
    /// no record yet counts every voter; a node missing from a link's
    /// records counts itself in (its answers are harmless duplicates until
    /// its first commit records it: both offers commit the same binding).
    fn role(&self, view: &View<'_>, packet: &Packet, subnet: &str) -> Result<Role, Dropped> {
        let me = self.config.node_id;
        let voters: Vec<u64> = self
            .store
            .raft()
            .status()
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let via = (!packet.giaddr.is_unspecified()).then_some(packet.giaddr);
        let since = self.clock.unix_now().saturating_sub(HEARD_MEMORY_SECS);
        let mut nodes: Vec<u64> = view
            .dhcp_nodes_heard(subnet, via, since)
            .map_err(Dropped::from)?
            .into_iter()
            .filter(|n| voters.contains(n))
            .collect();
        if nodes.is_empty() {
            // A link no node has answered on yet: assume every voter hears
            // it (a shared segment, a relay naming every node), so a storm's
            // first clients get one answer each. A relay naming one node
            // costs its first other-owned client one takeover; from that
            // answer on, the record says who hears the link.
            nodes.clone_from(&voters);
        }
        if (voters.contains(&me) || voters.is_empty()) && !nodes.contains(&me) {
            nodes.push(me);
        }
        let hardware = packet.hardware_addr();
        // A node that is no voter (a learner catching up) ranks last.
        let rank = owner::rank_of(hardware, &nodes, me).unwrap_or(nodes.len());
        let seen = self
            .transactions
            .seen(hardware, packet.xid, Instant::now())
            .as_secs();
        let elapsed = u64::from(packet.secs).max(seen);
        owner::decide(rank, elapsed, self.config.takeover_secs).ok_or_else(|| {
            dropped(
                "not_owner",
                format!(
                    "ranked {rank} of {} for this client, trying for {elapsed} s",
                    nodes.len()
                ),
            )
        })
    }

    /// The subnet, this node's address on the client's link, and what the
    /// state knows of the client.
    fn context<'p>(
        &self,
        view: &View<'_>,
        packet: &'p Packet,
        received: &Received,
    ) -> Result<Context<'p>, Dropped> {
        let interface = self
            .config
            .interfaces
            .iter()
            .find(|i| i.index == received.ifindex);
        let local = (!received.local_addr.is_unspecified()).then_some(received.local_addr);
        let (subnet, server_addr, egress) = if !packet.giaddr.is_unspecified() {
            // RFC 3527 link selection, then RFC 3011 subnet selection, then
            // the relay's own address name the client's link.
            let link = packet
                .relay_agent()
                .and_then(|r| r.link_selection)
                .or_else(|| packet.subnet_selection())
                .unwrap_or(packet.giaddr);
            let subnet = view
                .subnet_containing(link)
                .map_err(Dropped::from)?
                .ok_or_else(|| dropped("no_subnet", format!("no subnet contains {link}")))?;
            let server = local
                .or_else(|| interface.and_then(|i| i.addrs.first().map(|a| a.addr())))
                .ok_or_else(|| dropped("no_local_address", "no address to answer from"))?;
            (subnet, server, None)
        } else {
            let Some(interface) = interface else {
                // Only possible with no `--dhcp-interface` list: answer from
                // the address the packet reached, if it names a subnet.
                let at = if !packet.ciaddr.is_unspecified() {
                    packet.ciaddr
                } else {
                    local.ok_or_else(|| dropped("no_local_address", "unknown interface"))?
                };
                let subnet = view
                    .subnet_containing(at)
                    .map_err(Dropped::from)?
                    .ok_or_else(|| dropped("no_subnet", format!("no subnet contains {at}")))?;
                let server = local.unwrap_or(at);
                return self.known(view, packet, subnet, server, None);
            };
            let mut found = None;
            for net in &interface.addrs {
                if let Some(subnet) = view.subnet_for_interface(*net).map_err(Dropped::from)? {
                    found = Some((subnet, net.addr()));
                    break;
                }
            }
            let (subnet, server) = found.ok_or_else(|| {
                dropped(
                    "no_subnet",
                    format!("no subnet for interface {}", interface.name),
                )
            })?;
            let egress = Egress {
                ifindex: interface.index,
                source: server,
            };
            (subnet, server, Some(egress))
        };
        self.known(view, packet, subnet, server_addr, egress)
    }

    fn known<'p>(
        &self,
        view: &View<'_>,
        packet: &'p Packet,
        subnet: Subnet,
        server_addr: Ipv4Addr,
        egress: Option<Egress>,
    ) -> Result<Context<'p>, Dropped> {
        let mac = packet.mac();
        let machine = match mac {
            Some(mac) => view.machine_by_mac(mac).map_err(Dropped::from)?,
            None => None,
        };
        let reservation = match mac {
            Some(mac) => view
                .reservation_by_mac(&subnet.name, mac)
                .map_err(Dropped::from)?,
            None => None,
        };
        let firmware = pxe::classify(
            packet.client_arch(),
            packet.vendor_class(),
            packet.is_ipxe(),
        );
        let mut bootenv_loader = None;
        if let (Some(machine), Some(firmware)) = (&machine, firmware) {
            let prefs = view.prefs().map_err(Dropped::from)?;
            if let Some(bootenv) = view
                .bootenv(machine.bootenv_or_default(&prefs))
                .map_err(Dropped::from)?
            {
                let arch = firmware.arch().unwrap_or(machine.arch);
                bootenv_loader = bootenv.arches.get(&arch).and_then(|a| a.loader.clone());
            }
        }
        Ok(Context {
            packet,
            subnet,
            reservation,
            machine,
            server_addr,
            egress,
            firmware,
            bootenv_loader,
        })
    }

    fn lease_request(&self, ctx: &Context<'_>, requested: Option<Ipv4Addr>) -> LeaseRequest {
        let packet = ctx.packet;
        LeaseRequest {
            subnet: ctx.subnet.name.clone(),
            client_id: hex::encode(packet.client_id()),
            hardware_addr: packet.mac().map(|m| format_mac(&m)).unwrap_or_default(),
            requested,
            now_unix: self.clock.unix_now(),
            node: self.config.node_id,
            via: (!packet.giaddr.is_unspecified()).then_some(packet.giaddr),
            hostname: packet.hostname(),
            offer_secs: OFFER_SECS,
        }
    }

    /// Proposes a lease command and returns the lease it committed.
    async fn commit(&self, command: Command) -> Result<Lease, StoreError> {
        let started = Instant::now();
        let deadline = (tokio::time::Instant::from_std(started) + COMMIT_DEADLINE)
            .min(self.store.write_deadline());
        let done = self.store.submit(command, deadline).await;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let done = done?;
        let object = done
            .object
            .ok_or_else(|| StoreError::Internal("a lease command committed no lease".into()))?;
        serde_json::from_value(object)
            .map_err(|e| StoreError::Internal(format!("the committed lease does not decode: {e}")))
    }

    /// The client's committed, unexpired binding in this subnet (at
    /// `address`, when given), for a node that cannot commit, with the
    /// seconds it has left: the only lease such a node may acknowledge.
    fn committed_binding(
        &self,
        view: &View<'_>,
        ctx: &Context<'_>,
        address: Option<Ipv4Addr>,
    ) -> Option<(Lease, u32)> {
        let client_id = hex::encode(ctx.packet.client_id());
        let now = self.clock.unix_now();
        let lease = view
            .committed_binding(&ctx.subnet.name, &client_id, now)
            .ok()
            .flatten()?;
        if address.is_some_and(|a| a != lease.address) {
            return None;
        }
        let left = u32::try_from(lease.expires_at_unix.saturating_sub(now)).unwrap_or(u32::MAX);
        Some((lease, left))
    }

    fn lease_secs_for(&self, ctx: &Context<'_>, lease: &Lease) -> u32 {
        if ctx
            .reservation
            .as_ref()
            .is_some_and(|r| r.address == lease.address)
        {
            ctx.subnet.reserved_lease_secs
        } else {
            ctx.subnet.lease_secs
        }
    }

    async fn discover(
        &self,
        view: &View<'_>,
        ctx: &Context<'_>,
    ) -> Result<Option<(Packet, Vec<u8>)>, Dropped> {
        let request = self.lease_request(ctx, ctx.packet.requested_address());
        match self.commit(Command::DhcpOffer { request }).await {
            Ok(lease) => {
                let secs = self.lease_secs_for(ctx, &lease);
                self.reply(ctx, MessageType::Offer, Some(lease.address), Some(secs))
            }
            Err(StoreError::Rejected(r)) => Err(dropped(r.code.name(), r.message)),
            Err(e) => match self.committed_binding(view, ctx, None) {
                Some((lease, left)) => {
                    self.reply(ctx, MessageType::Offer, Some(lease.address), Some(left))
                }
                None => Err(Dropped::from(e)),
            },
        }
    }

    async fn request(
        &self,
        view: &View<'_>,
        ctx: &Context<'_>,
    ) -> Result<Option<(Packet, Vec<u8>)>, Dropped> {
        let packet = ctx.packet;
        let address = match (packet.server_identifier(), packet.ciaddr.is_unspecified()) {
            // SELECTING: the client chose an offer.
            (Some(server), _) => {
                let requested = packet.requested_address().ok_or_else(|| {
                    dropped("no_requested_address", "SELECTING without option 50")
                })?;
                if server != ctx.server_addr && !self.offered_by_peer(view, ctx, requested) {
                    return Err(dropped(
                        "other_server",
                        format!("the client chose server {server}"),
                    ));
                }
                requested
            }
            // INIT-REBOOT: the client asks to keep an address it had.
            (None, true) => {
                let requested = packet.requested_address().ok_or_else(|| {
                    dropped("no_requested_address", "INIT-REBOOT without option 50")
                })?;
                if !ctx.subnet.is_host(requested) {
                    // The client moved to another network (§4.3.2).
                    return self.reply(ctx, MessageType::Nak, None, None);
                }
                requested
            }
            // RENEWING (unicast) or REBINDING (broadcast).
            (None, false) => packet.ciaddr,
        };
        let request = self.lease_request(ctx, Some(address));
        match self.commit(Command::DhcpBind { request }).await {
            Ok(lease) => {
                self.note_machine(ctx, lease.address);
                let secs = self.lease_secs_for(ctx, &lease);
                self.reply(ctx, MessageType::Ack, Some(lease.address), Some(secs))
            }
            Err(StoreError::Rejected(r)) => {
                tracing::debug!(client = %hex::encode(packet.client_id()), %address, code = %r.code, "NAK");
                self.reply(ctx, MessageType::Nak, None, None)
            }
            Err(e) => match self.committed_binding(view, ctx, Some(address)) {
                Some((lease, left)) => {
                    self.reply(ctx, MessageType::Ack, Some(lease.address), Some(left))
                }
                None => Err(Dropped::from(e)),
            },
        }
    }

    /// Whether `address` is offered to this client by another node: the
    /// client chose that node's offer, and that node may be gone.
    fn offered_by_peer(&self, view: &View<'_>, ctx: &Context<'_>, address: Ipv4Addr) -> bool {
        let client_id = hex::encode(ctx.packet.client_id());
        matches!(
            view.lease_by_address(address),
            Ok(Some(lease)) if lease.client_id == client_id
                && lease.node.is_some_and(|n| n != self.config.node_id)
        )
    }

    async fn release(&self, packet: &Packet) -> Result<(), Dropped> {
        if packet.ciaddr.is_unspecified() {
            return Err(dropped("no_client_address", "RELEASE without ciaddr"));
        }
        let command = Command::DhcpRelease {
            client_id: hex::encode(packet.client_id()),
            address: packet.ciaddr,
            now_unix: self.clock.unix_now(),
        };
        self.commit_quiet(command).await
    }

    async fn decline(&self, packet: &Packet) -> Result<(), Dropped> {
        let address = packet
            .requested_address()
            .ok_or_else(|| dropped("no_requested_address", "DECLINE without option 50"))?;
        let command = Command::DhcpDecline {
            client_id: hex::encode(packet.client_id()),
            address,
            now_unix: self.clock.unix_now(),
            quarantine_secs: self.config.decline_secs,
        };
        self.commit_quiet(command).await
    }

    /// RELEASE and DECLINE get no reply; a rejection is logged and counted.
    async fn commit_quiet(&self, command: Command) -> Result<(), Dropped> {
        let deadline =
            (tokio::time::Instant::now() + COMMIT_DEADLINE).min(self.store.write_deadline());
        self.store
            .submit(command, deadline)
            .await
            .map(|_| ())
            .map_err(Dropped::from)
    }

    /// proxyDHCP (RFC 4578 usage as in PXE 2.1): boot options only, for a
    /// client another server addresses; on 4011, the boot server's ACK.
    fn proxy(
        &self,
        ctx: &Context<'_>,
        message: MessageType,
    ) -> Result<Option<(Packet, Vec<u8>)>, Dropped> {
        if ctx.firmware.is_none() {
            return Err(dropped(
                "not_pxe",
                "proxyDHCP answers network-boot clients only",
            ));
        }
        let answer = match message {
            MessageType::Discover => MessageType::Offer,
            _ => MessageType::Ack,
        };
        self.reply(ctx, answer, None, None)
    }

    /// Builds and encodes a reply. `address`: yiaddr; `lease_secs`: the
    /// lease time (with T1 and T2) for OFFER and ACK of a lease.
    fn reply(
        &self,
        ctx: &Context<'_>,
        message: MessageType,
        address: Option<Ipv4Addr>,
        lease_secs: Option<u32>,
    ) -> Result<Option<(Packet, Vec<u8>)>, Dropped> {
        let packet = ctx.packet;
        let mut reply = packet.new_reply(message);
        reply.options.set(54, ctx.server_addr.octets().to_vec());
        if message == MessageType::Nak {
            // §4.3.2: a NAK says nothing but who refused.
            reply
                .options
                .set(56, b"requested address not available".to_vec());
            reply.ciaddr = Ipv4Addr::UNSPECIFIED;
            reply.yiaddr = Ipv4Addr::UNSPECIFIED;
            reply.siaddr = Ipv4Addr::UNSPECIFIED;
            if !packet.giaddr.is_unspecified() {
                reply.flags |= 0x8000;
            }
            let bytes = reply
                .encode(MIN_REPLY_BYTES)
                .map_err(|e| dropped("encode_failed", e.to_string()))?;
            return Ok(Some((reply, bytes)));
        }
        if message == MessageType::Ack && address.is_none() {
            // INFORM (§4.3.5), or the PXE boot server's ACK: ciaddr kept.
            reply.ciaddr = packet.ciaddr;
        }
        if let Some(address) = address {
            reply.yiaddr = address;
        }
        reply.siaddr = ctx
            .reservation
            .as_ref()
            .and_then(|r| r.next_server)
            .or(ctx.subnet.next_server)
            .unwrap_or(ctx.server_addr);
        if let Some(secs) = lease_secs {
            reply.options.set(51, secs.to_be_bytes().to_vec());
            reply.options.set(58, (secs / 2).to_be_bytes().to_vec());
            let t2 = u32::try_from(u64::from(secs) * 7 / 8).unwrap_or(u32::MAX);
            reply.options.set(59, t2.to_be_bytes().to_vec());
        }
        let proxy_only = ctx.subnet.mode == SubnetMode::Proxy;
        if !proxy_only {
            let mask = ctx.subnet.cidr.netmask();
            reply.options.set(1, mask.octets().to_vec());
            self.configured_options(ctx, &mut reply);
        }
        self.boot_options(ctx, &mut reply);
        let bytes = reply
            .encode(packet.max_reply_bytes())
            .map_err(|e| dropped("encode_failed", e.to_string()))?;
        Ok(Some((reply, bytes)))
    }

    /// The subnet's options, overridden per code by the reservation's,
    /// rendered for this client; only those the client asked for when it
    /// sent a parameter request list.
    fn configured_options(&self, ctx: &Context<'_>, reply: &mut Packet) {
        let wanted = ctx.packet.parameter_request_list();
        let asked = |code: u8| wanted.is_empty() || wanted.contains(&code);
        let mut options: Vec<&DhcpOption> = ctx.subnet.options.iter().collect();
        if let Some(reservation) = &ctx.reservation {
            for o in &reservation.options {
                options.retain(|p| p.code != o.code);
                options.push(o);
            }
        }
        let mut context = None;
        for option in options {
            if !asked(option.code) || reply.options.get(option.code).is_some() {
                continue;
            }
            let text = if OptionTemplates::is_template(&option.value) {
                let context = context.get_or_insert_with(|| self.template_context(ctx));
                match self.templates.render(&option.value, context) {
                    Ok(text) => text,
                    Err(e) => {
                        tracing::warn!(subnet = %ctx.subnet.name, code = option.code, error = %e, "DHCP option template failed; option left out");
                        continue;
                    }
                }
            } else {
                option.value.clone()
            };
            match values::encode(option.code, &text) {
                Ok(bytes) => reply.options.set(option.code, bytes),
                Err(e) => {
                    tracing::warn!(subnet = %ctx.subnet.name, error = %e, "DHCP option value does not fit its type; option left out")
                }
            }
        }
        if asked(12) && reply.options.get(12).is_none() {
            if let Some(machine) = &ctx.machine {
                reply.options.set(12, machine.name.as_bytes().to_vec());
            }
        }
    }

    fn boot_options(&self, ctx: &Context<'_>, reply: &mut Packet) {
        let Some(firmware) = ctx.firmware else {
            return;
        };
        let http_base = format!("http://{}:{}", ctx.server_addr, self.config.boot_http_port);
        let script = match (&ctx.machine, ctx.packet.mac()) {
            (Some(_), Some(mac)) => format!("{}.ipxe", format_mac(&mac)),
            _ => pxe::DEFAULT_SCRIPT.to_string(),
        };
        let machine_loader = ctx
            .machine
            .as_ref()
            .and_then(|m| m.params.get(MACHINE_LOADER_PARAM))
            .and_then(Value::as_str);
        let subnet_loader = ctx
            .subnet
            .options
            .iter()
            .find(|o| o.code == 67 && !OptionTemplates::is_template(&o.value))
            .map(|o| o.value.as_str());
        let overrides = LoaderOverrides {
            machine: machine_loader,
            bootenv: ctx.bootenv_loader.as_deref(),
            subnet: subnet_loader,
        };
        let file = pxe::boot_file(firmware, overrides, &http_base, &script);
        if file.len() <= MAX_FILE_FIELD {
            reply.file = file.clone().into_bytes();
        }
        let wanted = ctx.packet.parameter_request_list();
        if file.len() > MAX_FILE_FIELD || wanted.contains(&67) {
            reply.options.set(67, file.into_bytes());
        }
        match firmware {
            Firmware::HttpX64 | Firmware::HttpArm64 => {
                reply.options.set(60, b"HTTPClient".to_vec());
            }
            Firmware::Ipxe => {}
            _ => reply.options.set(60, b"PXEClient".to_vec()),
        }
    }

    fn template_context(&self, ctx: &Context<'_>) -> tera::Context {
        let packet = ctx.packet;
        let request = json!({
            "mac": packet.mac().map(|m| format_mac(&m)),
            "client_id": hex::encode(packet.client_id()),
            "hostname": packet.hostname(),
            "arch": packet.client_arch(),
            "vendor_class": packet.vendor_class().map(|v| String::from_utf8_lossy(v).into_owned()),
            "user_class": packet.user_class().map(|v| String::from_utf8_lossy(v).into_owned()),
            "giaddr": (!packet.giaddr.is_unspecified()).then(|| packet.giaddr.to_string()),
        });
        let machine = ctx
            .machine
            .as_ref()
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(Value::Null);
        let mut context = tera::Context::new();
        context.insert("request", &request);
        context.insert("machine", &machine);
        context.insert("subnet", &ctx.subnet.name);
        context.insert(
            "node",
            &json!({ "address": ctx.server_addr.to_string(), "id": self.config.node_id }),
        );
        context
    }

    /// Queues an update of a known machine's address and client GUID, off
    /// the reply's path.
    fn note_machine(&self, ctx: &Context<'_>, address: Ipv4Addr) {
        let Some(machine) = &ctx.machine else {
            return;
        };
        let guid = ctx.packet.client_uuid_smbios().map(|g| g.to_string());
        let address_changed = machine.address != Some(address);
        let guid_changed = guid.is_some() && machine.meta.get(CLIENT_GUID_META) != guid.as_ref();
        if !address_changed && !guid_changed {
            return;
        }
        let update = MachineUpdate {
            uuid: machine.uuid.to_string(),
            revision: machine.revision,
            address: address_changed.then_some(address),
            client_guid: if guid_changed { guid } else { None },
        };
        // Full: the machine's next request tries again.
        let _ = self.machine_updates.try_send(update);
    }
}

/// The machine param naming a loader for that machine alone.
pub const MACHINE_LOADER_PARAM: &str = "pxe-loader";
/// Where a machine's DHCP client GUID (option 97) is recorded.
pub const CLIENT_GUID_META: &str = "client_guid";

/// Writes queued machine updates, one at a time, until shutdown. A machine
/// changed meanwhile (revision moved) is skipped: its next request brings
/// the update again.
pub async fn run_machine_updates(
    store: Store,
    mut updates: mpsc::Receiver<MachineUpdate>,
    mut shutdown: Shutdown,
) {
    loop {
        let update = tokio::select! {
            _ = shutdown.requested() => return,
            update = updates.recv() => match update {
                Some(update) => update,
                None => return,
            },
        };
        let mut ops = Vec::new();
        if let Some(address) = update.address {
            ops.push(json!({"op": "add", "path": "/address", "value": address.to_string()}));
        }
        if let Some(guid) = &update.client_guid {
            ops.push(
                json!({"op": "add", "path": format!("/meta/{CLIENT_GUID_META}"), "value": guid}),
            );
        }
        let Ok(patch) = serde_json::from_value::<json_patch::Patch>(Value::Array(ops)) else {
            continue;
        };
        let command = Command::Patch {
            kind: ObjectKind::Machines,
            key: update.uuid.clone(),
            patch,
            if_match: Some(update.revision),
        };
        if let Err(e) = store.submit(command, store.write_deadline()).await {
            tracing::debug!(machine = %update.uuid, error = %e, "machine address/GUID from DHCP not recorded");
        }
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn message_name(message: MessageType) -> &'static str {
    message.name()
}

/// One DHCP socket served: datagrams handed to the [`Responder`] on tasks
/// of their own, at most `limit` at once (more are dropped: clients
/// retransmit), replies sent from the interface the request came in on.
pub struct DhcpService {
    name: &'static str,
    socket: Arc<DhcpSocket>,
    responder: Arc<Responder>,
    port: Port,
    limit: Limit,
    drain: Duration,
    metrics: DhcpMetrics,
}

impl DhcpService {
    pub fn new(
        name: &'static str,
        socket: DhcpSocket,
        responder: Arc<Responder>,
        port: Port,
        limit: Limit,
        drain: Duration,
        metrics: DhcpMetrics,
    ) -> Self {
        DhcpService {
            name,
            socket: Arc::new(socket),
            responder,
            port,
            limit,
            drain,
            metrics,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Service for DhcpService {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(self, mut shutdown: Shutdown) -> Result<(), ServiceError> {
        let mut in_flight = JoinSet::new();
        let mut buf = vec![0u8; super::packet::MAX_PACKET_BYTES + 1];
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                received = self.socket.recv(&mut buf) => {
                    let received = match received {
                        Ok(received) => received,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let Some(permit) = self.limit.try_acquire() else {
                        self.metrics.drop("overloaded");
                        continue;
                    };
                    let packet = buf[..received.len.min(buf.len())].to_vec();
                    let (socket, responder, port) = (self.socket.clone(), self.responder.clone(), self.port);
                    let metrics = self.metrics.clone();
                    in_flight.spawn(async move {
                        if let Some(out) = responder.answer(&packet, &received, port).await {
                            if let Err(e) = socket.send(&out.bytes, out.dest, out.egress).await {
                                metrics.drop("send_failed");
                                tracing::debug!(dest = %out.dest, error = %e, "DHCP reply not sent");
                            }
                        }
                        drop(permit);
                    });
                }
            }
        }
        let drained = tokio::time::timeout(self.drain, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            in_flight.shutdown().await;
        }
        Ok(())
    }
}
