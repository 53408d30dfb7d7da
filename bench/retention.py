#!/usr/bin/env python3
"""Retention at scale: passes over 100k and 1M paths, and narinfo throughput while one runs.

For each N: a synthetic cache of N paths that form closures (`gen_cache.py --closures`:
own NARs, 0-10 references to earlier paths, path i stored at a fixed time + i s), made
once and kept under the work directory; what a pass removes is written back before each
server start. The release nix-stored (directory backend) runs pinned to core 0 with a
quota a little under the cache's bytes, so that its first pass removes about a tenth of
them (passes remove down to 90 % of the quota); bench/loadgen.rs runs on core 1.

- Server A (GC interval long): the first pass (listing, loading every narinfo into the
  graph, plan, removal); narinfo GET hits with no pass running; the second pass, over
  the loaded graph (nothing to remove: it lists and plans); peak RSS (VmHWM).
- Server B (GC interval 1 s): hits while the first pass runs (a window shorter than
  server A's first pass, checked to have ended before the pass did), then hits while
  passes run back to back (every second: each lists the whole cache again).

Hits go to the paths server A's first pass kept, so they are 200s (server B's pass
chooses the same paths but for ties in recency: up to 5 % of 404s are allowed there, and
reported). After server A's first pass, every remaining narinfo is checked to have its
NAR and its references (the pass must not break a closure).

Writes a "Retention" section into RESULTS.md (replacing the previous one; the rest of
the file is left as it is). Exit status 1 when the harness or the server broke, never
for a missed target.

Usage: retention.py [--paths 100000,1000000] [--runs R] [--duration S] [--work DIR] [--spill DIR] [--quick]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
from bench import Broken, Server, log, fmt  # noqa: E402

MIB = 1 << 20
BEGIN, END = "<!-- retention: written by bench/retention.py -->", "<!-- /retention -->"
PASS_RE = re.compile(r"^(\S+Z)\s+INFO retention pass: removed (\d+) paths and (\d+) other objects, (\d+) bytes; (\d+) kept as used "
                     r"meanwhile; cache (\d+) -> (\d+) bytes \((\d+) paths before, (\d+) bytes pinned\); (\d+) ms", re.M)


def disk_need(n: int) -> int:
    """Bytes a cache of n paths takes on a 4 KiB-block filesystem: two small files a path, plus directories."""
    return n * (2 * 4096 + 300)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def cache_dir(cfg, n: int) -> str:
    """Where the cache of n paths lives: the work directory, or the spill one when the disk is short of room."""
    for base in (cfg.work, cfg.spill):
        if os.path.exists(os.path.join(base, f"cache-{n}", ".complete")):
            return os.path.join(base, f"cache-{n}")
    os.makedirs(cfg.work, exist_ok=True)
    if free_bytes(cfg.work) > disk_need(n) + cfg.margin:
        return os.path.join(cfg.work, f"cache-{n}")
    os.makedirs(cfg.spill, exist_ok=True)
    if free_bytes(cfg.spill) > disk_need(n) + cfg.margin:
        log(f"gc: {cfg.work} has {free_bytes(cfg.work) / 2**30:.1f} GiB free, too little for {n} paths: "
            f"the cache goes to {cfg.spill}")
        return os.path.join(cfg.spill, f"cache-{n}")
    raise Broken(f"no room for a cache of {n} paths ({disk_need(n) / 2**30:.1f} GiB) in {cfg.work} or {cfg.spill}")


def medium(path: str) -> str:
    out = subprocess.run(["df", "--output=fstype", path], capture_output=True, text=True).stdout.split()
    return out[-1] if out else "?"


def ensure_cache(cfg, n: int) -> dict:
    """The cache of n paths, whole: generated once, then only what passes removed is written back."""
    root = cache_dir(cfg, n)
    keys_file, summary = root + ".keys", root + ".summary.json"
    complete = os.path.join(root, ".complete")
    # What servers left: recency journals and removal intents would change the next run's choices.
    shutil.rmtree(os.path.join(root, "nix-stored"), ignore_errors=True)
    shutil.rmtree(os.path.join(root, ".tmp"), ignore_errors=True)
    t = time.monotonic()
    argv = [sys.executable, os.path.join(HERE, "gen_cache.py"), root, "--paths", str(n), "--closures",
            "--keys", keys_file, "--summary", summary]
    fresh = not os.path.exists(complete)
    if not fresh:
        argv.append("--missing")
    bench.run(argv, "gen_cache.py --closures")
    info = json.load(open(summary))
    if fresh:
        open(complete, "w").close()
        info["generated_s"] = time.monotonic() - t
        with open(summary, "w") as f:
            json.dump(info, f)
        log(f"gc: generated {n} paths ({info['bytes'] / MIB:.0f} MiB) in {root} in {info['generated_s']:.0f}s")
    else:
        log(f"gc: {n} paths: wrote back {info['written']} removed paths in {time.monotonic() - t:.1f}s")
    os.sync()
    info["root"], info["keys"] = root, keys_file
    return info


def metrics(srv: Server) -> dict:
    st, _, body = bench.request(srv.port, "GET", "/metrics")
    if st != 200:
        raise Broken(f"GET /metrics -> {st}")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("nix_stored_") and " " in line and "{" not in line:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def passes(srv: Server) -> int:
    return int(metrics(srv).get("nix_stored_retention_passes_total", 0))


def pass_lines(srv: Server) -> list[dict]:
    """The server's pass log lines so far, in order."""
    out = []
    for m in PASS_RE.finditer(srv.tail(1 << 40)):
        v = [int(x) for x in m.groups()[1:]]
        end = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        out.append({"paths": v[0], "others": v[1], "bytes": v[2], "kept": v[3], "before": v[4], "after": v[5],
                    "paths_before": v[6], "ms": v[8], "end": end, "start": end - v[8] / 1000})
    return out


