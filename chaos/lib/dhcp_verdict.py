#!/usr/bin/env python3
"""Judges a DHCP lab run from the clients' own records.

Records read (all optional, repeatable):
  --udhcpc FILE      lines "MAC IP LEASE_SECS UNIX_TIME" appended by the udhcpc -s
                     script on every bound/renew (the env the client passed it)
  --dhclient FILE    a dhclient lease file (-lf); its name is MAC.leases
  --perfdhcp FILE    perfdhcp output run with -x l ("Leases for REQUEST-ACK":
                     client_id,address); the first lines of the file written by
                     the lab: "# start UNIX" and, appended, "# end UNIX"
  --pcap FILE        a capture taken in a client namespace: retransmissions
                     are counted per (chaddr, xid) from what the clients sent
and the servers' views to compare with:
  --node NAME=FILE   `cradle leases list -o json` of a surviving node, or
                     --kea NAME=FILE  Kea's memfile CSV
Options: --lease-secs N (the subnet's lease time, for perfdhcp's records, which
carry none), --require-present (a missing lease fails), --json OUT.

Prints one line per finding and a summary; exit status 0 when no address was
acknowledged to two clients for overlapping times and (with --require-present)
every acknowledged lease still valid is on every node given; 1 otherwise.
"""

import argparse
import csv
import json
import os
import re
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dhcp_pcap  # noqa: E402

MAX_LINES = 2_000_000


def norm_mac(s):
    s = s.strip().lower().replace("-", ":")
    if re.fullmatch(r"[0-9a-f]{12}", s):
        s = ":".join(s[i:i + 2] for i in range(0, 12, 2))
    return s


def read_udhcpc(path, acks):
    with open(path) as f:
        for n, line in enumerate(f):
            if n >= MAX_LINES:
                break
            parts = line.split()
            if len(parts) != 4:
                continue
            mac, ip, secs, at = parts
            acks.append({"client": norm_mac(mac), "ip": ip, "start": float(at),
                         "end": float(at) + float(secs), "source": "udhcpc"})


def read_dhclient(path, acks):
    mac = norm_mac(os.path.basename(path).split(".leases")[0])
    text = open(path).read()
    for block in re.findall(r"lease \{(.*?)\}", text, re.S):
        ip = re.search(r"fixed-address ([0-9.]+);", block)
        secs = re.search(r"option dhcp-lease-time (\d+);", block)
        expire = re.search(r"expire \d+ (\d+/\d+/\d+ \d+:\d+:\d+);", block)
        if not (ip and secs and expire):
            continue
        end = time.mktime(time.strptime(expire.group(1) + " UTC", "%Y/%m/%d %H:%M:%S %Z")) - time.timezone
        acks.append({"client": mac, "ip": ip.group(1), "start": end - int(secs.group(1)), "end": end,
                     "source": "dhclient"})


def read_perfdhcp(path, acks, lease_secs, stats):
    start = end = None
    section = None
    got = 0
    with open(path) as f:
        for n, line in enumerate(f):
            if n >= MAX_LINES:
                break
            line = line.strip()
            m = re.match(r"# start ([0-9.]+)", line)
            if m:
                start = float(m.group(1))
            m = re.match(r"# end ([0-9.]+)", line)
            if m:
                end = float(m.group(1))
            if line.startswith("***Leases for REQUEST-ACK"):
                section = "ack"
                continue
            if line.startswith("***"):
                section = None
                continue
            if section == "ack" and "," in line and not line.startswith("client_id"):
                cid, ip = line.split(",")[:2]
                # perfdhcp's client id is 01 + MAC
                client = norm_mac(cid[2:]) if cid.startswith("01") and len(cid) == 14 else cid
                acks.append({"client": client, "ip": ip, "start": None, "end": None,
                             "source": "perfdhcp", "file": path})
                got += 1
    for a in acks:
        if a.get("file") == path:
            # No per-ACK time in perfdhcp's record: the whole run's window.
            a["start"] = start if start is not None else 0
            a["end"] = (end if end is not None else time.time()) + lease_secs
    stats[path] = got


def retransmissions(paths):
    """{client: the most retransmissions any one of its exchanges (xid) needed}.

    Each capture counts on its own and the largest count wins: a broadcast is
    seen in every client namespace on the bridge, once in each."""
    sends = defaultdict(int)
    for p in paths:
        here = defaultdict(int)
        for m in dhcp_pcap.messages(p):
            if m["op"] != 1 or m["type"] not in ("discover", "request"):
                continue
            here[(m["mac"], m["xid"], m["type"])] += 1
        for k, n in here.items():
            sends[k] = max(sends[k], n)
    per_exchange = defaultdict(int)
    for (mac, xid, _t), n in sends.items():
        per_exchange[(mac, xid)] += n - 1
    per_client = defaultdict(int)
    for (mac, _xid), n in per_exchange.items():
        per_client[mac] = max(per_client[mac], n)
    return per_client


