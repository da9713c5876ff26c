#!/usr/bin/env python3
"""Reports for the "Instances: cold start and scheduling" section of bench/RESULTS.md.

    python3 bench/instances_report.py coldstart bench/out/coldstart bench/RESULTS.md
    python3 bench/instances_report.py scheduler bench/out/scheduler bench/RESULTS.md

Each subcommand reads the raw outputs of its script (bench/coldstart.sh, bench/scheduler.sh),
prints its part and replaces only that part ("### …") of the section, creating the section at
the end of the file if it is missing. Other sections are left as they are.
"""
import json
import pathlib
import re
import statistics
import sys

SECTION = "## Instances: cold start and scheduling"
COLD = "### Gateway share of a cold start"
SCHED = "### Scheduling decisions per second"
INTRO = (
    "Issue 4, item 8. Two figures: the gateway's own share of a cold start (`bench/coldstart.sh`) "
    "and scheduling decisions per second with 1,000 functions configured (`bench/scheduler.sh`). "
    "Each part below is rewritten by its own script and carries its own date, machine, commit and command."
)


def meta(out):
    m = {}
    for line in (out / "meta.txt").read_text().splitlines():
        k, _, v = line.partition("=")
        m[k] = v
    return m


def header(m, extra):
    rows = [
        ("date", m["date"]),
        ("machine", f"`nproc` = {m['nproc']}, CPU: {m['cpu']}, kernel {m['kernel']}"),
        ("commit", m["commit"]),
        ("command", f"`{m['command']}`"),
    ] + ([("build", f"`{m['build']}`")] if "build" in m else []) + extra
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def q(v, p):
    """Quantile by linear interpolation (p in 0..1)."""
    s = sorted(v)
    if len(s) == 1:
        return s[0]
    x = p * (len(s) - 1)
    i = int(x)
    return s[i] if i + 1 >= len(s) else s[i] + (s[i + 1] - s[i]) * (x - i)