def wait_passes(srv: Server, n: int, limit: float) -> float:
    """Waits until n passes are done; returns the seconds waited."""
    t = time.monotonic()
    while passes(srv) < n:
        srv.alive()
        if time.monotonic() - t > limit:
            raise Broken(f"{srv.name}: pass {n} not done within {limit:.0f}s:\n{srv.tail()}")
        time.sleep(0.05)
    # The counter goes up just before the pass logs its line.
    while len(pass_lines(srv)) < n:
        if time.monotonic() - t > limit + 10:
            raise Broken(f"{srv.name}: pass {n} counted but not logged:\n{srv.tail()}")
        time.sleep(0.05)
    return time.monotonic() - t


def start(cfg, cache: dict, name: str, interval: int) -> Server:
    port = bench.free_port()
    env = dict(os.environ, NIX_STORED_PATH=cache["root"], NIX_STORED_LISTEN_INTERFACE=f"127.0.0.1:{port}",
               NIX_STORED_LOG_LEVEL="info", NIX_STORED_MAX_SIZE=str(cache["quota"]),
               NIX_STORED_GC_INTERVAL=str(interval))
    path = os.path.join(cfg.work, "logs", f"{name}.log")
    if os.path.exists(path):
        os.remove(path)
    return Server(name, [bench.NIX_STORED], env, port, path, "/nix-cache-info")


def stop(srv: Server) -> None:
    code = srv.stop()
    bench.NixStored(srv.name, "").check_stopped(code, srv)


def hits(cfg, srv: Server, keys: str, duration: float, misses_ok: float = 0.0, stall_ok: bool = False) -> dict:
    """narinfo GETs over `keys`; up to `misses_ok` of them may be 404s (paths a pass chose on a tie); with
    `stall_ok`, no answer at all is a figure (the server stalled), not a failure."""
    r = bench.loadgen(cfg.lg, srv.port, "GET", 64, duration, [f"keys={keys}", ".narinfo"])
    bad = {s: c for s, c in r["statuses"].items() if s not in (200, 404)}
    r["misses"] = r["statuses"].get(404, 0)
    if r["requests"] == 0 and stall_ok and not r["errors"]:
        srv.alive()
        r["rps"] = 0.0
        return r
    if r["errors"] or r["requests"] == 0 or bad or r["misses"] > misses_ok * r["requests"]:
        raise Broken(f"{srv.name}: {r['errors']} broken connections, {r['requests']} answers, statuses {bad}\n{srv.tail()}")
    srv.alive()
    return r


