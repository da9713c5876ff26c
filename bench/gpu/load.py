#!/usr/bin/env python3
"""Closed-loop load generator for streaming /generate endpoints (examples/gpu-model/server.py,
directly or through fngate). Pure Python asyncio, standard library only: it runs on the GPU
machine, which has no network to install anything.

N clients, each on its own keep-alive HTTP/1.1 connection (plain http, or https trusting
--cafile), each sending up to M requests one after another; with --duration S a client starts
no new request once S seconds have passed since the run began (the ones in flight finish), so a
run's length is bounded whatever the model's speed. Per request it records the latency (send to
end of body), the time to the response head (TTFB), the time to first token (send to first SSE
token event), the tokens received and the x-fngate-instance-id / x-fngate-cold-start headers,
then prints one JSON summary on stdout:

    python3 bench/gpu/load.py --url http://127.0.0.1:8000/generate --clients 8 --requests 16
    python3 bench/gpu/load.py --url https://127.0.0.1:8443/llm/generate \\
        --cafile data/tls/ca.pem --clients 8 --requests 16 --raw requests.jsonl

Summary keys: count (successful requests), errors, error_samples, duration_s, req_per_s,
tokens, tokens_per_s, latency_ms / ttfb_ms / ttft_ms / tpot_ms (time per output token after the
first) with p50/p90/p99/max/mean, status_counts, cold_starts_ms (x-fngate-cold-start values
seen) and instances (successful requests per x-fngate-instance-id).
Exit status 1 when no request succeeded.
"""

import argparse
import asyncio
import json
import math
import ssl
import sys
import time
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 512


