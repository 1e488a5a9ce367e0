#!/usr/bin/env python3
"""Kernel memory held by idle and backlogged TCP connections (numbers in tuning/README.md).

Opens N loopback connection pairs in one process, then reports from /proc/net/sockstat
(the pages counted against net.ipv4.tcp_mem), /proc/meminfo (slab) and `ss -tm`
(receive and send queue memory per side):
  1. all connections idle;
  2. after sending SIZE bytes on each connection that nobody reads.
With --rcvbuf B the accepting side sets SO_RCVBUF=B first, standing in for a smaller
net.ipv4.tcp_rmem default (without needing root to change the sysctl).

  python3 tuning/socket-memory.py 8000 100
  python3 tuning/socket-memory.py 2000 262144
  python3 tuning/socket-memory.py 2000 262144 --rcvbuf 16384

N pairs use 2N descriptors: keep 2N below `ulimit -n`.
"""
import re
import socket
import subprocess
import sys
import time


def tcp_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            return dict(zip(fields[::2], map(int, fields[1::2])))["mem"]


def slab_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("Slab:"):
            return int(line.split()[1])


def queued(port):
    """Bytes held in receive queues (skmem r) and send queues (skmem w) of our sockets."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True, text=True, check=True).stdout
    receive = sum(int(v) for v in re.findall(r"skmem:\(r(\d+),", out))
    send = sum(int(v) for v in re.findall(r",w(\d+),", out))
    return receive, send


def main():
    n, size = int(sys.argv[1]), int(sys.argv[2])
    rcvbuf = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--rcvbuf" else None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    pages0, slab0 = tcp_pages(), slab_kib()
    pairs = []
    for _ in range(n):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        if rcvbuf:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.setblocking(False)
        pairs.append((client, server))
    time.sleep(0.5)
    pages1, slab1 = tcp_pages(), slab_kib()
    print(f"{n} idle pairs: tcp_mem +{pages1 - pages0} pages, "
          f"slab +{(slab1 - slab0) / n:.1f} KiB per pair")
    payload = b"x" * size
    sent = 0
    for client, _ in pairs:
        try:
            sent += client.send(payload)
        except BlockingIOError:
            pass
    time.sleep(0.5)
    pages2 = tcp_pages()
    receive, send = queued(listener.getsockname()[1])
    print(f"{size} B sent, unread, per pair ({sent // n} B accepted on average): "
          f"tcp_mem +{pages2 - pages0} pages = {(pages2 - pages0) * 4096 / n:.0f} B per pair; "
          f"receiver holds {receive / n:.0f} B, sender holds {send / n:.0f} B per pair")


main()
