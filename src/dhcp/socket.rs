//! The DHCP socket: one UDP socket on which every packet arrives with its
//! ingress interface and destination address (IP_PKTINFO), and from which a
//! reply leaves on a chosen interface with a chosen source address, to a
//! unicast or the limited broadcast address. Also where a reply goes
//! ([`reply_destination`], RFC 2131 §4.1).
//!
//! Everything goes through nix's safe wrappers (`recvmsg`/`sendmsg` with
//! control messages, `setsockopt`), driven by tokio's readiness on the
//! socket, so the crate stays free of `unsafe`.
//!
//! # One node per port
//!
//! The socket does not set SO_REUSEADDR. On Linux that option lets another
//! socket that also sets it bind the very same address and port; the kernel
//! then hands each unicast datagram to one of them only, so a second
//! `cradle` (or another DHCP server) on the host would silently take part of
//! the traffic. Without it, the second bind fails with "Address already in
//! use" and the operator hears about it. The price: `0.0.0.0:67` cannot be bound
//! while another server holds port 67 on one address (libvirt's dnsmasq on
//! a bridge); name the addresses apart or stop the other server, which would
//! answer the same broadcasts anyway.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::service::BindError;

/// One received datagram: how much of it is in the buffer and where it came
/// from and went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written to the buffer (at most its length).
    pub len: usize,
    /// The datagram was larger than the buffer and was cut: drop it (a
    /// buffer of `MAX_PACKET_BYTES + 1` tells an oversized packet apart).
    pub truncated: bool,
    pub source: SocketAddrV4,
    /// The ingress interface (0 if the kernel gave no IP_PKTINFO, which it
    /// does not do on a socket made here).
    pub ifindex: u32,
    /// The local address the packet counts as sent to (`ipi_spec_dst`): the
    /// destination for a unicast packet, the ingress interface's primary
    /// address for a broadcast; the natural source of the reply.
    pub local_addr: Ipv4Addr,
    /// The destination in the IP header (`ipi_addr`): 255.255.255.255 for
    /// a broadcast DISCOVER, the node's address for a relayed or renewing
    /// request.
    pub dest_addr: Ipv4Addr,
}

/// Where a reply leaves from (IP_PKTINFO on `sendmsg`): an interface and
/// the node's address there.
///
/// A broadcast needs the interface the request came in on
/// ([`Received::ifindex`]), or it leaves by the default route's interface.
/// A unicast (to a relay or to `ciaddr`) is better left to the routing
/// table (`ifindex` 0), since the way back may differ from the way in; its
/// source should still be [`Received::local_addr`], the address the client
/// or relay spoke to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    /// 0 lets the routing table choose the interface.
    pub ifindex: u32,
    /// 0.0.0.0 lets the kernel choose the interface's address.
    pub source: Ipv4Addr,
}

/// A UDP socket for DHCP or proxyDHCP, with SO_BROADCAST and IP_PKTINFO
/// set, driven by tokio. Receives and sends may run from several tasks at
/// once.
#[derive(Debug)]
pub struct DhcpSocket {
    io: UdpSocket,
}

