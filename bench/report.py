#!/usr/bin/env python3
"""Turns the raw outputs of bench/run.sh (bench/out/) into bench/RESULTS.md. Standard library only.

    report.py rate OUT {plain|tls} FRACTION   print FRACTION x nginx's median req/s (the fixed rate)
    report.py oha-line FILE.json               one-line summary of an oha run (progress log)
    report.py report OUT RESULTS.md            write the results file
"""

import json
import os
import re
import statistics
import sys

# Targets from /work/shared/BENCH.md.
THROUGHPUT_TARGET = 1.2  # fngate req/s >= 1.2x nginx and HAProxy, TLS and plaintext
ADDED_P50_TARGET_US = 60.0
ADDED_P99_TARGET_US = 250.0
FULL_ROUNDS = 5  # BENCH.md: each configuration >= 5 times

PEERS = ["direct", "nginx", "haproxy", "fngate", "fngatelog"]
LABEL = {
    "direct": "direct (no proxy)",
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "fngate": "fngate",
    "fngatelog": "fngate, per-request log on",
}
TRANSPORTS = ["plain", "tls"]
TRANSPORT_LABEL = {"plain": "plaintext HTTP/1.1", "tls": "TLS HTTP/1.1"}


# ---- parsing -------------------------------------------------------------------------------------