class ProtocolError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, host, port, ssl_context):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.reader = None
        self.writer = None

    async def ensure_open(self):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context else None, limit=MAX_HEAD)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def read_head(self):
        """Status code and lower-cased headers of the next response (skipping 1xx)."""
        while True:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                continue
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            return status, headers

    async def body_chunks(self, headers):
        """The response body as it arrives: chunked, Content-Length or until close."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return
                yield await self.reader.readexactly(size)
                if await self.reader.readexactly(2) != b"\r\n":
                    raise ProtocolError("malformed chunk")
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining:
                data = await self.reader.read(min(remaining, 65536))
                if not data:
                    raise ProtocolError("connection closed mid-body")
                remaining -= len(data)
                yield data
        else:
            while data := await self.reader.read(65536):
                yield data


def percentiles(values):
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p):
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000

    return {"p50": round(rank(50), 2), "p90": round(rank(90), 2), "p99": round(rank(99), 2),
            "max": round(ordered[-1] * 1000, 2),
            "mean": round(sum(ordered) / len(ordered) * 1000, 2)}


async def one_request(conn, request_bytes, stream):
    """Send one request on `conn`; returns a record (status, ttft_s, latency_s, tokens, ...)."""
    await conn.ensure_open()
    started = time.perf_counter()
    conn.writer.write(request_bytes)
    await conn.writer.drain()
    status, headers = await conn.read_head()
    record = {"status": status, "ttfb_s": time.perf_counter() - started, "ttft_s": None,
              "tokens": 0, "error": None,
              "cold_start_ms": headers.get("x-fngate-cold-start"),
              "instance": headers.get("x-fngate-instance-id"),
              "request_id": headers.get("x-fngate-request-id")}
    body = bytearray()
    done = False
    async for chunk in conn.body_chunks(headers):
        if status != 200 or not stream:
            body += chunk
            continue
        # SSE: events end with a blank line; a token event carries JSON with "token".
        body += chunk
        while (end := body.find(b"\n\n")) >= 0:
            event, body = bytes(body[:end]), body[end + 2:]
            data = event.removeprefix(b"data: ")
            if data == b"[DONE]":
                done = True
            elif b'"token"' in data:
                record["tokens"] += 1
                if record["ttft_s"] is None:
                    record["ttft_s"] = time.perf_counter() - started
            else:
                record["error"] = f"error event: {data[:MAX_ERROR_BODY].decode(errors='replace')}"
    record["latency_s"] = time.perf_counter() - started
    if (headers.get("connection", "").lower() == "close"
            or ("transfer-encoding" not in headers and "content-length" not in headers)):
        conn.close()
    if status != 200:
        text = bytes(body[:MAX_ERROR_BODY]).decode(errors="replace")
        record["error"] = f"status {status}: {text}"
    elif not stream:
        record["tokens"] = len(json.loads(body)["tokens"])
        record["ttft_s"] = record["latency_s"]
    elif not done and record["error"] is None:
        record["error"] = "stream ended without [DONE]"
    return record


async def client(index, args, target, request_bytes, ssl_context, records, deadline):
    conn = Connection(target.hostname, target.port or (443 if ssl_context else 80), ssl_context)
    try:
        for seq in range(args.requests):
            if deadline is not None and time.perf_counter() >= deadline:
                break
            try:
                record = await asyncio.wait_for(one_request(conn, request_bytes, args.stream),
                                                args.timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ProtocolError, ValueError) as exc:
                # The connection is in an unknown state: start the next request on a new one.
                conn.close()
                record = {"status": None, "ttfb_s": None, "ttft_s": None, "latency_s": None,
                          "tokens": 0,
                          "error": f"{type(exc).__name__}: {exc}", "cold_start_ms": None,
                          "instance": None, "request_id": None}
            record.update(client=index, seq=seq)
            records.append(record)
    finally:
        conn.close()


def summarize(args, records, duration):
    ok = [r for r in records if r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    statuses = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    samples = []
    for r in records:
        if r["error"] is not None and r["error"] not in samples and len(samples) < 5:
            samples.append(r["error"])
    # Time per output token after the first: the decode speed one client sees.
    tpot = [(r["latency_s"] - r["ttft_s"]) / (r["tokens"] - 1)
            for r in ok if r["tokens"] > 1 and r["ttft_s"] is not None]
    instances = {}
    for r in ok:
        key = r["instance"] or "-"
        instances[key] = instances.get(key, 0) + 1
    return {
        "url": args.url,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "duration_limit_s": args.duration,
        "max_tokens": args.max_tokens,
        "stream": args.stream,
        "count": len(ok),
        "errors": len(records) - len(ok),
        "error_samples": samples,
        "duration_s": round(duration, 3),
        "req_per_s": round(len(ok) / duration, 3) if duration > 0 else None,
        "tokens": tokens,
        "tokens_per_s": round(tokens / duration, 1) if duration > 0 else None,
        "latency_ms": percentiles([r["latency_s"] for r in ok]),
        "ttfb_ms": percentiles([r["ttfb_s"] for r in ok if r["ttfb_s"] is not None]),
        "ttft_ms": percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "tpot_ms": percentiles(tpot),
        "status_counts": statuses,
        "cold_starts_ms": [int(r["cold_start_ms"]) for r in records
                           if r["cold_start_ms"] and r["cold_start_ms"].isdigit()],
        "instances": instances,
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", required=True, help="the /generate URL (http:// or https://)")
    p.add_argument("--clients", type=int, default=1, help="concurrent connections")
    p.add_argument("--requests", type=int, default=8,
                   help="requests per client, back to back (at most, with --duration)")
    p.add_argument("--duration", type=float,
                   help="seconds: no client starts a request after this (in-flight ones finish)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt", default="The gateway routes each request to a warm instance.")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="ask for one JSON answer instead of SSE (TTFT is then the latency)")
    p.add_argument("--cafile", help="CA bundle (PEM) to trust for https")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra request header (repeatable)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--raw", help="also write every request's record here, one JSON per line")
    args = p.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        p.error("--clients and --requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    return args


def build_request(args, target):
    body = json.dumps({"prompt": args.prompt, "max_tokens": args.max_tokens,
                       "stream": args.stream, "temperature": args.temperature}).encode()
    path = target.path or "/"
    if target.query:
        path += "?" + target.query
    lines = [f"POST {path} HTTP/1.1", f"Host: {target.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Accept: text/event-stream" if args.stream else "Accept: application/json"]
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            raise SystemExit(f"--header {header!r}: expected 'NAME: VALUE'")
        lines.append(f"{name.strip()}: {value.strip()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def run(args):
    target = urlsplit(args.url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise SystemExit(f"--url {args.url!r}: expected http://HOST[:PORT]/PATH or https://…")
    ssl_context = None
    if target.scheme == "https":
        ssl_context = ssl.create_default_context(cafile=args.cafile)
        # HTTP/1.1 only: this client speaks nothing else, and fngate would otherwise offer h2.
        ssl_context.set_alpn_protocols(["http/1.1"])
    request_bytes = build_request(args, target)
    records = []
    started = time.perf_counter()
    deadline = started + args.duration if args.duration else None
    await asyncio.gather(*(client(i, args, target, request_bytes, ssl_context, records, deadline)
                           for i in range(args.clients)))
    duration = time.perf_counter() - started
    if args.raw:
        with open(args.raw, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return summarize(args, records, duration)


def main(argv=None):
    args = parse_args(argv)
    summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=2))
    return 0 if summary["count"] else 1


if __name__ == "__main__":
    sys.exit(main())