impl DhcpSocket {
    /// Takes a bound IPv4 UDP socket and sets SO_BROADCAST and IP_PKTINFO
    /// on it. Must be called inside a tokio runtime.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<DhcpSocket> {
        if !socket.local_addr()?.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "DHCPv4 needs an IPv4 socket",
            ));
        }
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::Broadcast, &true)?;
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
        Ok(DhcpSocket {
            io: UdpSocket::from_std(socket)?,
        })
    }

    /// Binds `addr` for `service` ("DHCP", "proxyDHCP"), without
    /// SO_REUSEADDR (see the module doc). Fails like
    /// [`crate::service::bind_udp`]; [`lacks_privilege`] tells a port the
    /// process may not bind from other failures.
    pub async fn bind(service: &'static str, addr: SocketAddr) -> Result<DhcpSocket, BindError> {
        let fail = |source| BindError {
            service,
            addr,
            source,
        };
        let SocketAddr::V4(v4) = addr else {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "DHCPv4 listens on an IPv4 address",
            )));
        };
        open(v4, false).and_then(DhcpSocket::from_std).map_err(fail)
    }

    /// Waits for the next datagram and copies it into `buf`. Cancel-safe:
    /// nothing is read until the datagram is returned, so it can race a
    /// shutdown signal in `select!`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let fd = self.io.as_raw_fd();
        self.io
            .async_io(Interest::READABLE, || recv_now(fd, buf))
            .await
    }

    /// Sends one datagram to `dest` (which may be 255.255.255.255), leaving
    /// by `out` when given.
    pub async fn send(
        &self,
        bytes: &[u8],
        dest: SocketAddrV4,
        out: Option<Egress>,
    ) -> io::Result<usize> {
        let info = out.map(pktinfo).transpose()?;
        let fd = self.io.as_raw_fd();
        self.io
            .async_io(Interest::WRITABLE, || {
                send_now(fd, bytes, dest, info.as_ref())
            })
            .await
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// A nonblocking, close-on-exec IPv4 UDP socket bound to `addr`.
fn open(addr: SocketAddrV4, reuse_addr: bool) -> io::Result<std::net::UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    )?;
    if reuse_addr {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let capacity = buf.len();
    let mut iov = [IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(libc::in_pktinfo);
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut control), MsgFlags::empty())?;
    let mut info = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4PacketInfo(pktinfo) = cmsg {
            info = Some(pktinfo);
        }
    }
    let source = msg
        .address
        .map(SocketAddrV4::from)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a datagram without a source"))?;
    let addr = |a: libc::in_addr| Ipv4Addr::from(a.s_addr.to_ne_bytes());
    Ok(Received {
        len: msg.bytes.min(capacity),
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        source,
        ifindex: info.map_or(0, |i| u32::try_from(i.ipi_ifindex).unwrap_or(0)),
        local_addr: info.map_or(Ipv4Addr::UNSPECIFIED, |i| addr(i.ipi_spec_dst)),
        dest_addr: info.map_or(Ipv4Addr::UNSPECIFIED, |i| addr(i.ipi_addr)),
    })
}

fn pktinfo(out: Egress) -> io::Result<libc::in_pktinfo> {
    let ifindex = i32::try_from(out.ifindex).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no interface has index {}", out.ifindex),
        )
    })?;
    let addr = |a: Ipv4Addr| libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    };
    Ok(libc::in_pktinfo {
        ipi_ifindex: ifindex,
        ipi_spec_dst: addr(out.source),
        ipi_addr: addr(Ipv4Addr::UNSPECIFIED),
    })
}

fn send_now(
    fd: RawFd,
    bytes: &[u8],
    dest: SocketAddrV4,
    info: Option<&libc::in_pktinfo>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let one;
    let cmsgs: &[ControlMessage] = match info {
        Some(info) => {
            one = [ControlMessage::Ipv4PacketInfo(info)];
            &one
        }
        None => &[],
    };
    let sent = sendmsg(
        fd,
        &iov,
        cmsgs,
        MsgFlags::empty(),
        Some(&SockaddrIn::from(dest)),
    )?;
    Ok(sent)
}

/// Whether `err` is a bind refused for lack of privilege: EACCES, which
/// `bind` returns for a port below the kernel's
/// `net.ipv4.ip_unprivileged_port_start` (1024 by default, so DHCP's 67)
/// without CAP_NET_BIND_SERVICE. The port is not compared with 1024, since
/// that threshold is a setting; a security module's veto, the only other
/// EACCES, wants the same advice.
///
/// `server::start` then logs one line and runs the node without DHCP, so
/// that a first try as a normal user works:
///
/// ```text
/// DHCP needs port 67: run as root or with CAP_NET_BIND_SERVICE, or pass
/// --dhcp-listen 0.0.0.0:1067 --dhcp-client-port 1068 for a lab; DHCP is off
/// on this node
/// ```
///
/// (one line, with the refused address's port in place of 67).
pub fn lacks_privilege(err: &BindError) -> bool {
    err.source.kind() == io::ErrorKind::PermissionDenied
}