def read_node(path):
    """{(ip, client)} of bound leases in a Cradle `leases list -o json`."""
    out = {}
    data = json.load(open(path))
    if isinstance(data, dict):
        data = data.get("items", data.get("leases", []))
    for lease in data:
        state = lease.get("state", "bound")
        if state != "bound":
            continue
        mac = norm_mac(lease.get("hardware_addr") or "")
        out[lease["address"]] = (mac, float(lease.get("expires_at_unix", 0)))
    return out


def read_kea(path):
    out = {}
    with open(path) as f:
        for n, row in enumerate(csv.DictReader(f)):
            if n >= MAX_LINES:
                break
            if row.get("state", "0") not in ("0", ""):
                continue
            out[row["address"]] = (norm_mac(row.get("hwaddr", "")), float(row.get("expire", 0)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--udhcpc", action="append", default=[])
    ap.add_argument("--dhclient", action="append", default=[])
    ap.add_argument("--perfdhcp", action="append", default=[])
    ap.add_argument("--pcap", action="append", default=[])
    ap.add_argument("--node", action="append", default=[])
    ap.add_argument("--kea", action="append", default=[])
    ap.add_argument("--lease-secs", type=float, default=600)
    ap.add_argument("--require-present", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()

    acks, pstats = [], {}
    for p in a.udhcpc:
        if os.path.exists(p):
            read_udhcpc(p, acks)
    for p in a.dhclient:
        if os.path.exists(p):
            read_dhclient(p, acks)
    for p in a.perfdhcp:
        if os.path.exists(p):
            read_perfdhcp(p, acks, a.lease_secs, pstats)

    ok = True
    # An address acknowledged to two different clients for overlapping times.
    by_ip = defaultdict(list)
    for x in acks:
        by_ip[x["ip"]].append(x)
    dups = []
    for ip, xs in by_ip.items():
        xs.sort(key=lambda x: x["start"])
        for i, x in enumerate(xs):
            for y in xs[i + 1:]:
                if y["client"] != x["client"] and y["start"] < x["end"] and x["start"] < y["end"]:
                    dups.append((ip, x, y))
    for ip, x, y in dups[:20]:
        print(f"duplicate: {ip} acknowledged to {x['client']} ({x['source']}) and {y['client']} ({y['source']})")
    if dups:
        ok = False
    clients = {x["client"] for x in acks}
    # A client holds one address at a time: its latest acknowledgement.
    latest = {}
    for x in sorted(acks, key=lambda x: x["start"]):
        latest[x["client"]] = x
    print(f"acknowledged: {len(acks)} ACKs, {len(clients)} clients, {len(by_ip)} addresses, "
          f"{len(dups)} duplicates")

    now = time.time()
    missing_total = 0
    views = [(spec, read_node) for spec in a.node] + [(spec, read_kea) for spec in a.kea]
    for spec, reader in views:
        name, path = spec.split("=", 1)
        try:
            view = reader(path)
        except (OSError, ValueError, KeyError) as e:
            print(f"node {name}: unreadable lease list: {e}")
            ok = False
            continue
        missing = []
        for x in latest.values():
            if x["end"] <= now:
                continue
            held = view.get(x["ip"])
            if held is None or (held[0] and held[0] != x["client"]):
                missing.append(x)
        missing_total += len(missing)
        for x in missing[:10]:
            print(f"node {name}: misses {x['ip']} acknowledged to {x['client']} ({x['source']}); "
                  f"it holds {view.get(x['ip'])}")
        print(f"node {name}: holds {len(latest) - len(missing)} of {len(latest)} acknowledged leases")
        if missing and a.require_present:
            ok = False

    per_client = retransmissions([p for p in a.pcap if os.path.exists(p)])
    worst = sorted(per_client.items(), key=lambda kv: -kv[1])
    over1 = [c for c, n in per_client.items() if n > 1]
    print(f"retransmissions: {len(over1)} of {len(per_client)} clients seen on the wire needed more than one"
          + (f" (worst: {', '.join(f'{c}={n}' for c, n in worst[:5])})" if worst and worst[0][1] else ""))
    for path, n in pstats.items():
        print(f"perfdhcp {os.path.basename(path)}: {n} ACKs in its lease record")

    if a.json:
        json.dump({"acks": len(acks), "clients": len(clients), "addresses": len(by_ip),
                   "duplicates": len(dups), "missing": missing_total, "retrans_over_1": len(over1),
                   "clients_on_wire": len(per_client)}, open(a.json, "w"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
