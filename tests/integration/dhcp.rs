//! DHCP on loopback: a test relay (the way a relay agent or perfdhcp talks
//! to Cradle) sends requests to nodes' DHCP ports and judges what came
//! back. Broadcast clients on a shared segment are in `chaos/`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cradle::dhcp::packet::{MessageType, Op, Options, Packet};
use serde_json::json;
use tokio::net::UdpSocket;

use crate::common::{free_port, Client, InProcess};

/// The relay's own address (giaddr): replies come back to it.
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);
/// The link the relayed clients are on, named by option 82 link selection.
const LINK: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 1);

pub struct Relay {
    socket: UdpSocket,
}

impl Relay {
    /// A relay listening where nodes on `port` send replies to relays.
    pub async fn bind(port: u16) -> Relay {
        Self::bind_at(RELAY, port).await
    }

    pub async fn bind_at(address: Ipv4Addr, port: u16) -> Relay {
        Relay {
            socket: UdpSocket::bind((address, port)).await.expect("relay binds"),
        }
    }

    pub async fn send(&self, packet: &Packet, to: SocketAddr) {
        let bytes = packet.encode(576).expect("test packet encodes");
        self.socket.send_to(&bytes, to).await.expect("relay sends");
    }

    pub async fn send_raw(&self, bytes: &[u8], to: SocketAddr) {
        self.socket.send_to(bytes, to).await.expect("relay sends");
    }

    /// Every reply to `xid` arriving within `window`, with who sent it.
    pub async fn replies(&self, xid: u32, window: Duration) -> Vec<(SocketAddr, Packet)> {
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + window;
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((len, from))) =
            tokio::time::timeout_at(until, self.socket.recv_from(&mut buf)).await
        {
            let reply = Packet::parse(&buf[..len]).expect("the server's reply parses");
            if reply.xid == xid {
                out.push((from, reply));
            }
        }
        out
    }

    /// The first reply to `xid` within `wait`.
    pub async fn reply(&self, xid: u32, wait: Duration) -> Option<Packet> {
        let until = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(until, self.socket.recv_from(&mut buf)).await
        {
            let reply = Packet::parse(&buf[..len]).expect("the server's reply parses");
            if reply.xid == xid {
                return Some(reply);
            }
        }
        None
    }
}

pub fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x52, 0x54, b[0], b[1], b[2], b[3]]
}

/// A relayed client request, as a relay agent forwards it.
pub fn request(message: MessageType, mac: [u8; 6], xid: u32) -> Packet {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac);
    let mut options = Options::default();
    options.set(53, vec![message as u8]);
    options.set(55, vec![1, 3, 6, 12, 15, 51, 54, 58, 59]);
    // Relay agent information: link selection (RFC 3527 sub-option 5).
    let mut agent = vec![1, 4, b'p', b'o', b'r', b't'];
    agent.extend([5, 4]);
    agent.extend(LINK.octets());
    options.set(82, agent);
    Packet {
        op: Op::Request,
        htype: 1,
        hlen: 6,
        hops: 1,
        xid,
        secs: 0,
        flags: 0,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: RELAY,
        chaddr,
        sname: Vec::new(),
        file: Vec::new(),
        options,
    }
}

pub fn selecting(offer: &Packet, mac: [u8; 6], xid: u32) -> Packet {
    let mut p = request(MessageType::Request, mac, xid);
    p.options.set(50, offer.yiaddr.octets().to_vec());
    p.options.set(
        54,
        offer
            .server_identifier()
            .expect("offer names its server")
            .octets()
            .to_vec(),
    );
    p
}

pub async fn create_subnet(api: &Client) {
    api.post(
        "/api/v1/subnets",
        json!({
            "name": "lab",
            "cidr": "198.18.4.0/22",
            "pools": [{"start": "198.18.4.100", "end": "198.18.4.199"}],
            "lease_secs": 600,
            "options": [
                {"code": 3, "value": "198.18.4.1"},
                {"code": 6, "value": "198.18.4.2, 198.18.4.3"},
                {"code": 15, "value": "lab.test"},
                {"code": 12, "value": "host-{{ request.mac | replace(from=\":\", to=\"\") }}"}
            ]
        }),
    )
    .await
    .expect(201);
}

async fn node_with_dhcp() -> (InProcess, SocketAddr, Relay) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = InProcess::start_with(&[
        "--dhcp-listen",
        &listen,
        "--proxy-dhcp-listen",
        "127.0.0.1:0",
    ])
    .await;
    let relay = Relay::bind(port).await;
    create_subnet(&node.client).await;
    (node, listen.parse().unwrap(), relay)
}