/// Where a reply goes, by RFC 2131 §4.1 (and §4.3.2 for DHCPNAK):
///
/// 1. `giaddr` set: to the relay, `giaddr:server_port` (67): the relay
///    delivers it (and for a NAK the handler sets the broadcast bit so the
///    relay broadcasts it).
/// 2. A NAK not relayed: always broadcast, since the client's `ciaddr`
///    may be the very address being refused.
/// 3. `ciaddr` set (renewing, rebinding, INFORM): unicast to
///    `ciaddr:client_port`; the client holds that address and answers ARP.
/// 4. Otherwise broadcast to `255.255.255.255:client_port`, whether or not
///    the client set the broadcast bit. The RFC allows unicast to `yiaddr`
///    at the client's hardware address when the bit is clear, but that
///    needs an ARP entry written first (SIOCSARP, CAP_NET_ADMIN) since the
///    client cannot answer ARP yet; Cradle does not ask for that privilege,
///    and every client accepts a broadcast reply. `yiaddr` and the flag are
///    taken so the call reads like the RFC's rule and the choice is made in
///    one place.
pub fn reply_destination(
    giaddr: Ipv4Addr,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
    broadcast_flag: bool,
    is_nak: bool,
    server_port: u16,
    client_port: u16,
) -> SocketAddrV4 {
    let _ = (yiaddr, broadcast_flag);
    if !giaddr.is_unspecified() {
        SocketAddrV4::new(giaddr, server_port)
    } else if !ciaddr.is_unspecified() && !is_nak {
        SocketAddrV4::new(ciaddr, client_port)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(5);

    fn lo_index() -> u32 {
        nix::net::if_::if_nametoindex("lo").unwrap()
    }

    #[test]
    fn replies_go_where_rfc_2131_says() {
        let none = Ipv4Addr::UNSPECIFIED;
        let relay = Ipv4Addr::new(10, 0, 0, 1);
        let client = Ipv4Addr::new(10, 0, 0, 50);
        let offered = Ipv4Addr::new(10, 0, 0, 60);
        let bcast = Ipv4Addr::BROADCAST;
        // (giaddr, ciaddr, yiaddr, broadcast bit, NAK) → destination
        #[rustfmt::skip]
        let table = [
            // Relayed: always the relay's server port, NAK or not.
            ((relay, none, offered, false, false), (relay, 1067)),
            ((relay, client, offered, true, false), (relay, 1067)),
            ((relay, client, none, false, true), (relay, 1067)),
            ((relay, none, none, true, true), (relay, 1067)),
            // A client with an address: unicast to it.
            ((none, client, client, false, false), (client, 1068)),
            ((none, client, client, true, false), (client, 1068)),
            ((none, client, none, false, false), (client, 1068)),
            // No address yet: broadcast, bit or not (no ARP writing).
            ((none, none, offered, true, false), (bcast, 1068)),
            ((none, none, offered, false, false), (bcast, 1068)),
            ((none, none, none, false, false), (bcast, 1068)),
            // NAKs without a relay: always broadcast.
            ((none, client, none, false, true), (bcast, 1068)),
            ((none, none, none, false, true), (bcast, 1068)),
        ];
        for ((giaddr, ciaddr, yiaddr, flag, nak), (ip, port)) in table {
            assert_eq!(
                reply_destination(giaddr, ciaddr, yiaddr, flag, nak, 1067, 1068),
                SocketAddrV4::new(ip, port),
                "giaddr {giaddr} ciaddr {ciaddr} yiaddr {yiaddr} broadcast {flag} nak {nak}"
            );
        }
    }

    #[tokio::test]
    async fn loopback_round_trip_knows_interface_source_and_destination() {
        let server = DhcpSocket::bind("DHCP", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let SocketAddr::V4(server_addr) = server.local_addr().unwrap() else {
            panic!("IPv4 bound")
        };
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(client_addr) = client.local_addr().unwrap() else {
            panic!("IPv4 bound")
        };
        client.send_to(b"discover", server_addr).await.unwrap();

        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(WAIT, server.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..got.len], b"discover");
        assert_eq!(
            got,
            Received {
                len: 8,
                truncated: false,
                source: client_addr,
                ifindex: lo_index(),
                local_addr: Ipv4Addr::LOCALHOST,
                dest_addr: Ipv4Addr::LOCALHOST,
            }
        );

        let out = Egress {
            ifindex: got.ifindex,
            source: got.local_addr,
        };
        let sent = server.send(b"offer", got.source, Some(out)).await.unwrap();
        assert_eq!(sent, 5);
        let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"offer"[..], SocketAddr::V4(server_addr))
        );
    }

    #[tokio::test]
    async fn a_wildcard_socket_learns_the_destination_address() {
        let server = DhcpSocket::bind("DHCP", "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        let port = server.local_addr().unwrap().port();
        // All of 127/8 is local on lo: 127.0.0.2 is not the bound address.
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), port);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"request", to).await.unwrap();
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(WAIT, server.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.ifindex, lo_index());
        assert_eq!(got.dest_addr, *to.ip());
        assert_eq!(got.local_addr, *to.ip());

        // The reply leaves from the address the request was sent to, by
        // whichever interface the route says.
        let out = Egress {
            ifindex: 0,
            source: got.local_addr,
        };
        server.send(b"ack", got.source, Some(out)).await.unwrap();
        let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"ack"[..], SocketAddr::V4(to)));
    }

    #[tokio::test]
    async fn an_oversized_datagram_is_reported_truncated() {
        let server = DhcpSocket::bind("DHCP", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&[7u8; 100], server.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(WAIT, server.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.len, got.truncated), (64, true));
    }

    #[tokio::test]
    async fn broadcasts_leave_with_so_broadcast_and_only_with_it() {
        let server = DhcpSocket::bind("DHCP", "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        let listener = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, listener.local_addr().unwrap().port());

        // Out of every interface DHCP would serve, and out of lo by name.
        let mut out: Vec<Egress> = crate::dhcp::interfaces::list_interfaces()
            .unwrap()
            .iter()
            .filter(|i| i.up)
            .map(|i| Egress {
                ifindex: i.index,
                source: i.addrs[0].addr(),
            })
            .collect();
        out.push(Egress {
            ifindex: lo_index(),
            source: Ipv4Addr::LOCALHOST,
        });
        for egress in &out {
            let sent = server.send(b"offer", to, Some(*egress)).await;
            assert_eq!(sent.unwrap(), 5, "{egress:?}");
        }
        // Linux loops each broadcast back to the host's own sockets: every
        // copy reaches the listener, from the source address chosen.
        let port = server.local_addr().unwrap().port();
        let mut expected: Vec<SocketAddr> = out
            .iter()
            .map(|egress| SocketAddr::from((egress.source, port)))
            .collect();
        let mut heard = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..expected.len() {
            let (n, from) = tokio::time::timeout(WAIT, listener.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], b"offer");
            heard.push(from);
        }
        expected.sort();
        heard.sort();
        assert_eq!(heard, expected);

        // A plain socket may not send to the broadcast address. (Bound to
        // 127.0.0.1 so that the broadcast is routed out of lo, and refused
        // for lack of SO_BROADCAST rather than of a route.)
        let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let err = plain.send_to(b"offer", to).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[tokio::test]
    async fn a_second_socket_on_the_same_port_is_refused() {
        let first = DhcpSocket::bind("DHCP", "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        let addr = first.local_addr().unwrap();
        let err = DhcpSocket::bind("DHCP", addr).await.unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            err.to_string(),
            format!("binding the DHCP listener on {addr}: Address already in use (os error 98)")
        );
        assert!(!lacks_privilege(&err));
        // Nor on one address of that port.
        let one = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()));
        let err = DhcpSocket::bind("DHCP", one).await.unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);

        // Why SO_REUSEADDR stays off: with it on both, the kernel lets two
        // sockets share the port without a word.
        let shared = open(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), true).unwrap();
        let SocketAddr::V4(shared_addr) = shared.local_addr().unwrap() else {
            panic!("IPv4 bound")
        };
        assert!(open(shared_addr, true).is_ok());
    }

    #[tokio::test]
    async fn ipv6_and_refused_ports_are_bind_errors() {
        let err = DhcpSocket::bind("proxyDHCP", "[::1]:0".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.service, "proxyDHCP");
        assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);

        let refused = BindError {
            service: "DHCP",
            addr: "0.0.0.0:67".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(lacks_privilege(&refused));
    }
}