def check_closures(root: str) -> tuple[set[str], list[str]]:
    """Every narinfo left has its NAR and its references: (the narinfos' hash parts, problems)."""
    names = {e[:-8] for e in os.listdir(root) if e.endswith(".narinfo")}
    nars = set(os.listdir(os.path.join(root, "nar")))
    problems = []
    for h in names:
        with open(os.path.join(root, f"{h}.narinfo")) as f:
            text = f.read()
        url = re.search(r"^URL: nar/(\S+)$", text, re.M).group(1)
        if url not in nars:
            problems.append(f"{h}.narinfo: its NAR {url} is gone")
        refs = re.search(r"^References: (.*)$", text, re.M).group(1).split()
        problems += [f"{h}.narinfo: its reference {r} is gone" for r in refs if r[:32] not in names]
        if len(problems) > 10:
            break
    return names, problems


def measure(cfg, n: int) -> dict:
    res: dict = {"n": n}
    busy = bench.others_busy()
    snap = bench.cpu_snapshot()
    load0 = os.getloadavg()[0]
    cache = ensure_cache(cfg, n)
    res.update(bytes=cache["bytes"], root=cache["root"], medium=medium(cache["root"]),
               generated_s=cache.get("generated_s"))
    # Passes remove down to 90 % of the quota: 0.9 × 0.999 of the bytes remain.
    cache["quota"] = res["quota"] = int(cache["bytes"] * 0.999)
    hot = os.path.join(cfg.work, f"hot-{n}.keys")
    limit = 900.0

    # Server A: the first pass, hits with no pass running, the second pass.
    window = 1.0 + cfg.runs * cfg.duration
    interval = int(window + 20)
    srv = start(cfg, cache, f"gc-{n}-a", interval)
    try:
        wait_passes(srv, 1, limit)
        first = pass_lines(srv)[0]
        res["rss_after_first"] = srv.status("VmHWM")
        left, problems = check_closures(cache["root"])
        if problems:
            raise Broken(f"after the first pass the cache has broken closures: {problems[:5]}")
        res["left"] = len(left)
        # Hits go to what the pass kept.
        with open(hot, "w") as f:
            f.write("\n".join(sorted(left)) + "\n")
        t_end_first = time.monotonic()
        hits(cfg, srv, hot, 1.0)
        quiet = [hits(cfg, srv, hot, cfg.duration) for _ in range(cfg.runs)]
        if passes(srv) != 1:
            raise Broken(f"a second pass started during the no-pass window (interval {interval}s too short)")
        if time.monotonic() - t_end_first > interval:
            log("gc: warning: the no-pass window may have overlapped the second pass")
        wait_passes(srv, 2, interval + limit)
        second = pass_lines(srv)[1]
        res["rss_a"] = srv.status("VmHWM")
        res["rss_now_a"] = srv.status("VmRSS")
    finally:
        stop(srv)
    res["first"], res["second"] = first, second
    res["quiet"] = statistics.median(r["rps"] for r in quiet)
    res["quiet_runs"] = [r["rps"] for r in quiet]
    res["quiet_p99"] = statistics.median(r["p99"] for r in quiet)
    log(f"gc {n}: first pass {first['ms']} ms (removed {first['paths']} paths, {first['bytes'] / MIB:.1f} MiB), "
        f"second pass {second['ms']} ms; hits without a pass {res['quiet']:.0f} req/s; peak RSS {res['rss_a']:.1f} MiB")

    # Server B: hits during the whole first pass, in slices until it ends; then during passes back to back.
    during, steady, firsts, rss_b = [], [], [], 0.0
    first_runs = cfg.first_runs or (3 if n <= 100_000 else 1)
    sl = 1.0 if first["ms"] < 20_000 else 2.0
    for r in range(first_runs):
        ensure_cache(cfg, n)
        srv = start(cfg, cache, f"gc-{n}-b{r}", 1)
        try:
            t0 = time.monotonic()
            slices = []
            while passes(srv) == 0 and time.monotonic() - t0 < cfg.cap:
                got = hits(cfg, srv, hot, sl, misses_ok=0.05, stall_ok=True)
                slices.append({"at": time.monotonic() - t0, "rps": got["rps"], "requests": got["requests"],
                               "seconds": got["requests"] / got["rps"] if got["rps"] else sl,
                               "p99": got["p99"], "misses": got["misses"], "inside": passes(srv) == 0})
            finished = passes(srv) > 0
            inside = [x for x in slices if x["inside"]] or slices[:1]
            rps = sum(x["requests"] for x in inside) / sum(x["seconds"] for x in inside)
            wait_passes(srv, 1, limit)
            firsts.append(pass_lines(srv)[0]["ms"])
            during.append({"rps": rps, "slices": [x["rps"] for x in inside], "finished": finished,
                           "p99": max(x["p99"] for x in inside), "loaded_s": time.monotonic() - t0 if finished else cfg.cap,
                           "misses": sum(x["misses"] for x in inside) / max(1, sum(x["requests"] for x in inside)),
                           "stalled": sum(x["seconds"] for x in inside if x["requests"] == 0), "slice": sl})
            log(f"gc {n}: during the first pass ({firsts[-1]} ms): {rps:.0f} req/s; per {sl:g} s slice: "
                + " ".join(f"{x['rps']:.0f}" for x in inside)
                + ("" if finished else f" (loadgen stopped after {cfg.cap:.0f} s, the pass still running)"))
            if r == first_runs - 1:
                for _ in range(cfg.runs):
                    w0 = time.time()
                    got = hits(cfg, srv, hot, cfg.duration, misses_ok=0.05)
                    w1 = time.time()
                    # The pass running when the window closed counts too: wait for its line.
                    wait_passes(srv, passes(srv) + 1, limit)
                    lines = [x for x in pass_lines(srv) if x["end"] > w0 and x["start"] < w1]
                    share = sum(min(w1, x["end"]) - max(w0, x["start"]) for x in lines) / (w1 - w0)
                    steady.append({"rps": got["rps"], "p99": got["p99"], "passes": len(lines),
                                   "misses": got["misses"] / got["requests"], "busy": min(1.0, share),
                                   "pass_ms": [x["ms"] for x in lines]})
            rss_b = max(rss_b, srv.status("VmHWM"))
        finally:
            stop(srv)
    res["during"] = during
    res["during_rps"] = statistics.median(d["rps"] for d in during)
    res["first_under_load_ms"] = firsts
    res["steady"] = steady
    res["steady_rps"] = statistics.median(s["rps"] for s in steady)
    res["steady_busy"] = statistics.median(s["busy"] for s in steady)
    res["rss"] = max(res["rss_a"], rss_b)
    res["busy_at_start"], res["load"] = busy, load0
    res["foreign"] = bench.foreign_share(snap, bench.cpu_snapshot())
    log(f"gc {n}: hits during the first pass {res['during_rps']:.0f} req/s "
        f"({res['during_rps'] / res['quiet']:.2f}x), during back-to-back passes {res['steady_rps']:.0f} req/s "
        f"({res['steady_rps'] / res['quiet']:.2f}x, passes busy {res['steady_busy']:.0%}); peak RSS {res['rss']:.1f} MiB")
    return res