/// DISCOVER → OFFER → REQUEST → ACK through a relay; the lease is in the
/// state when the ACK arrives, with the options the subnet configures.
#[tokio::test]
async fn a_relayed_client_gets_a_committed_lease() {
    let (node, server, relay) = node_with_dhcp().await;
    let mac = mac(1);
    relay
        .send(&request(MessageType::Discover, mac, 0x1001), server)
        .await;
    let offer = relay
        .reply(0x1001, Duration::from_secs(5))
        .await
        .expect("an OFFER");
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!(offer.giaddr, RELAY);
    let address = offer.yiaddr;
    assert!(
        (Ipv4Addr::new(198, 18, 4, 100)..=Ipv4Addr::new(198, 18, 4, 199)).contains(&address),
        "{address}"
    );
    assert_eq!(offer.server_identifier(), Some(Ipv4Addr::LOCALHOST));
    // Option 82 comes back to the relay unchanged.
    assert_eq!(
        offer.options.get(82),
        request(MessageType::Discover, mac, 1).options.get(82)
    );

    relay.send(&selecting(&offer, mac, 0x1002), server).await;
    let ack = relay
        .reply(0x1002, Duration::from_secs(5))
        .await
        .expect("an ACK");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, address);
    assert_eq!(ack.options.get(51), Some(&600u32.to_be_bytes()[..]));
    assert_eq!(ack.options.get(58), Some(&300u32.to_be_bytes()[..]));
    assert_eq!(ack.options.get(59), Some(&525u32.to_be_bytes()[..]));
    assert_eq!(ack.options.get(1), Some(&[255, 255, 252, 0][..]));
    assert_eq!(ack.options.get(3), Some(&[198, 18, 4, 1][..]));
    assert_eq!(
        ack.options.get(6),
        Some(&[198, 18, 4, 2, 198, 18, 4, 3][..])
    );
    assert_eq!(ack.options.get(15), Some(&b"lab.test"[..]));
    assert_eq!(ack.options.get(12), Some(&b"host-525400000001"[..]));

    // Committed before the ACK: this node's own state has it bound now.
    let lease = node
        .client
        .get(&format!("/api/v1/leases/{address}"))
        .await
        .expect(200);
    assert_eq!(lease.body["state"], "bound");
    assert_eq!(lease.body["hardware_addr"], "52:54:00:00:00:01");

    // The same client asking again keeps its address; another client gets
    // another one.
    relay
        .send(&request(MessageType::Discover, mac, 0x1003), server)
        .await;
    let again = relay.reply(0x1003, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.yiaddr, address);
    relay
        .send(
            &request(MessageType::Discover, self::mac(2), 0x2001),
            server,
        )
        .await;
    let other = relay.reply(0x2001, Duration::from_secs(5)).await.unwrap();
    assert_ne!(other.yiaddr, address);
    node.running.shutdown().await;
}

/// A REQUEST for an address bound to another client is NAKed, and the
/// other client keeps it.
#[tokio::test]
async fn a_request_for_someone_elses_address_is_naked() {
    let (node, server, relay) = node_with_dhcp().await;
    relay
        .send(&request(MessageType::Discover, mac(1), 1), server)
        .await;
    let offer = relay.reply(1, Duration::from_secs(5)).await.unwrap();
    relay.send(&selecting(&offer, mac(1), 2), server).await;
    let ack = relay.reply(2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));

    // INIT-REBOOT by another client for the same address.
    let mut thief = request(MessageType::Request, mac(9), 3);
    thief.options.set(50, ack.yiaddr.octets().to_vec());
    relay.send(&thief, server).await;
    let nak = relay.reply(3, Duration::from_secs(5)).await.unwrap();
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
    let lease = node
        .client
        .get(&format!("/api/v1/leases/{}", ack.yiaddr))
        .await
        .expect(200);
    assert_eq!(lease.body["hardware_addr"], "52:54:00:00:00:01");
    node.running.shutdown().await;
}