def read_meta(out):
    meta = {}
    with open(os.path.join(out, "meta.txt")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _dur_seconds(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if not m:
        raise ValueError(f"{path}: no Requests/sec line")
    rec = {"rps": float(m.group(1)), "non2xx": 0, "socket_errors": 0, "pct": {}}
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        rec["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        rec["socket_errors"] = sum(int(x) for x in m.groups())
    for pct, val in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", text, re.M):
        s = _dur_seconds(val)
        if s is not None:
            rec["pct"][int(pct)] = s
    return rec


def split_name(name):
    """'nginx-tls' -> ('nginx', 'tls')"""
    peer, transport = name.rsplit("-", 1)
    return peer, transport


def load_runs(out, sub, ext, parse):
    runs = {}
    d = os.path.join(out, sub)
    if not os.path.isdir(d):
        return runs
    for fn in sorted(os.listdir(d)):
        m = re.fullmatch(r"(.+)\.r(\d+)\." + ext, fn)
        if not m:
            continue
        runs.setdefault(m.group(1), []).append((int(m.group(2)), parse(os.path.join(d, fn))))
    for v in runs.values():
        v.sort(key=lambda x: x[0])
    return runs


DEADLINE_ERR = "aborted due to deadline"


def parse_oha(path):
    with open(path) as f:
        data = json.load(f)
    pct = data.get("latencyPercentiles", {})
    statuses = {k: int(v) for k, v in data.get("statusCodeDistribution", {}).items()}
    errors = {k: int(v) for k, v in data.get("errorDistribution", {}).items()}
    ok = statuses.get("200", 0)
    bad_status = sum(v for k, v in statuses.items() if k != "200")
    real_errors = sum(v for k, v in errors.items() if k != DEADLINE_ERR)
    total_s = data["summary"]["total"] or 1.0

    def us(key):
        v = pct.get(key)
        return None if v is None else v * 1e6

    return {
        "p50": us("p50"),
        "p99": us("p99"),
        "p99.9": us("p99.9"),
        "rps": ok / total_s,
        "errors": bad_status + real_errors,
        "error_kinds": {k: v for k, v in errors.items() if k != DEADLINE_ERR},
    }


# ---- statistics and formatting ---------------------------------------------------------------------

def mmm(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return (min(values), statistics.median(values), max(values))


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_us(v):
    if v is None:
        return "—"
    return f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}×"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def median_of(runs, name, key):
    if name not in runs:
        return None
    s = mmm([r[key] for _, r in runs[name]])
    return s[1] if s else None


# ---- subcommands ------------------------------------------------------------------------------------

def cmd_rate(out, transport, fraction):
    runs = load_runs(out, "wrk", "txt", parse_wrk)
    med = median_of(runs, f"nginx-{transport}", "rps")
    if med is None:
        sys.exit(f"report.py: no nginx-{transport} throughput runs in {out}/wrk")
    print(max(1, int(round(med * float(fraction)))))


def cmd_oha_line(path):
    r = parse_oha(path)
    print(
        f"{r['rps']:,.0f} req/s ok, p50 {fmt_us(r['p50'])} µs, p99 {fmt_us(r['p99'])} µs, "
        f"p99.9 {fmt_us(r['p99.9'])} µs, errors {r['errors']}"
    )


def status(ok):
    if ok is None:
        return "n/a"
    return "**met**" if ok else "**not met**"


def cmd_report(out, results_path):
    meta = read_meta(out)
    configs = meta.get("configs", "").split()
    rounds = int(meta.get("rounds", "0"))
    latency_on = meta.get("latency") == "1"
    lat_rounds = int(meta.get("lat_rounds", "0"))
    smoke = rounds < FULL_ROUNDS or (latency_on and lat_rounds < FULL_ROUNDS)
    wrk = load_runs(out, "wrk", "txt", parse_wrk)
    oha = load_runs(out, "oha", "json", parse_oha) if latency_on else {}
    rates = {}
    rates_path = os.path.join(out, "oha", "rates.txt")
    if os.path.exists(rates_path):
        with open(rates_path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.strip().split("=", 1)
                    rates[k] = float(v)

    def names(transport):
        return [c for c in configs if split_name(c)[1] == transport]

    L = []
    title = "# fngate benchmarks"
    if smoke:
        title += " — smoke run — not results"
    L.append(title)
    L.append("")
    if smoke:
        L.append(
            f"> **Smoke run — not results.** ROUNDS={rounds}"
            + (f", LAT_ROUNDS={lat_rounds}" if latency_on else "")
            + f" (< {FULL_ROUNDS}) and short durations: this only shows that the harness works end to end."
            " The figures below must not be quoted. A full run: `bench/run.sh`."
        )
        L.append("")
    L.append("Written by `bench/report.py` from the raw outputs of `bench/run.sh` (kept in `bench/out/`, git-ignored).")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    L.append(f"| date | {meta.get('date', '?')} |")
    L.append(f"| machine | `nproc` = {meta.get('nproc', '?')}, CPU: {meta.get('cpu', '?')}, kernel {meta.get('kernel', '?')} |")
    L.append(f"| commit | {meta.get('commit', '?')} |")
    L.append(f"| command | `{meta.get('command', '?')}` |")
    L.append(
        f"| pinning | proxy under test on core {meta.get('proxy_cpu')} (`taskset -c {meta.get('proxy_cpu')}`, one worker: "
        f"nginx `worker_processes 1`, HAProxy `nbthread 1`, fngate `TOKIO_WORKER_THREADS=1`); load generator "
        f"(wrk `-t1`, oha `--worker-threads 1`) and backend (demo-backend `--threads 1`) share core {meta.get('load_cpu')} |"
    )
    L.append(
        f"| workload | GET /bytes/{meta.get('payload', '1024')} (1 KiB body), HTTP/1.1 keep-alive, {meta.get('conns', '?')} connections; "
        f"throughput: wrk closed loop, {rounds} round(s) × {meta.get('dur', '?')} s per configuration, interleaved "
        f"(every configuration once per round, same order) after a short unrecorded warm-up |"
    )
    L.append(
        "| proxies | nginx: upstream `keepalive 256`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, "
        "`access_log off`; HAProxy: `http-reuse always`, no logging; fngate: static backend, per-request JSON log off "
        "(`[telemetry] log = { stdout = false }`), other telemetry at its defaults |"
    )
    L.append(
        "| TLS | one ECDSA P-256 certificate (SAN localhost, 127.0.0.1) for all three proxies; TLS 1.2–1.3 allowed, "
        "ALPN h2 + http/1.1 offered by the servers; the clients offer no ALPN, so HTTP/1.1; clients connect to "
        "`https://localhost:PORT` (SNI localhost, 127.0.0.1), keep-alive, so handshakes are ~64 per run. Negotiated (openssl s_client): "
        + tls_summary(out, configs) + " |"
    )
    L.append(
        f"| versions | {meta.get('fngate_version')}; {meta.get('nginx_version')}; {meta.get('haproxy_version')}; "
        f"{meta.get('wrk_version')}; {meta.get('oha_version')}; {meta.get('openssl_version')} |"
    )
    L.append("")

    # ---- targets first: the answer ----
    tp = {}
    for t in TRANSPORTS:
        for peer in PEERS:
            tp[(peer, t)] = median_of(wrk, f"{peer}-{t}", "rps")
    direct_plain = tp[("direct", "plain")]

    added = {}  # (peer, transport, pct) -> µs
    if latency_on:
        for t in TRANSPORTS:
            for peer in PEERS:
                name = f"{peer}-{t}"
                if name not in oha or peer == "direct":
                    continue
                base_name = "direct-tlsrate" if t == "tls" and "direct-tlsrate" in oha else "direct-plain"
                for p in ("p50", "p99", "p99.9"):
                    med = median_of(oha, name, p)
                    base = median_of(oha, base_name, p)
                    added[(peer, t, p)] = None if med is None or base is None else med - base

    L.append("## Targets (from BENCH.md)")
    L.append("")
    if smoke:
        L.append("_Smoke run: met / not met below only exercises the report; it says nothing about fngate._")
        L.append("")
    L.append("| target | measured (ratio of medians / difference of medians) | status |")
    L.append("|---|---|---|")
    for t in TRANSPORTS:
        for peer in ("nginx", "haproxy"):
            r = ratio(tp[("fngate", t)], tp[(peer, t)])
            L.append(
                f"| {TRANSPORT_LABEL[t]} throughput: fngate ≥ {THROUGHPUT_TARGET}× {LABEL[peer]} | {fmt_ratio(r)} | "
                f"{status(None if r is None else r >= THROUGHPUT_TARGET)} |"
            )
    for t in TRANSPORTS:
        for p, target in (("p50", ADDED_P50_TARGET_US), ("p99", ADDED_P99_TARGET_US)):
            v = added.get(("fngate", t, p)) if latency_on else None
            L.append(
                f"| {TRANSPORT_LABEL[t]} added {p} latency over direct at {fraction_pct(meta)} load: ≤ {target:.0f} µs | "
                + ("— (latency part not run)" if not latency_on else f"{fmt_us(v)} µs")
                + f" | {status(None if v is None else v <= target)} |"
            )
    L.append("")

    # ---- throughput ----
    L.append("## Throughput (wrk, requests/s, higher is better)")
    L.append("")
    L.append("| configuration | transport | runs | min | median | max | errors |")
    L.append("|---|---|---|---|---|---|---|")
    warnings = []
    for t in TRANSPORTS:
        for name in names(t):
            peer = split_name(name)[0]
            rs = [r for _, r in wrk.get(name, [])]
            s = mmm([r["rps"] for r in rs])
            errs = sum(r["non2xx"] + r["socket_errors"] for r in rs)
            if errs:
                warnings.append(f"{name}: {errs} non-2xx responses or socket errors in wrk runs")
            L.append(
                f"| {LABEL.get(peer, peer)} | {t} | {len(rs)} | "
                + (" | ".join(fmt_int(x) for x in s) if s else "— | — | —")
                + f" | {errs} |"
            )
    L.append("")
    L.append("Ratios of medians (the backend speaks plaintext only, so *direct* is plaintext in both rows):")
    L.append("")
    L.append("| transport | fngate / nginx | fngate / HAProxy | fngate / direct | nginx / direct | HAProxy / direct |")
    L.append("|---|---|---|---|---|---|")
    for t in TRANSPORTS:
        f_ = tp[("fngate", t)]
        L.append(
            f"| {t} | {fmt_ratio(ratio(f_, tp[('nginx', t)]))} | {fmt_ratio(ratio(f_, tp[('haproxy', t)]))} | "
            f"{fmt_ratio(ratio(f_, direct_plain))} | {fmt_ratio(ratio(tp[('nginx', t)], direct_plain))} | "
            f"{fmt_ratio(ratio(tp[('haproxy', t)], direct_plain))} |"
        )
    if any(split_name(c)[0] == "fngatelog" for c in configs):
        L.append("")
        L.append("Per-request log on (stdout to /dev/null) relative to log off, ratio of medians: "
                 + ", ".join(f"{t} {fmt_ratio(ratio(tp[('fngatelog', t)], tp[('fngate', t)]))}" for t in TRANSPORTS))
    L.append("")

    # ---- latency ----
    L.append(f"## Latency at a fixed rate (oha, open loop, µs, lower is better)")
    L.append("")
    if not latency_on:
        L.append(f"Not measured: {meta.get('latency_note') or 'latency part skipped'}.")
        L.append("")
    else:
        L.append(
            f"Rate per transport = {fraction_pct(meta)} of nginx's median throughput above, the same rate for every "
            f"configuration of that transport: plaintext {fmt_int(rates.get('plain'))} req/s, TLS {fmt_int(rates.get('tls'))} req/s. "
            f"`oha -z {meta.get('lat_dur')}s -q RATE --latency-correction -c {meta.get('conns')} --no-tui --output-format json`, "
            f"{lat_rounds} round(s), interleaved. Each cell: min / median / max over rounds."
        )
        L.append("")
        L.append("| configuration | transport | runs | achieved req/s (median) | p50 | p99 | p99.9 | errors |")
        L.append("|---|---|---|---|---|---|---|---|")
        for t in TRANSPORTS:
            lat_names = names(t)
            if t == "tls" and "direct-tlsrate" in oha:
                lat_names = ["direct-tlsrate"] + lat_names
            for name in lat_names:
                peer = split_name(name)[0]
                rs = [r for _, r in oha.get(name, [])]
                cells = []
                for p in ("p50", "p99", "p99.9"):
                    s = mmm([r[p] for r in rs])
                    cells.append(" / ".join(fmt_us(x) for x in s) if s else "—")
                ach = mmm([r["rps"] for r in rs])
                errs = sum(r["errors"] for r in rs)
                target_rate = rates.get(t)
                if ach and target_rate and ach[1] < 0.95 * target_rate:
                    warnings.append(f"{name}: achieved {ach[1]:,.0f} req/s, below 95% of the fixed rate {target_rate:,.0f}")
                if errs:
                    kinds = {}
                    for r in rs:
                        for k, v in r["error_kinds"].items():
                            kinds[k] = kinds.get(k, 0) + v
                    warnings.append(f"{name}: {errs} failed requests in oha runs {kinds if kinds else '(non-200 status)'}")
                label = "direct (plaintext, at the TLS rate)" if name == "direct-tlsrate" else LABEL.get(peer, peer)
                L.append(
                    f"| {label} | {t} | {len(rs)} | {fmt_int(ach[1]) if ach else '—'} | "
                    + " | ".join(cells) + f" | {errs} |"
                )
        L.append("")
        L.append("Added latency over direct, µs (median of the configuration − median of direct at the same rate; "
                 "direct is plaintext, since the backend has no TLS, so TLS rows include the cost of TLS itself):")
        L.append("")
        L.append("| configuration | transport | added p50 | added p99 | added p99.9 |")
        L.append("|---|---|---|---|---|")
        for t in TRANSPORTS:
            for name in names(t):
                peer = split_name(name)[0]
                if peer == "direct":
                    continue
                L.append(
                    f"| {LABEL.get(peer, peer)} | {t} | "
                    + " | ".join(fmt_us(added.get((peer, t, p))) for p in ("p50", "p99", "p99.9"))
                    + " |"
                )
        L.append("")

    L.append("## Validity")
    L.append("")
    if warnings:
        for w in warnings:
            L.append(f"- ⚠ {w}")
    else:
        L.append("- No errors, non-2xx responses or missed rates in any recorded run.")
    L.append("- Noise: this is a shared 2-core machine; compare ratios measured in one run, not absolute req/s across runs.")
    if latency_on and "direct-plain" in oha:
        s99 = mmm([r["p99"] for _, r in oha["direct-plain"]])
        s50 = mmm([r["p50"] for _, r in oha["direct-plain"]])
        if s99 and s50:
            L.append(
                f"- Latency floor: direct alone (load generator and backend sharing core {meta.get('load_cpu')}) has "
                f"p50 {fmt_us(s50[1])} µs and p99 {fmt_us(s99[0])} / {fmt_us(s99[1])} / {fmt_us(s99[2])} µs (min / median / max). "
                "Added latency much smaller than that spread is within noise; BENCH.md takes absolute times only "
                "from a device machine."
            )
    L.append("")
    L.append("Raw outputs: `bench/out/wrk/*.txt` (wrk), `bench/out/oha/*.json` (oha), configs and logs of each proxy under "
             "`bench/out/{nginx,haproxy,fngate}/`, `bench/out/meta.txt`.")
    L.append("")

    with open(results_path, "w") as f:
        f.write("\n".join(L))


def fraction_pct(meta):
    try:
        return f"{float(meta.get('lat_fraction', '0.5')) * 100:.0f}%"
    except ValueError:
        return meta.get("lat_fraction", "?")


def tls_summary(out, configs):
    parts = []
    for c in configs:
        path = os.path.join(out, "tlscheck", f"{c}.txt")
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        proto = re.search(r"Protocol version:\s*(\S+)", text)
        cipher = re.search(r"Ciphersuite:\s*(\S+)", text)
        verified = "Verification: OK" in text
        parts.append(
            f"{split_name(c)[0]} {proto.group(1) if proto else '?'} {cipher.group(1) if cipher else '?'}"
            + ("" if verified else " (chain NOT verified)")
        )
    return "; ".join(parts) if parts else "not checked"


def main(argv):
    if len(argv) >= 5 and argv[1] == "rate":
        cmd_rate(argv[2], argv[3], argv[4])
    elif len(argv) >= 3 and argv[1] == "oha-line":
        cmd_oha_line(argv[2])
    elif len(argv) >= 4 and argv[1] == "report":
        cmd_report(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
