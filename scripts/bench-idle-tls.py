#!/usr/bin/env python3
"""RSS per idle connection of wscluster-proxy, plain (ws://) against TLS (wss://), in one run.

For each mode, a fresh proxy (one worker thread) splices N idle WebSocket connections to a
backend in this script; the proxy's RSS is read before (after a warm-up) and after they are
all open, and the growth divided by N. Plain and TLS rows alternate (ROUNDS times) so machine
noise hits both; the report is each mode's median and the TLS/plain ratio.

The certificate is ECDSA P-256 (openssl CLI), as in the issue's benchmark. The clients and the
backend are asyncio in this process; nothing they hold is counted (only the proxy's RSS). RSS
is read after a settling time (jemalloc's decay), so memory a handshake used only for a moment
is not counted as held by the idle connection.

Usage: scripts/bench-idle-tls.py [--proxy target/release/wscluster-proxy]
                                  [--connections 9000] [--rounds 2] [--settle-seconds 12]
                                  [--modes plain,tls]
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_cert(work):
    """A self-signed ECDSA P-256 certificate for localhost/127.0.0.1."""
    crt, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return crt, key


async def backend(reader, writer):
    """Answers one upgrade with 101 and holds the connection until the peer closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


async def client(port, i, tls_ctx):
    """One upgraded, then idle, connection through the proxy."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_ctx, server_hostname="localhost" if tls_ctx else None)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET /ws?userId=i%d HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: %s\r\n\r\n" % (i, key))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:60])
    return writer


async def open_all(port, count, tls_ctx, concurrency=int(os.environ.get("OPEN_CONCURRENCY", "100"))):
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            return await client(port, i, tls_ctx)
    return await asyncio.gather(*(one(i) for i in range(count)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def measure(args, work, backend_port, crt, key, mode):
    """A fresh proxy; RSS growth per connection (KiB) for `count` idle ones in `mode`."""
    with open(os.path.join(work, "ring.json"), "w") as f:
        json.dump({"clusterId": "bench/idle", "version": 1,
                   "members": [{"id": "b", "address": f"127.0.0.1:{backend_port}"}]}, f)
    with open(os.path.join(work, "proxy.yaml"), "w") as f:
        f.write("keySources:\n  - query: userId\nlimits:\n  maxConnections: 30000\n")
    # The TLS flags only for the TLS row: a proxy built before TLS measures the plain row.
    tls_flags = ["--tls-listen", "127.0.0.1:0", "--tls-cert-file", crt, "--tls-key-file", key]
    proc = await asyncio.create_subprocess_exec(
        args.proxy, "--worker-threads", "1", "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", *(tls_flags if mode == "tls" else []),
        "--cluster-id", "bench/idle",
        "--config", os.path.join(work, "proxy.yaml"),
        "--ring-file", os.path.join(work, "ring.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"})
    try:
        line = (await proc.stdout.readline()).decode().split()
        plain = int(line[2].rsplit(":", 1)[1])
        if mode == "tls":
            tls = int(next(w for w in line if w.startswith("tls=")).rsplit(":", 1)[1])
            port, ctx = tls, make_client_ctx(crt)
        else:
            port, ctx = plain, None
        for _ in range(100):  # the ring file is read at start; wait until upgrades go through
            try:
                (await client(port, 0, ctx)).close()
                break
            except Exception:
                await asyncio.sleep(0.05)
        warm = await open_all(port, 50, ctx)
        for w in warm:
            w.close()
        await asyncio.sleep(args.settle_seconds)
        before = rss_kib(proc.pid)
        conns = await open_all(port, args.connections, ctx)
        # jemalloc gives unused pages back after its decay time (10 s by default): wait it
        # out, so what the handshakes used only for a moment is not counted as kept.
        await asyncio.sleep(args.settle_seconds)
        after = rss_kib(proc.pid)
        for w in conns:
            w.close()
        return (after - before) / len(conns)
    finally:
        proc.kill()
        await proc.wait()


def make_client_ctx(crt):
    ctx = ssl.create_default_context(cafile=crt)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", default="target/release/wscluster-proxy")
    p.add_argument("--connections", type=int, default=9000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--settle-seconds", type=float, default=12.0)
    p.add_argument("--modes", default="plain,tls", help="plain,tls or one of them")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * args.connections + 200:
        sys.exit(f"open-file limit {hard} is too low for {args.connections} connections")
    work = tempfile.mkdtemp(prefix="wscluster-idle-tls.")
    crt, key = make_cert(work)
    server = await asyncio.start_server(backend, "127.0.0.1", 0, backlog=4096)
    backend_port = server.sockets[0].getsockname()[1]
    modes = args.modes.split(",")
    results = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode in modes:
            kib = await measure(args, work, backend_port, crt, key, mode)
            results[mode].append(kib)
            print(f"{mode}: {kib:.2f} KiB per idle connection", file=sys.stderr)
    medians = {mode: statistics.median(kib) for mode, kib in results.items()}
    cells = " | ".join(f"{mode} {kib:.2f} KiB" for mode, kib in medians.items())
    ratio = ""
    if "plain" in medians and "tls" in medians:
        ratio = f" TLS/plain {medians['tls'] / medians['plain']:.2f} |"
    print(f"| RSS per idle connection at {args.connections} | {cells} |{ratio}")
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