/// Garbage gets no answer, changes nothing, and is counted by reason.
#[tokio::test]
async fn garbage_is_dropped_and_counted() {
    let (node, server, relay) = node_with_dhcp().await;
    let revision = node.client.get("/api/v1/status").await.expect(200).body["revision"].clone();
    let valid = request(MessageType::Discover, mac(3), 77)
        .encode(576)
        .unwrap();
    let mut overrun = valid.clone();
    // The first option's length now runs past the end of the packet.
    overrun[241] = 250;
    overrun.truncate(260);
    let mut reply = valid.clone();
    reply[0] = 2; // a BOOTREPLY sent to the server
    for bytes in [
        vec![],
        vec![1u8; 100],
        valid[..239].to_vec(),
        overrun,
        reply,
        vec![0u8; 4000],
    ] {
        relay.send_raw(&bytes, server).await;
    }
    assert!(relay
        .replies(77, Duration::from_millis(800))
        .await
        .is_empty());
    let after = node.client.get("/api/v1/status").await.expect(200).body["revision"].clone();
    assert_eq!(revision, after, "garbage changed the state");
    let metrics = node
        .client
        .http
        .get(node.client.url("/metrics"))
        .bearer_auth(node.client.token.as_deref().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["truncated", "bootreply", "oversized"] {
        assert!(
            metrics.contains(&format!("cradle_dhcp_dropped_total{{reason=\"{reason}\"}}")),
            "no {reason} drops in\n{metrics}"
        );
    }
    node.running.shutdown().await;
}

/// Released addresses are free again; the lease record says so.
#[tokio::test]
async fn a_release_frees_the_address() {
    let (node, server, relay) = node_with_dhcp().await;
    relay
        .send(&request(MessageType::Discover, mac(4), 10), server)
        .await;
    let offer = relay.reply(10, Duration::from_secs(5)).await.unwrap();
    relay.send(&selecting(&offer, mac(4), 11), server).await;
    let ack = relay.reply(11, Duration::from_secs(5)).await.unwrap();
    let mut release = request(MessageType::Release, mac(4), 12);
    release.ciaddr = ack.yiaddr;
    release
        .options
        .set(54, offer.server_identifier().unwrap().octets().to_vec());
    relay.send(&release, server).await;
    let path = format!("/api/v1/leases/{}", ack.yiaddr);
    let mut state = String::new();
    for _ in 0..50 {
        let reply = node.client.get(&path).await;
        state = reply.body["state"].as_str().unwrap_or("gone").to_string();
        if state != "bound" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(state, "bound", "the release was not applied");
    node.running.shutdown().await;
}

/// A 3-node cluster whose nodes serve DHCP on `port` of their own loopback
/// addresses, with the lab subnet, and a relay that talks to all of them.
async fn cluster_with_dhcp() -> (crate::cluster_harness::Cluster, Vec<SocketAddr>, Relay) {
    let port = free_port();
    let options = cradle::testkit::Options {
        dhcp_port: Some(port),
        log: "warn,cradle::dhcp=debug".into(),
        ..Default::default()
    };
    let cluster = crate::cluster_harness::Cluster::start_with(3, options).await;
    create_subnet(&cluster.client(0)).await;
    cluster.wait_converged(Duration::from_secs(20)).await;
    let servers: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .map(|n| SocketAddr::from((n.ip, port)))
        .collect();
    let relay = Relay::bind(port).await;
    // Lease commands need every node to have registered the log format
    // that carries them, which joined nodes do just after they start; and
    // until each node has answered once on this link, each counts only
    // itself and answers (a harmless duplicate). A client retransmits until
    // one node alone answers.
    let mut settled = false;
    let mut answered_by = std::collections::BTreeSet::new();
    for attempt in 0..60u32 {
        let xid = 0x0900_0000 + attempt;
        let discover = request(MessageType::Discover, mac(0xff00 + attempt), xid);
        for server in &servers {
            relay.send(&discover, *server).await;
        }
        let replies = relay.replies(xid, Duration::from_millis(500)).await;
        answered_by.extend(replies.iter().map(|(from, _)| from.ip()));
        // Every node has answered once (so the records name all three),
        // and one alone answers now.
        if answered_by.len() == servers.len() && replies.len() == 1 {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "the cluster never settled on one answer per client"
    );
    (cluster, servers, relay)
}

/// Every node hears the same relayed DISCOVER (a relay configured with
/// every node's address): exactly one answers, and the lease is committed
/// on every node. With the owner killed, the client's retransmission is
/// answered by the next node once the client has been trying for the
/// takeover time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_answers_and_another_takes_over_when_it_dies() {
    let (mut cluster, servers, relay) = cluster_with_dhcp().await;
    let mut owners = std::collections::BTreeMap::new();
    for i in 0..12u32 {
        let xid = 0x3000 + i;
        let discover = request(MessageType::Discover, mac(100 + i), xid);
        for server in &servers {
            relay.send(&discover, *server).await;
        }
        let replies = relay.replies(xid, Duration::from_millis(800)).await;
        if replies.len() != 1 {
            for node in &cluster.nodes {
                eprintln!("{}", node.log_tail());
            }
        }
        assert_eq!(replies.len(), 1, "client {i}: {replies:?}");
        let (from, offer) = &replies[0];
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        *owners.entry(from.ip()).or_insert(0) += 1;
    }
    // Clients spread over the nodes.
    assert!(owners.len() >= 2, "{owners:?}");

    // A relay configured with one node's address only: that node hears
    // the link alone, so it answers every client.
    let lone_relay_addr = Ipv4Addr::new(127, 0, 0, 61);
    let lone = Relay::bind_at(lone_relay_addr, servers[1].port()).await;
    // Its first client the node does not own is answered by takeover, as
    // a retransmitting client would be; from then on the record says node
    // 2 alone hears this relay.
    let mut first = request(MessageType::Discover, mac(299), 0x4fff);
    first.giaddr = lone_relay_addr;
    first.secs = 8;
    lone.send(&first, servers[1]).await;
    assert!(lone.reply(0x4fff, Duration::from_secs(5)).await.is_some());
    for i in 0..10u32 {
        let xid = 0x5000 + i;
        let mut discover = request(MessageType::Discover, mac(300 + i), xid);
        discover.giaddr = lone_relay_addr;
        lone.send(&discover, servers[1]).await;
        let replies = lone.replies(xid, Duration::from_millis(800)).await;
        assert_eq!(replies.len(), 1, "lone relay, client {i}: {replies:?}");
    }

    // The owner of one client dies; its retransmission (secs counting up,
    // as clients do) is answered by another node.
    let client = mac(200);
    let discover = request(MessageType::Discover, client, 0x4000);
    for server in &servers {
        relay.send(&discover, *server).await;
    }
    let (owner_addr, _) = relay
        .replies(0x4000, Duration::from_millis(1_500))
        .await
        .into_iter()
        .next()
        .expect("the owner answers");
    let owner = servers
        .iter()
        .position(|s| s.ip() == owner_addr.ip())
        .unwrap();
    cluster.kill(owner);
    let mut retransmit = request(MessageType::Discover, client, 0x4001);
    retransmit.secs = 4;
    for (i, server) in servers.iter().enumerate() {
        if i != owner {
            relay.send(&retransmit, *server).await;
        }
    }
    let replies = relay.replies(0x4001, Duration::from_secs(8)).await;
    assert_eq!(replies.len(), 1, "one takeover answer: {replies:?}");
    let (from, offer) = &replies[0];
    assert_ne!(from.ip(), owner_addr.ip());
    relay.send(&selecting(offer, client, 0x4002), *from).await;
    let ack = relay
        .reply(0x4002, Duration::from_secs(8))
        .await
        .expect("an ACK from the node that took over");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    // Once the leader sees the dead node silent, the clients it owned are
    // shared among the survivors at once: a client it owned, asking for
    // the first time (secs 0, no retransmission), gets one answer.
    let dead = cluster.nodes[owner].id.expect("a started node has an id");
    let ids: Vec<u64> = cluster.nodes.iter().filter_map(|n| n.id).collect();
    let orphan = (1_000..5_000u32)
        .map(mac)
        .find(|m| cradle::dhcp::owner::rank_of(m, &ids, dead) == Some(0))
        .expect("some client hashes to the dead node");
    let mut answered = Vec::new();
    for attempt in 0..12u32 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let xid = 0x6000 + attempt;
        let discover = request(MessageType::Discover, orphan, xid);
        for (i, server) in servers.iter().enumerate() {
            if i != owner {
                relay.send(&discover, *server).await;
            }
        }
        answered = relay.replies(xid, Duration::from_millis(400)).await;
        if !answered.is_empty() {
            break;
        }
    }
    assert_eq!(answered.len(), 1, "the dead node's client: {answered:?}");

    // The acknowledged lease is on every surviving node.
    for i in cluster.running() {
        let path = format!("/api/v1/leases/{}", ack.yiaddr);
        let mut state = serde_json::Value::Null;
        for _ in 0..50 {
            state = cluster.client(i).get(&path).await.body["state"].clone();
            if state == "bound" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(state, "bound", "node {i} lacks the acknowledged lease");
    }
}

/// A client flooding DISCOVERs gets a few answers, then none, and cannot
/// fill the log; another client is served meanwhile.
#[tokio::test]
async fn a_flooding_client_is_held_back() {
    let (node, server, relay) = node_with_dhcp().await;
    let before = node.client.get("/api/v1/status").await.expect(200).body["last_log_index"]
        .as_u64()
        .unwrap();
    for i in 0..60u32 {
        relay
            .send(&request(MessageType::Discover, mac(7), 0x7000 + i), server)
            .await;
    }
    let mut answered = 0;
    for i in 0..60u32 {
        if relay
            .reply(0x7000 + i, Duration::from_millis(50))
            .await
            .is_some()
        {
            answered += 1;
        }
    }
    assert!(
        answered <= 20,
        "{answered} of 60 flooded DISCOVERs answered"
    );
    let after = node.client.get("/api/v1/status").await.expect(200).body["last_log_index"]
        .as_u64()
        .unwrap();
    assert!(
        after - before <= 25,
        "the flood wrote {} log entries",
        after - before
    );
    relay
        .send(&request(MessageType::Discover, mac(8), 0x8000), server)
        .await;
    assert!(relay.reply(0x8000, Duration::from_secs(5)).await.is_some());
    node.running.shutdown().await;
}

/// The request handler under garbage: thousands of mutations of real
/// clients' packets (the captures in `tests/data/dhcp`), some relayed to a
/// subnet, through the node's DHCP socket. The node never stops answering
/// valid clients, every reply it sends parses, and it answers nothing that
/// does not parse.
#[tokio::test]
async fn mutated_client_packets_never_break_the_handler() {
    let (node, server, relay) = node_with_dhcp().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dhcp");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(seeds.len() >= 8, "captures missing in {}", dir.display());
    // Relayed to the lab subnet, so mutations reach allocation too.
    for seed in seeds.clone() {
        if let Ok(mut p) = Packet::parse(&seed) {
            p.giaddr = RELAY;
            let link = request(MessageType::Discover, mac(1), 1);
            p.options.set(82, link.options.get(82).unwrap().to_vec());
            seeds.push(p.encode(576).unwrap());
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sent = 0;
    for round in 0..3_000u32 {
        let mut bytes = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                0 => bytes[at] = next() as u8,
                1 => bytes[at] ^= 1 << (next() % 8),
                2 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at, next() as u8),
            }
        }
        // Replies go to giaddr: keep it the test relay's, so that nothing
        // leaves loopback.
        if bytes.len() >= 28 {
            bytes[24..28].copy_from_slice(&RELAY.octets());
        }
        relay.send_raw(&bytes, server).await;
        sent += 1;
        if round % 500 == 0 {
            // Pace the flood a little, as the drop-on-overload cap would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Whatever came back parses (Relay::replies parses every datagram).
    let _ = relay.replies(0, Duration::from_millis(500)).await;
    // A real client is still served.
    relay
        .send(&request(MessageType::Discover, mac(4242), 0x4242), server)
        .await;
    let offer = relay
        .reply(0x4242, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer after {sent} mutated packets"));
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    node.client.get("/api/v1/status").await.expect(200);
    node.running.shutdown().await;
}

/// A known machine's DHCP exchange records its address and its client GUID
/// (option 97, read as the SMBIOS UUID) on the machine, and its name is the
/// hostname it gets when it asks for option 12.
#[tokio::test]
async fn a_known_machine_learns_its_address_and_guid() {
    let (node, server, relay) = node_with_dhcp().await;
    let created = node
        .client
        .post(
            "/api/v1/machines",
            serde_json::json!({"name": "web-7", "hardware_addrs": ["52:54:00:00:00:77"]}),
        )
        .await
        .expect(201);
    let uuid = created.body["uuid"].as_str().unwrap().to_string();
    let client = [0x52, 0x54, 0, 0, 0, 0x77];
    let mut discover = request(MessageType::Discover, client, 0x7700);
    let mut guid = vec![0u8];
    guid.extend(1..=16u8);
    discover.options.set(97, guid.clone());
    relay.send(&discover, server).await;
    let offer = relay.reply(0x7700, Duration::from_secs(5)).await.unwrap();
    let mut select = selecting(&offer, client, 0x7701);
    select.options.set(97, guid);
    relay.send(&select, server).await;
    let ack = relay.reply(0x7701, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    // The subnet's option 12 template names the MAC; the machine's own
    // name would be given where the subnet sets none.
    assert_eq!(ack.options.get(12), Some(&b"host-525400000077"[..]));
    let path = format!("/api/v1/machines/{uuid}");
    let mut machine = serde_json::Value::Null;
    for _ in 0..50 {
        machine = node.client.get(&path).await.expect(200).body;
        if machine["address"] == ack.yiaddr.to_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(machine["address"], ack.yiaddr.to_string(), "{machine}");
    // Option 97's first three fields are little-endian on the wire.
    assert_eq!(
        machine["meta"]["client_guid"], "04030201-0605-0807-090a-0b0c0d0e0f10",
        "{machine}"
    );
    node.running.shutdown().await;
}
