#!/usr/bin/env python3
"""Markdown summary of a bench/gpu/run.sh output directory, on stdout.

    python3 bench/gpu/report.py bench/gpu/out > bench/gpu/out/gpu-results.md

Reads what run.sh wrote (every file optional: a phase that failed leaves gaps, shown as "-"):
env.json, phases.txt, notes.txt, runs.txt (measured runs in order), NAME.start.json (direct
launch -> ready and the server's /stats), NAME.load.json and NAME.requests.jsonl
(bench/gpu/load.py), NAME.stats.json (server /stats after a run), NAME.gpu-mem.csv (nvidia-smi
per process), fngate-*.json (admin API answers), fngate.stdout.jsonl (fngate's log lines),
fngate-stop.txt, total_seconds.txt.
"""

import json
import os
import sys


def load(directory, name):
    try:
        with open(os.path.join(directory, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lines_of(directory, name):
    try:
        with open(os.path.join(directory, name)) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except OSError:
        return []


def jsonl(directory, name):
    out = []
    for line in lines_of(directory, name):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def f(value, digits=1, scale=1.0):
    """A number for a table cell, or "-"."""
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f}"


def pct(summary, key, p):
    block = (summary or {}).get(key) or {}
    return block.get(p)


def gpu_memory(directory, name):
    """{pid: "N MiB"} from NAME.gpu-mem.csv (nvidia-smi --query-compute-apps=pid,used_memory)."""
    mem = {}
    for line in lines_of(directory, f"{name}.gpu-mem.csv"):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            mem[int(parts[0])] = parts[1]
    return mem


def breakdown(stats):
    """The server's own start-up, in seconds: (interpreter, import, cuda, build, to device,
    warm-up, process start -> port open incl. interpreter)."""
    s = stats or {}
    interp = s.get("interpreter_start_s")
    ready = s.get("ready_time_s")
    own = ready + (interp or 0.0) if ready is not None else None
    return (interp, s.get("import_time_s"), s.get("cuda_init_time_s"), s.get("build_time_s"),
            s.get("to_device_time_s"), s.get("warmup_time_s"), own)


def report(d):
    env = load(d, "env.json") or {}
    phases = [line.split(" ", 3) for line in lines_of(d, "phases.txt")]
    runs = lines_of(d, "runs.txt")
    starts = [n for n in ("direct", "direct-nobatch") if load(d, f"{n}.start.json")]
    first = (load(d, f"{starts[0]}.start.json") or {}).get("stats", {}) if starts else \
        load(d, "fngate-cold.stats.json") or {}
    model = first.get("model", {})
    on_gpu = first.get("device", "cpu") != "cpu"
    loads = {name: load(d, f"{name}.load.json") for name in runs}
    direct_start = load(d, "direct.start.json")

    out = ["# GPU model function behind fngate: benchmark (examples/gpu-model, bench/gpu/run.sh)",
           ""]
    if not on_gpu or model.get("size") == "tiny" or env.get("tiny"):
        out += ["**Harness check, not results**: the model ran on "
                f"{first.get('device', '?')} at size {model.get('size', '?')}; fngate's GPU pool "
                "is bookkeeping only here (the instances got their slice in the environment and "
                "ignored it on the CPU).", ""]
    gpu = env.get("nvidia_smi") or env.get("torch_gpu") or "none (CPU)"
    total = lines_of(d, "total_seconds.txt")
    out += [f"- date: {env.get('date_utc', '?')}; host {env.get('host', '?')}, "
            f"{env.get('nproc', '?')} CPUs",
            f"- GPU: {gpu}" + (f" (`nvidia-smi -L`: {env['nvidia_smi_list']})"
                                if env.get("nvidia_smi_list") else ""),
            f"- torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), Python "
            f"{env.get('python', '?')}; {env.get('fngate_version') or 'fngate ?'} "
            f"(`{env.get('fngate_bin', '?')}`); commit {env.get('commit', '?')}",
            f"- command: `{env.get('command', 'bench/gpu/run.sh')}`"
            + (f"; {total[0]} s wall time in all" if total else ""),
            f"- model: {model.get('size', '?')}, {first.get('params', 0) / 1e6:.1f}M params, "
            f"{model.get('dtype', '?')}, {model.get('layers')} layers, d_model "
            f"{model.get('d_model')}, {model.get('heads')} heads, vocab {model.get('vocab')}, "
            f"context {model.get('max_context')}; KV cache "
            f"{first.get('kv_cache_bytes', 0) / 2**20:.0f} MiB; device {first.get('device')} "
            f"({first.get('device_name')})",
            f"- load: {env.get('max_tokens', '?')} tokens per request, greedy, streaming SSE over "
            "keep-alive HTTP/1.1, closed loop (each client sends its next request when the "
            f"previous one ends) for {env.get('run_seconds', '?')} s per run after "
            f"{env.get('warmup_requests', '?')} unrecorded warm-up request(s) per client",
            f"- fngate: function `llm/generate`, process backend, instance_concurrency "
            f"{env.get('max_batch', '?')} (= server --max-batch), GPU pool one "
            f"`{env.get('gpu_type', '?')}` of {env.get('card_gb', '?')} GB, each instance a "
            f"{env.get('slice_gb', '?')} GB slice; plaintext listener unless marked TLS", ""]

    if phases:
        out += ["| phase | status | seconds | note |", "|---|---|---:|---|"]
        for p in phases:
            p += [""] * (4 - len(p))
            out.append(f"| {p[0]} | {p[1]} | {p[2]} | {p[3]} |")
        out.append("")
    notes = lines_of(d, "notes.txt")
    if notes:
        out += ["Notes from the run:", ""] + [f"- {n}" for n in notes] + [""]

    # ---- cold start ----
    out += ["## Cold start", "",
            "The server's own breakdown (its /stats): interpreter = process creation to the "
            "script's first line (from /proc, 10 ms ticks); own start = interpreter + process "
            "start to port open.", "",
            "| start | launch → ready s | interpreter s | torch import s | CUDA init s "
            "| build weights s | to device s | warm-up s | own start s | GPU memory |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in starts:
        start = load(d, f"{name}.start.json")
        b = breakdown(start["stats"])
        mem = " ".join(gpu_memory(d, name).values()) or "-"
        out.append(f"| {name} (launched by run.sh; ready = its /health polled every 20 ms) "
                   f"| {f(start['launch_to_ready_s'], 2)} | "
                   + " | ".join(f(x, 2) for x in b) + f" | {mem} |")
    cold_rec = (jsonl(d, "fngate-cold.requests.jsonl") or [None])[0]
    cold_stats = load(d, "fngate-cold.stats.json")
    log_lines = jsonl(d, "fngate.stdout.jsonl")
    cold_log = None
    if cold_rec:
        cold_log = next((x for x in log_lines if x.get("kind") == "invocation"
                         and x.get("request_id") == cold_rec.get("request_id")), None)
    if cold_stats:
        b = breakdown(cold_stats)
        spawn_ready = None
        if cold_log and cold_log.get("cold_start_spawn_ms") is not None:
            spawn_ready = (cold_log["cold_start_spawn_ms"]
                           + cold_log["cold_start_readiness_ms"]) / 1000
        out.append("| fngate instance 1 (spawn + readiness from fngate's log line) | "
                   f"{f(spawn_ready, 2)} | " + " | ".join(f(x, 2) for x in b) + " | "
                   + (" ".join(gpu_memory(d, "fngate-cold").values()) or "-") + " |")
    out.append("")

    if cold_rec:
        cs_header = cold_rec.get("cold_start_ms")
        out += ["### Through fngate: the first request, with no instance running", "",
                "| measure | ms |", "|---|---:|",
                f"| client: send → response head (TTFB) | {f(cold_rec.get('ttfb_s'), 1, 1000)} |",
                f"| client: send → first token | {f(cold_rec.get('ttft_s'), 1, 1000)} |",
                f"| `x-fngate-cold-start` header (the request's wait) | {cs_header or '-'} |"]
        if cold_log:
            out += [f"| log line `cold_start_ms` | {f(cold_log.get('cold_start_ms'))} |",
                    f"| log line `cold_start_spawn_ms` (port, GPU placement, spawn) "
                    f"| {f(cold_log.get('cold_start_spawn_ms'), 2)} |",
                    f"| log line `cold_start_readiness_ms` (spawn → first 2xx /health) "
                    f"| {f(cold_log.get('cold_start_readiness_ms'))} |",
                    f"| log line `upstream_ms` (instance: request → end of stream) "
                    f"| {f(cold_log.get('upstream_ms'))} |"]
        own = breakdown(cold_stats)[6] if cold_stats else None
        ready_only = (cold_stats or {}).get("ready_time_s")
        if own is not None:
            out.append(f"| the instance's own start (interpreter + process start → port open) "
                       f"| {f(own, 1, 1000)} |")
        out.append("")
        lines = []
        try:
            wait = float(cold_log["cold_start_ms"]) if cold_log else float(cs_header)
        except (TypeError, ValueError):
            wait = None
        if wait is not None and own is not None:
            lines.append(
                f"- Gateway share, same instance: the request's cold-start wait − the instance's "
                f"own start = **{wait - own * 1000:.1f} ms** (± 10 ms: the interpreter start is "
                f"read in clock ticks); without subtracting the interpreter start (an upper "
                f"bound that charges Python's start to the gateway): {wait - ready_only * 1000:.1f} ms. "
                "This is spawn + readiness-probe detection (probes back off from 1 ms to 20 ms) "
                "+ scheduling.")
        warm = loads.get("direct-c1")
        if cold_rec.get("ttfb_s") is not None and direct_start and warm:
            warm_ttfb = pct(warm, "ttfb_ms", "p50")
            share = (cold_rec["ttfb_s"] - direct_start["launch_to_ready_s"]) * 1000 - warm_ttfb
            lines.append(
                f"- Gateway share against the direct run (BENCH.md's definition: spawn → ready → "
                f"first byte through fngate, minus the backend's own launch → ready in the direct "
                f"run ({direct_start['launch_to_ready_s']:.2f} s) and a warm direct request's "
                f"time to first byte ({warm_ttfb:.1f} ms)) = **{share:.0f} ms**. Indicative only: "
                "on a GPU machine the backend's own start (torch import from a warm or cold page "
                "cache, CUDA context, weight build) varies between two starts by far more than "
                "the gateway's part; the same-instance figure above is the better estimate.")
        out += lines + [""]
    second = None
    for inst in (load(d, "fngate-shared.instances.json") or {}).get("instances", []):
        if cold_rec and inst.get("id") != cold_rec.get("instance"):
            second = inst
    if second and second.get("cold_start_ms"):
        c = second["cold_start_ms"]
        out += [f"The second instance ({second['id']}, started by the provisioned target while "
                f"the first one was running): spawn {c['spawn']:.1f} ms, readiness "
                f"{c['readiness']:.0f} ms.", ""]

    # ---- load ----
    out += ["## Load", "",
            "| run | clients | server max batch | max batch seen | instances | requests | errors "
            "| req/s | tokens/s | latency p50 / p99 ms | TTFB p50 ms | TTFT p50 / p99 ms "
            "| per token p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in runs:
        s = loads[name]
        if not s:
            continue
        stats = load(d, f"{name}.stats.json") or {}
        out.append(
            f"| {name} | {s['clients']} | {stats.get('max_batch', '-')} "
            f"| {stats.get('max_batch_size_seen', '-')} "
            f"| {len(s.get('instances') or {}) if name.startswith('fngate') else '-'} "
            f"| {s['count']} | {s['errors']} "
            f"| {f(s['req_per_s'], 2)} | {f(s['tokens_per_s'], 0)} "
            f"| {f(pct(s, 'latency_ms', 'p50'))} / {f(pct(s, 'latency_ms', 'p99'))} "
            f"| {f(pct(s, 'ttfb_ms', 'p50'), 2)} "
            f"| {f(pct(s, 'ttft_ms', 'p50'))} / {f(pct(s, 'ttft_ms', 'p99'))} "
            f"| {f(pct(s, 'tpot_ms', 'p50'), 2)} |")
    out += ["", "`max batch seen` is the server's largest decode batch since it started "
            "(cumulative over its runs). p99 of a run with fewer than 100 requests is its "
            "maximum.", ""]
    for name in runs:
        if name.startswith("direct-nobatch-c"):
            batched = "direct-c" + name[len("direct-nobatch-c"):]
            if (loads.get(batched) or {}).get("tokens_per_s") and loads[name].get("tokens_per_s"):
                out += [f"**Batching**: {batched} (max batch {env.get('max_batch', 8)}) gives "
                        f"{loads[batched]['tokens_per_s'] / loads[name]['tokens_per_s']:.2f}× the "
                        f"tokens/s of {name} (same clients, --max-batch 1); requests/s "
                        f"{loads[batched]['req_per_s']:.2f} vs {loads[name]['req_per_s']:.2f}.", ""]

    pairs = []
    for name in runs:
        for prefix, label in (("fngate-tls-c", "TLS"), ("fngate-c", "plaintext")):
            if name.startswith(prefix):
                for peer in ("instance-c", "direct-c"):
                    direct = peer + name[len(prefix):]
                    if loads.get(direct) and loads.get(name):
                        pairs.append((label, name, direct))
                break
    if pairs:
        out += ["### Through fngate vs direct (same load)", "",
                "`instance-cN`: the same load sent straight to the instance fngate started, "
                "right after the fngate run (same process, same warm state): the fair peer. "
                "`direct-cN`: the server run.sh started itself in the first phase (another "
                "process, minutes earlier).", "",
                "| run | vs | latency p50 ms (Δ) | latency p99 ms (Δ) | TTFT p50 ms (Δ) "
                "| TTFB p50 ms (Δ) | tokens/s ratio |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for label, name, direct in pairs:
            a, b = loads[name], loads[direct]

            def delta(key, p, digits=1):
                x, y = pct(a, key, p), pct(b, key, p)
                if x is None or y is None:
                    return "-"
                return f"{x:.{digits}f} vs {y:.{digits}f} ({x - y:+.{digits}f})"
            ratio = (a["tokens_per_s"] / b["tokens_per_s"]) if b.get("tokens_per_s") else None
            out.append(f"| {name} ({label}) | {direct} | {delta('latency_ms', 'p50')} "
                       f"| {delta('latency_ms', 'p99')} | {delta('ttft_ms', 'p50')} "
                       f"| {delta('ttfb_ms', 'p50', 2)} | {f(ratio, 3)} |")
        out += ["", "One run each: differences within a few percent are run-to-run noise "
                "rather than gateway cost; a token stream's latency is dominated by decoding, so "
                "the gateway's per-request cost shows best in TTFB.", ""]

    # ---- two instances on one card ----
    shared = load(d, "fngate-shared.instances.json")
    after = load(d, "fngate-shared.after.instances.json") or shared
    shared_run = next((n for n in runs if n.startswith("fngate-2inst-")), None)
    out += ["## Two instances sharing one card by memory slices", ""]
    if not shared:
        out += ["Not measured (see the phases table).", ""]
    else:
        instances = (after or shared).get("instances", [])
        served = (loads.get(shared_run) or {}).get("instances") or {}
        mem = gpu_memory(d, "fngate-shared") or gpu_memory(d, "fngate-shared.start")
        out += ["| instance | kind | state | pid | card | memory GB | fraction | cold start "
                "spawn / readiness ms | requests served in the shared run | GPU memory "
                "(nvidia-smi) |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for inst in instances:
            g = inst.get("gpu") or {}
            c = inst.get("cold_start_ms") or {}
            out.append(f"| {inst.get('id')} | {inst.get('kind')} | {inst.get('state')} "
                       f"| {inst.get('pid')} | {g.get('card', '-')} | {g.get('memory_gb', '-')} "
                       f"| {g.get('fraction', '-')} | {f(c.get('spawn'))} / "
                       f"{f(c.get('readiness'), 0)} | {served.get(inst.get('id'), 0)} "
                       f"| {mem.get(inst.get('pid'), '-')} |")
        out.append("")
        ok_card = len(instances) == 2 and all(
            (i.get("gpu") or {}).get("card") == 0
            and abs((i.get("gpu") or {}).get("fraction", 0) - 0.5) < 0.01 for i in instances)
        both = len(instances) == 2 and all(served.get(i.get("id"), 0) > 0 for i in instances)
        gpus = load(d, "fngate-shared.gpus.json") or {}
        cards = gpus.get("cards") or []
        card0 = cards[0] if cards else {}
        out += [f"- Both instances on card 0 with fraction 0.5: **{'yes' if ok_card else 'NO'}**"
                f"; `GET /admin/gpus`: card 0 {card0.get('allocated_gb', '-')} of "
                f"{card0.get('memory_gb', '-')} GB allocated in {card0.get('shares', '-')} "
                f"shares, {gpus.get('cards_in_use', '-')} card(s) in use.",
                f"- Both served requests: **{'yes' if both else 'NO'}** ({served})."]
        one = loads.get(f"fngate-c{env.get('max_batch', 8)}")
        two = loads.get(shared_run)
        if one and two:
            out.append(f"- Aggregate tokens/s: 2 instances × {env.get('max_batch', 8)} slots, "
                       f"{two['clients']} clients: {two['tokens_per_s']:.0f}; 1 instance, "
                       f"{one['clients']} clients (its full concurrency): "
                       f"{one['tokens_per_s']:.0f}: **{two['tokens_per_s'] / one['tokens_per_s']:.2f}×**"
                       f"; latency p50 {f(pct(two, 'latency_ms', 'p50'))} vs "
                       f"{f(pct(one, 'latency_ms', 'p50'))} ms.")
        if not mem:
            out.append("- GPU memory per process: no nvidia-smi here.")
        out.append("")

    stop = lines_of(d, "fngate-stop.txt")
    if stop:
        out += [f"fngate shutdown: {stop[0]} (it stops its instances first).", ""]
    out += ["Raw outputs in the output directory: `env.json`, `phases.txt`, `*.start.json`, "
            "`*.load.json`, `*.requests.jsonl`, `*.stats.json`, `fngate-*.json` (admin API), "
            "`fngate.stdout.jsonl` (invocation log lines and the instances' output), "
            "`fngate.stderr.log`, `fngate.toml`, `*.log` (direct servers)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(report(sys.argv[1] if len(sys.argv) > 1 else "bench/gpu/out"))
