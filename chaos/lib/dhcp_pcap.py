#!/usr/bin/env python3
"""Reads a classic pcap file (tcpdump -w, Ethernet link type) and yields the
DHCPv4 messages in it: the raw UDP payload plus what the lab scripts key on.

Used by chaos/capture-dhcp.sh (to cut single client packets out of a capture)
and by chaos/dhcp-cluster.sh (to count a client's retransmissions on the
wire). Standard library only.

  dhcp_pcap.py list FILE              one line per DHCP message:
                                      TIME SRCIP:PORT DSTIP:PORT MAC TYPE XID SECS LEN
  dhcp_pcap.py save FILE MAC TYPE OUT the first message of TYPE (discover,
                                      request, ...) sent by chaddr MAC, payload
                                      bytes only, to OUT; exit 1 if none
"""

import struct
import sys

TYPES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak",
         7: "release", 8: "inform"}
MAGIC = b"\x63\x82\x53\x63"
MAX_RECORDS = 1_000_000


def records(path):
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = head[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise SystemExit(f"{path}: not a pcap file")
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        if linktype != 1:
            raise SystemExit(f"{path}: link type {linktype}, want Ethernet (1)")
        for _ in range(MAX_RECORDS):
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _orig = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return  # a capture cut short mid-record
            yield sec + frac / (1e9 if nano else 1e6), data


def udp_payload(frame):
    """(src ip, src port, dst ip, dst port, payload) of an IPv4/UDP frame, else None."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    off = 14
    if ethertype == 0x8100 and len(frame) >= 18:
        ethertype = struct.unpack("!H", frame[16:18])[0]
        off = 18
    if ethertype != 0x0800 or len(frame) < off + 20:
        return None
    ihl = (frame[off] & 0x0F) * 4
    if frame[off + 9] != 17 or ihl < 20:
        return None
    total = struct.unpack("!H", frame[off + 2:off + 4])[0]
    frag = struct.unpack("!H", frame[off + 6:off + 8])[0]
    if frag & 0x3FFF:
        return None  # fragments: DHCP clients do not send them
    src = ".".join(str(b) for b in frame[off + 12:off + 16])
    dst = ".".join(str(b) for b in frame[off + 16:off + 20])
    u = off + ihl
    if len(frame) < u + 8:
        return None
    sport, dport, ulen = struct.unpack("!HHH", frame[u:u + 6])
    end = min(u + ulen, off + total, len(frame))
    return src, sport, dst, dport, frame[u + 8:end]


def message_type(payload):
    """Option 53 of a DHCP payload (scanning the options area only), or None."""
    if len(payload) < 240 or payload[236:240] != MAGIC:
        return None
    i = 240
    while i < len(payload):
        code = payload[i]
        if code == 255:
            return None
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(payload):
            return None
        n = payload[i + 1]
        if code == 53 and n >= 1 and i + 2 < len(payload):
            return payload[i + 2]
        i += 2 + n
    return None


def messages(path):
    for t, frame in records(path):
        u = udp_payload(frame)
        if u is None:
            continue
        src, sport, dst, dport, payload = u
        if 67 not in (sport, dport):
            continue  # every DHCPv4 message has the server port on one side
        mt = message_type(payload)
        if mt is None:
            continue
        mac = ":".join(f"{b:02x}" for b in payload[28:34])
        xid = struct.unpack("!I", payload[4:8])[0]
        secs = struct.unpack("!H", payload[8:10])[0]
        yield {"time": t, "src": f"{src}:{sport}", "dst": f"{dst}:{dport}", "mac": mac,
               "type": TYPES.get(mt, str(mt)), "op": payload[0], "xid": xid, "secs": secs,
               "payload": payload}


def main(argv):
    if len(argv) >= 3 and argv[1] == "list":
        for m in messages(argv[2]):
            print(f"{m['time']:.6f} {m['src']} {m['dst']} {m['mac']} {m['type']} "
                  f"{m['xid']:08x} {m['secs']} {len(m['payload'])}")
        return 0
    if len(argv) == 6 and argv[1] == "save":
        _, _, path, mac, kind, out = argv
        for m in messages(path):
            if m["op"] == 1 and m["mac"] == mac.lower() and m["type"] == kind:
                with open(out, "wb") as f:
                    f.write(m["payload"])
                return 0
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