def section(cfg, results: list[dict], elapsed: float) -> list[str]:
    foreign = max(r["foreign"] for r in results)
    busy = sorted({b for r in results for b in r["busy_at_start"]})
    argv = "bench/run.sh --gc" + "".join(f" {a}" for a in sys.argv[1:] if a != "--gc")
    L = [BEGIN, "## Retention" + (" — quick mode (a smoke run of the harness: figures not to quote)" if cfg.quick else ""), "",
         f"Written by `{argv}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, in {elapsed / 60:.1f} min. "
         f"Load average at start {results[0]['load']:.2f}; CPU time of other processes during each N's runs: at most "
         f"{foreign * 100:.0f}% of the machine"
         + (f" — **the machine was not idle: figures are noisy**" + (f" (busy at start: {', '.join(busy[:6])})" if busy else "")
            + "." if foreign > 0.10 or busy else " (quiet machine)."),
         "",
         *bench.machine(),
         "",
         "Set-up: `bench/retention.py`. A synthetic cache of N paths that form closures (`gen_cache.py --closures`: each "
         "path has its own NAR of 200-4000 bytes and references 0-10 earlier paths, 30 % of them among 100 base "
         "paths, the rest among the 1000 before it; path i stored at a fixed time + i s, so the first paths are the "
         "oldest), generated once under the work directory (page cache warm: the machine's RAM holds it); what a "
         "pass removed is written back before each server start, and the server's journals are deleted. The "
         "release build, directory backend, `NIX_STORED_MAX_SIZE` = 0.999 × the cache's bytes (a pass removes "
         "down to 90 % of it: about a tenth of the bytes goes), access log on (`info`), pinned to core 0 "
         "(tokio and the pass share that core); `bench/loadgen.rs` on core 1, 64 keep-alive connections, "
         "narinfo GET hits on random keys among the paths server A's first pass kept (a path's recency is the "
         "latest of its own and its referrers', so the paths removed are spread over the whole range; server B's "
         "pass makes the same choice but for ties, so a few of its answers may be 404s: their share is listed).",
         "",
         f"- Server A, `NIX_STORED_GC_INTERVAL` long: **first pass** (lists the cache, reads every narinfo into the "
         f"graph, plans, removes) and **second pass** (over the loaded graph: lists again, plans, nothing left to "
         f"remove), durations from the pass's log line; **no pass** = hits between the two ({cfg.runs} run(s) of "
         f"{cfg.duration:g} s, median); after the first pass every remaining narinfo was checked to have its NAR "
         f"and references. **Peak RSS** = `VmHWM` of the server over everything (both servers).",
         f"- Server B, `NIX_STORED_GC_INTERVAL=1`: **during the first pass** = hits from start, in slices of 1 s "
         f"(2 s when server A's first pass took over 20 s), until the pass ends (at most {cfg.cap:.0f} s of load): "
         f"requests ÷ seconds of the slices that ended before it did, so listing, loading, planning and removal "
         f"all count; the per-slice figures show which part costs (median over "
         f"{cfg.first_runs or '3 (1 above 100k paths)'} server start(s)); then **back-to-back passes** = hits while a pass starts every second ({cfg.runs} run(s) "
         f"of {cfg.duration:g} s; 'busy' = the share of the window during which a pass ran, from the passes' log lines).",
         "",
         "| N | cache on | cache MiB | first pass | second pass | peak RSS MiB | hits, no pass req/s | during the first pass req/s | ratio | back-to-back passes req/s (busy) | ratio |",
         "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f, s = r["first"], r["second"]
        L.append(f"| {fmt(r['n'])} | {r['medium']} | {r['bytes'] / MIB:.0f} | {fmt(f['ms'])} ms, {fmt(f['paths'])} "
                 f"paths ({f['bytes'] / MIB:.0f} MiB) removed | {fmt(s['ms'])} ms | {r['rss']:.1f} | "
                 f"{fmt(r['quiet'])} | {fmt(r['during_rps'])} | {r['during_rps'] / r['quiet']:.2f} | "
                 f"{fmt(r['steady_rps'])} ({r['steady_busy']:.0%}) | {r['steady_rps'] / r['quiet']:.2f} |")
    L += ["", "Details:", ""]
    for r in results:
        L.append(f"- N = {fmt(r['n'])} (`{r.get('command', '')}`, {r.get('when', '')}): cache in `{r['root']}` ({r['medium']}"
                 + (f", generated in {r['generated_s']:.0f} s" if r.get("generated_s") else "") + f"), "
                 f"{fmt(r['bytes'])} bytes, quota {fmt(r['quota'])}; first pass: cache "
                 f"{fmt(r['first']['before'])} -> {fmt(r['first']['after'])} bytes, {fmt(r['left'])} narinfos left; "
                 f"RSS after the first pass {r['rss_after_first']:.1f} MiB (VmHWM), after the second "
                 f"{r['rss_now_a']:.1f} MiB (VmRSS); no-pass runs {', '.join(fmt(x) for x in r['quiet_runs'])} req/s "
                 f"(p99 {r['quiet_p99']:.2f} ms); during the first pass "
                 + "; ".join(f"{fmt(d['rps'])} req/s (worst slice p99 {d['p99']:.2f} ms, {d['misses']:.1%} 404s; "
                             f"per {d['slice']:g} s slice: {' '.join(fmt(x) for x in d['slices'])}"
                             + (f"; **no answer at all for {d['stalled']:.0f} s**" if d["stalled"] else "")
                             + ("" if d["finished"] else f"; **load stopped after {d['loaded_s']:.0f} s, the pass "
                                "still running**") + ")"
                             for d in r["during"])
                 + f", that first pass taking {', '.join(fmt(x) for x in r['first_under_load_ms'])} ms under load; "
                 "back-to-back passes " + ", ".join(f"{fmt(s['rps'])} req/s ({s['passes']} passes of {', '.join(fmt(x) for x in s['pass_ms'])} ms, busy {s['busy']:.0%}, "
                                                    f"{s['misses']:.1%} 404s)"
                                                    for s in r["steady"]) + ".")
    L += ["", "Targets (issue 11), computed from the figures above:", ""]
    for r in results:
        n = fmt(r["n"])
        d, s = r["during_rps"] / r["quiet"], r["steady_rps"] / r["quiet"]
        L.append(f"- N = {n}: narinfo throughput during a pass ≥ 0.7× without: "
                 f"{'✅' if d >= 0.7 else '❌'} first pass {d:.2f}×; {'✅' if s >= 0.7 else '❌'} back-to-back passes {s:.2f}×")
    big = [r for r in results if r["n"] >= 1_000_000]
    for r in big:
        L.append(f"- under 200 MiB RSS at {fmt(r['n'])} paths with a quota set: "
                 f"{'✅' if r['rss'] < 200 else '❌'} peak {r['rss']:.1f} MiB")
    if not big:
        L.append("- under 200 MiB RSS at 1 000 000 paths: not measured in this run")
    L.append(END)
    return L


def write_section(path: str, lines: list[str]) -> None:
    text = open(path).read() if os.path.exists(path) else ""
    block = "\n".join(lines) + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100k paths only, one run of 2 s")
    p.add_argument("--paths", help="comma-separated cache sizes (100000,1000000; quick 100000)")
    p.add_argument("--runs", type=int, help="hit runs per figure, median reported (3; quick 1)")
    p.add_argument("--first-runs", type=int,
                   help="server starts measured during their first pass (3 up to 100k paths, 1 above; quick 1)")
    p.add_argument("--merge", action="store_true",
                   help="keep in the report the sizes an earlier run measured and this one does not")
    p.add_argument("--cap", type=float, default=240.0,
                   help="seconds of load at most during a first pass (it then finishes without load)")
    p.add_argument("--duration", type=float, help="seconds per hit run (5; quick 2)")
    p.add_argument("--work", default="/var/tmp/nix-stored-gcbench", help="caches (kept between runs) and logs")
    p.add_argument("--spill", default="/dev/shm/nix-stored-gcbench",
                   help="where a cache goes when --work's filesystem is short of room")
    p.add_argument("--margin", type=float, default=4.0, help="GiB to leave free on a filesystem the cache goes to")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="the report: its Retention section is replaced")
    cfg = p.parse_args()
    q = cfg.quick
    cfg.paths = [int(x) for x in (cfg.paths or ("100000" if q else "100000,1000000")).split(",") if x]
    cfg.runs = cfg.runs or (1 if q else 3)
    cfg.first_runs = cfg.first_runs or (1 if q else None)
    cfg.duration = cfg.duration or (2 if q else 5)
    cfg.margin = int(cfg.margin * 2**30)
    if not os.access(bench.NIX_STORED, os.X_OK):
        sys.exit(f"retention: {bench.NIX_STORED} is missing: run `cargo build --release` (bench/run.sh does)")
    os.makedirs(os.path.join(cfg.work, "logs"), exist_ok=True)
    cfg.lg = os.path.join(cfg.work, "loadgen")
    t0 = time.monotonic()
    try:
        bench.run(["rustc", "-O", "--edition", "2021", "-o", cfg.lg, os.path.join(HERE, "loadgen.rs")],
                  "building bench/loadgen.rs")
        busy = bench.others_busy()
        if busy:
            log(f"gc: warning: other heavy processes are running ({', '.join(busy[:8])}): figures will be noisy")
        # Sizes measured by an earlier run stay in the report unless measured again.
        store = os.path.join(cfg.work, "results-quick.json" if cfg.quick else "results.json")
        try:
            kept = {r["n"]: r for r in json.load(open(store))} if cfg.merge else {}
        except (OSError, ValueError):
            kept = {}
        for n in cfg.paths:
            kept[n] = measure(cfg, n)
            kept[n]["command"] = "bench/run.sh --gc" + "".join(f" {a}" for a in sys.argv[1:] if a != "--gc")
            kept[n]["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            with open(store, "w") as f:
                json.dump(list(kept.values()), f, indent=1)
        results = sorted(kept.values(), key=lambda r: r["n"])
        write_section(cfg.out, section(cfg, results, time.monotonic() - t0))
        log(f"wrote the Retention section of {cfg.out}")
    except Broken as e:
        log(f"gc: FAILED: {e}\n(logs in {cfg.work}/logs)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
