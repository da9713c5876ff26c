#!/usr/bin/env python3
"""CPU smoke test of the GPU model function (server.py), so its code does not rot where CI has
no GPU: the same server with a tiny model on CPU, over real HTTP on a loopback port.

    python3 examples/gpu-model/smoke_test.py

Skipped with a printed reason (exit 0) when torch is not importable by this interpreter, which
also runs the server. Checks /health, non-streaming and streaming /generate (SSE framing, [DONE],
keep-alive, the same greedy tokens both ways), input errors, 4 concurrent streams batched
together (/stats max batch > 1), and a clean exit on SIGTERM. Exits 0 when all pass, else 1
with the failed check and the server's output. Takes a few seconds (most of it importing torch).
"""

import http.client
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
START_TIMEOUT_S = 40    # torch import + tiny model; a cold import on a slow disk dominates
HTTP_TIMEOUT_S = 20
CONCURRENT = 4
CONCURRENT_TOKENS = 64  # long enough that the four streams overlap and share decode steps


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None):
    """One request on `conn` (kept alive); returns (response, body bytes)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    return resp, resp.read()


def parse_sse(body):
    """SSE body -> list of event data strings; every event must be one `data:` line."""
    text = body.decode()
    check(text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-40:]!r}")
    events = []
    for block in text[:-2].split("\n\n"):
        check(block.startswith("data: ") and "\n" not in block, f"bad SSE event {block!r}")
        events.append(block[len("data: "):])
    return events


def stream_tokens(conn, prompt, max_tokens):
    """A streaming /generate; checks the framing and returns the token ids in order."""
    resp, body = request(conn, "POST", "/generate",
                         {"prompt": prompt, "max_tokens": max_tokens, "stream": True})
    check(resp.status == 200, f"stream: status {resp.status}: {body[:200]!r}")
    check(resp.getheader("Content-Type") == "text/event-stream",
          f"stream: Content-Type {resp.getheader('Content-Type')}")
    check(resp.getheader("Transfer-Encoding") == "chunked", "stream: not chunked")
    events = parse_sse(body)
    check(events[-1] == "[DONE]", f"stream: last event {events[-1]!r}, not [DONE]")
    ids = []
    for i, data in enumerate(events[:-1]):
        event = json.loads(data)
        check(event.get("index") == i and isinstance(event.get("token"), str),
              f"stream: event {i} is {data}")
        ids.append(event["id"])
    check(len(ids) == max_tokens, f"stream: {len(ids)} tokens, asked for {max_tokens}")
    return ids


class ServerProcess:
    """server.py on a free loopback port; its output is collected for failure reports."""

    def __init__(self):
        self.port = free_port()
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "server.py"), "--size", "tiny", "--device", "cpu",
             "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, f"server exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                resp, body = request(conn, "GET", "/health")
                conn.close()
                check(resp.status == 200 and json.loads(body) == {"status": "ok"},
                      f"/health: {resp.status} {body!r}")
                return
            except OSError:
                time.sleep(0.1)
        raise CheckFailed(f"no /health answer within {START_TIMEOUT_S} s")

    def connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)

    def terminate(self):
        """SIGTERM by PID; True when it exited 0 within the grace period."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        self.reader.join(timeout=2)
        return self.proc.returncode == 0


def check_generate(server):
    conn = server.connect()
    resp, body = request(conn, "POST", "/generate", {"prompt": "hello gpu", "max_tokens": 12})
    check(resp.status == 200, f"/generate: status {resp.status}: {body[:200]!r}")
    out = json.loads(body)
    check(len(out["tokens"]) == 12 and isinstance(out["text"], str) and out["text"],
          f"/generate: {out}")
    check(out["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
          f"/generate usage: {out['usage']}")
    sock = conn.sock
    ids = stream_tokens(conn, "hello gpu", 12)
    check(conn.sock is sock, "the connection was not kept alive between requests")
    check(ids == out["tokens"], f"greedy tokens differ: stream {ids}, JSON {out['tokens']}")
    conn.close()


def check_errors(server):
    conn = server.connect()
    for body, status in [({"prompt": "x", "max_tokens": 0}, 400),
                         ({"prompt": 5}, 400),
                         ({"prompt": "x" * 300, "max_tokens": 8}, 400)]:  # past the context
        resp, _ = request(conn, "POST", "/generate", body)
        check(resp.status == status, f"{body}: status {resp.status}, expected {status}")
    resp, _ = request(conn, "GET", "/nope")
    check(resp.status == 404, f"/nope: status {resp.status}")
    resp, _ = request(conn, "GET", "/generate")
    check(resp.status == 405, f"GET /generate: status {resp.status}")
    conn.close()


def check_concurrent(server):
    """Returns tokens/s over the concurrent phase."""
    results, errors = [None] * CONCURRENT, []
    barrier = threading.Barrier(CONCURRENT)

    def client(i):
        try:
            conn = server.connect()
            barrier.wait()
            results[i] = stream_tokens(conn, f"client {i}", CONCURRENT_TOKENS)
            conn.close()
        except Exception as exc:  # reported below, with which client failed
            errors.append(f"client {i}: {exc!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HTTP_TIMEOUT_S * 2)
    elapsed = time.monotonic() - started
    check(not errors, "; ".join(errors))
    check(all(r is not None for r in results), "a concurrent stream did not finish")
    conn = server.connect()
    resp, body = request(conn, "GET", "/stats")
    conn.close()
    check(resp.status == 200, f"/stats: status {resp.status}")
    stats = json.loads(body)
    check(stats["max_batch_size_seen"] > 1,
          f"/stats max_batch_size_seen {stats['max_batch_size_seen']}: requests were not batched")
    check(stats["params"] > 0 and stats["device"] == "cpu" and stats["load_time_s"] >= 0,
          f"/stats: {stats}")
    return CONCURRENT * CONCURRENT_TOKENS / elapsed, stats["max_batch_size_seen"]


def main():
    try:
        importlib.import_module("torch")  # only whether it imports matters: the server needs it
    except Exception as exc:  # ImportError, or a broken install failing while loading
        print(f"SKIP: torch is not importable ({exc})")
        return 0

    started = time.monotonic()
    server = ServerProcess()
    passed = 0
    try:
        for name, step in [("health", ServerProcess.wait_ready), ("generate", check_generate),
                           ("errors", check_errors)]:
            step(server)
            passed += 1
            print(f"ok: {name}", flush=True)
        rate, batch = check_concurrent(server)
        passed += 1
        print(f"ok: {CONCURRENT} concurrent streams, max batch {batch}, {rate:.0f} tokens/s",
              flush=True)
        check(server.terminate(), f"server did not exit 0 on SIGTERM (rc {server.proc.returncode})")
        check(any(line.startswith("stopped after") for line in server.output),
              "server did not log its clean stop")
        passed += 1
        print("ok: SIGTERM", flush=True)
    except (CheckFailed, OSError, ValueError, KeyError) as exc:
        server.terminate()
        print(f"FAIL: {exc}")
        print("server output:\n  " + "\n  ".join(server.output[-30:]))
        print(f"smoke: {passed} passed, 1 failed")
        return 1
    print(f"smoke: {passed} passed, 0 failed ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