def fields(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def replace_part(path, title, lines):
    res = pathlib.Path(path)
    text = res.read_text() if res.exists() else "# fngate benchmarks\n"
    part = "\n".join(lines).rstrip() + "\n"
    if SECTION not in text:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{INTRO}\n"
    start = text.index(SECTION)
    m = re.search(r"\n## ", text[start + len(SECTION):])
    end = start + len(SECTION) + m.start() + 1 if m else len(text)
    sec = text[start:end]
    # The title may carry a suffix (" — smoke run, not results").
    pat = re.compile(r"\n" + re.escape(title) + r"[^\n]*\n.*?(?=\n### |\Z)", re.S)
    if pat.search(sec):
        sec = pat.sub(lambda _: "\n" + part, sec.rstrip() + "\n")
    else:
        # Cold start first, then scheduling.
        other = SCHED if title == COLD else None
        if other and ("\n" + other) in sec:
            i = sec.index("\n" + other)
            sec = sec[:i] + "\n" + part + sec[i:]
        else:
            sec = sec.rstrip() + "\n\n" + part
    text = text[:start] + sec.rstrip() + "\n" + ("\n" + text[end:].lstrip("\n") if end < len(text) else "")
    res.write_text(text)


def fmt(x):
    return f"{x:.2f}"


def coldstart(out, results):
    out = pathlib.Path(out)
    m = meta(out)
    cmd = {"ROUNDS": m["rounds"], "POLL_US": m["poll_us"], "GAP_MS": m["gap_ms"], "PIN": m["pin"],
           "GW_CPU": m["gw_cpu"], "CLIENT_CPU": m["client_cpu"]}
    rounds = int(cmd["ROUNDS"])
    smoke = rounds < 5
    variants = []
    for l in (out / "variants.txt").read_text().splitlines():
        name, count, *args = l.split()
        variants.append((name, " ".join(["demo-backend", *args]), count))
    lines = [COLD + (" — smoke run, not results" if smoke else ""), ""]
    pin = (f"launcher and its instances on core {cmd['GW_CPU']} (fngate `TOKIO_WORKER_THREADS=1`, "
           f"or the direct launcher; instances inherit the affinity), client on core {cmd['CLIENT_CPU']} (`taskset -c`)"
           if cmd["PIN"] == "1" else "none")
    lines += header(m, [
        ("pinning", pin),
        ("workload", f"{rounds} interleaved rounds (" + ", ".join(f"{v}-direct, {v}-fngate" for v, _, _ in variants) + "); per batch one fresh "
                     "fngate (or the direct launcher) and " + " / ".join(f"{c} ({v})" for v, _, c in variants) + " cold starts, "
                     f"one at a time, {cmd['GAP_MS']} ms apart; request GET /bytes/1024 (1 KiB), HTTP/1.1, new connection, "
                     "`Connection: close`; after each fast fngate batch a second, warm pass over the same functions"),
        ("direct", f"`gateway/examples/cold_start.rs direct`: spawn the release demo-backend with `PORT` (environment cleared "
                   f"to fngate's base variables, output to /dev/null), connect + GET /health every {cmd['POLL_US']} µs until "
                   "200, then GET /bytes/1024 on a new connection; clock from just before the spawn to the first response byte"),
        ("fngate", "release fngate, plaintext listener on 127.0.0.1:0, one process-backend function per request "
                   "(`command = [demo-backend …]`, readiness `/health`, defaults otherwise: start-up probes every 1 ms, "
                   "every 1 ms while the port refuses connections, backing off to 5 ms while it answers non-2xx), per-invocation JSON log on (stdout to a file); "
                   "`gateway/examples/cold_start.rs gateway`: clock from just before the connect to the first response byte"),
    ])
    summary = []
    for v, desc, _ in variants:
        direct, gw, logs = [], [], {}
        per_round = []
        for r in range(1, rounds + 1):
            d = [fields(l) for l in (out / f"direct-{v}-{r}.txt").read_text().splitlines() if l.startswith("direct ")]
            g = [fields(l) for l in (out / f"gateway-{v}-{r}.txt").read_text().splitlines() if l.startswith("gateway ")]
            for l in (out / f"gw-{v}-{r}" / "stdout.log").read_text().splitlines():
                try:
                    j = json.loads(l)
                except ValueError:
                    continue
                if j.get("kind") == "invocation":
                    logs[j["request_id"]] = j
            direct += d
            gw += g
            per_round.append((statistics.median(float(x["first_byte_us"]) for x in d),
                              statistics.median(float(x["first_byte_us"]) for x in g)))
        bad = [x for x in direct + gw if x["status"] != "200" or x["body"] != "1024"]
        warm = [x for x in gw if x["cold_start_ms"] == "-"]
        d_spawn = [float(x["spawn_us"]) / 1e3 for x in direct]
        d_ready = [float(x["ready_us"]) / 1e3 for x in direct]
        d_first = [float(x["first_byte_us"]) / 1e3 for x in direct]
        g_first = [float(x["first_byte_us"]) / 1e3 for x in gw]
        d_first0 = [float(x["first_byte_us"]) / 1e3 for x in direct if x["i"] == "0"]
        g_first0 = [float(x["first_byte_us"]) / 1e3 for x in gw if x["i"] == "0"]
        d_rest = [float(x["first_byte_us"]) / 1e3 for x in direct if x["i"] != "0"]
        g_rest = [float(x["first_byte_us"]) / 1e3 for x in gw if x["i"] != "0"]
        lg = [(x, logs[x["request_id"]]) for x in gw if x["request_id"] in logs]
        lg = [(x, j) for x, j in lg if j.get("cold_start_ms") is not None]
        wait = [j["cold_start_ms"] for _, j in lg]
        spawn = [j["cold_start_spawn_ms"] for _, j in lg]
        ready = [j["cold_start_readiness_ms"] for _, j in lg]
        g_ready = [j["cold_start_spawn_ms"] + j["cold_start_readiness_ms"] for _, j in lg]
        # Client's first byte minus the request's wait for its instance (from the log, µs
        # precision): accept + routing before the wait, then forwarding and the first byte back.
        after = [float(x["first_byte_us"]) / 1e3 - j["cold_start_ms"] for x, j in lg]
        d_after = [float(x["first_byte_us"]) / 1e3 - float(x["ready_us"]) / 1e3 for x in direct]
        med = statistics.median
        share = med(g_first) - med(d_first)
        round_shares = [(b - a) / 1e3 for a, b in per_round]
        lines += ["", f"**{v}** backend (`{desc}`), all samples pooled over {rounds} rounds, ms:", "",
                  "| measurement | n | min | p25 | median | p75 | p90 | max |", "|---|---|---|---|---|---|---|---|"]

        def row(name, vals):
            if vals:
                lines.append(f"| {name} | {len(vals)} | " + " | ".join(fmt(q(vals, p)) for p in (0, .25, .5, .75, .9, 1)) + " |")

        row("**direct: spawn → first byte of GET /bytes/1024**", d_first)
        row("**fngate: request → first byte (client)**", g_first)
        row("direct: `Command::spawn` returned (posix_spawn, child exec'd)", d_spawn)
        row("fngate log: `cold_start_spawn_ms` (port, pipes, fork + exec)", spawn)
        row("direct: spawn → /health answers 200", d_ready)
        row("fngate log: spawn + readiness (→ first passing probe)", g_ready)
        row("fngate log: `cold_start_readiness_ms` (spawned → probe passed)", ready)
        row("fngate log: `cold_start_ms` (the request's wait; the header is this in whole ms)", wait)
        row("direct: ready → first byte (new connection + request)", d_after)
        row("fngate: first byte − `cold_start_ms` (accept, route, forward, first byte back)", after)
        warm_f = []
        for r in range(1, rounds + 1):
            w = out / f"warm-{v}-{r}.txt"
            if w.exists():
                warm_f += [float(fields(l)["first_byte_us"]) / 1e3 for l in w.read_text().splitlines() if l.startswith("gateway ")]
        row("fngate, warm (second request per function: instance up, upstream connection pooled)", warm_f)
        row("direct: first instance of a batch", d_first0)
        row("fngate: first cold start after fngate started", g_first0)
        row("direct: instances 2… of a batch", d_rest)
        row("fngate: cold starts 2… after fngate started", g_rest)
        lines += ["",
                  f"Gateway share (median fngate − median direct, first byte): **{share:.2f} ms** "
                  f"(fngate / direct = {med(g_first) / med(d_first):.2f}×). "
                  f"Per round (median − median): min {min(round_shares):.2f} / median {med(round_shares):.2f} / "
                  f"max {max(round_shares):.2f} ms. Difference of quantiles: p25 {q(g_first, .25) - q(d_first, .25):.2f}, "
                  f"p75 {q(g_first, .75) - q(d_first, .75):.2f}, p90 {q(g_first, .9) - q(d_first, .9):.2f} ms."]
        if lg:
            lines.append(f"Where it goes (differences of medians): spawning {med(spawn) - med(d_spawn):+.2f} ms, "
                         f"spawn → ready {med(ready) - (med(d_ready) - med(d_spawn)):+.2f} ms "
                         f"(probe period: fngate ~1 ms on tokio's timer while the port refuses connections; direct {cmd['POLL_US']} µs), "
                         f"ready → first byte {med(after) - med(d_after):+.2f} ms.")
        if bad or warm or len(lg) != len(gw):
            lines.append(f"Validity: {len(bad)} answer(s) not 200 with 1024 bytes, {len(warm)} fngate request(s) without "
                         f"`x-fngate-cold-start`, {len(gw) - len(lg)} without a cold-start log line.")
        summary.append((v, share, statistics.median(round_shares)))
    lines += ["", "Target (BENCH.md): gateway share of a cold start ≤ 2 ms median — " + "; ".join(
        f"{v}: **{'met' if s <= 2 else 'not met'}** ({s:.2f} ms)" for v, s, _ in summary) + "."]
    lines.append("")
    replace_part(results, COLD, lines)
    print("\n".join(lines))


def scheduler(out, results):
    out = pathlib.Path(out)
    m = meta(out)
    runs = sorted(out.glob("run-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
    data, order, info = {}, [], ""
    for p in runs:
        for l in p.read_text().splitlines():
            if l.startswith("functions="):
                info = l
            elif l.startswith("mode="):
                f = dict(kv.split("=", 1) for kv in l.split())
                key = (f["mode"], f["metrics"])
                if key not in data:
                    order.append(key)
                    data[key] = {"tasks": f["tasks"], "dps": [], "ns": []}
                data[key]["dps"].append(float(f["decisions_per_s"]))
                data[key]["ns"].append(float(f["ns_per_decision"]))
    smoke = len(runs) < 5
    inf = dict(kv.split("=", 1) for kv in info.split())
    lines = [SCHED + (" — smoke run, not results" if smoke else ""), ""]
    lines += header(m, [
        ("program", "`gateway/examples/scheduler_rate.rs`: "
                    f"{inf.get('functions')} `FunctionRuntime`s (static backend, {inf.get('endpoints_per_function')} endpoints, "
                    f"`instance_concurrency` {inf.get('instance_concurrency')}: {int(inf.get('endpoints_per_function', 0)) * int(inf.get('instance_concurrency', 0))} slots each), "
                    f"one decision = `acquire(0)` + dropping the slot; {inf.get('iters')} decisions per mode (a quarter of that for the queue mode)"),
        ("runs", f"{len(runs)} separate processes, medians over runs; not pinned (the multi-thread modes use both cores, {inf.get('workers')} tokio workers)"),
        ("metrics", "`off`: built before a recorder exists (no-op handles); `on`: built after `fngate::telemetry::install_metrics()` (the Prometheus recorder `fngate serve` installs), so every decision also moves the in-flight gauge"),
    ])
    desc = {
        "single": "one task, current-thread runtime, pseudo-random function (LCG)",
        "spread-t2": "2 tasks, 2 workers, pseudo-random functions",
        "spread-t8": "8 tasks, 2 workers, pseudo-random functions",
        "one-fn-t2": "2 tasks, 2 workers, all on one function (lock contention)",
        "one-fn-t8": "8 tasks, 2 workers, all on one function (lock contention)",
        "one-fn-queue-t32": "32 tasks on one function's 8 slots, each holding its slot across a yield: queue + hand-over",
    }
    lines += ["", "| mode | metrics | decisions/s min | **median** | max | ns/decision (median) |", "|---|---|---|---|---|---|"]
    for key in order:
        d = data[key]
        lines.append(f"| {key[0]}: {desc.get(key[0], '')} | {key[1]} | {min(d['dps']):,.0f} | **{statistics.median(d['dps']):,.0f}** | "
                     f"{max(d['dps']):,.0f} | {statistics.median(d['ns']):.0f} |")
    lines += ["", f"Build time for {inf.get('functions')} runtimes: metrics off {inf.get('build_ms_off')} ms, on {inf.get('build_ms_on')} ms (last run). "
              "ns/decision in the multi-task modes is wall time / decisions (inverse throughput of both workers together).", ""]
    replace_part(results, SCHED, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("coldstart", "scheduler"):
        sys.exit(__doc__)
    {"coldstart": coldstart, "scheduler": scheduler}[sys.argv[1]](sys.argv[2], sys.argv[3])
