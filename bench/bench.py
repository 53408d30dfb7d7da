#!/usr/bin/env python3
"""Runs the read/write workloads against nix-stored and nginx on one directory.

Each server is pinned to core 0 and wrk to core 1; every workload runs `runs` times
and the median is reported, with the ratio nix-stored/nginx measured in the same run.
Exits non-zero when the harness itself breaks (a server does not start, wrk fails,
an answer that must be 2xx is not): missed targets are reported, not failures.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1 << 20


def wait_port(port: int, proc: subprocess.Popen, limit: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    if proc.poll() is not None:
                        sys.exit(f"port {port} is answered by another process")
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing answered on port {port} within {limit}s")


class Server:
    def __init__(self, name: str, argv: list[str], env: dict, port: int, work: str):
        self.name, self.port = name, port
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.proc = subprocess.Popen(["taskset", "-c", "0", *argv], env=env, stdout=self.log, stderr=self.log)
        self.startup = wait_port(port, self.proc)

    def pid(self) -> int:
        # nginx: the one worker process serves; its master only supervises.
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(children[0]) if children else self.proc.pid

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid()}/clear_refs", "w") as f:
            f.write("5")

    def peak_mib(self) -> float:
        with open(f"/proc/{self.pid()}/status") as f:
            kib = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
        return kib / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def nginx_conf(work: str, root: str, port: int, open_file_cache: bool) -> str:
    cache = "open_file_cache max=200000 inactive=60s; open_file_cache_valid 60s;" if open_file_cache else "open_file_cache off;"
    path = os.path.join(work, f"nginx-{port}.conf")
    with open(path, "w") as f:
        f.write(f"""user root;
worker_processes 1;
daemon off;
pid {work}/nginx-{port}.pid;
error_log {work}/nginx-{port}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log {work}/nginx-{port}-access.log;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  client_body_temp_path {root}/.nginx-tmp;
  {cache}
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ dav_methods PUT; create_full_put_path on; client_max_body_size 0; }}
  }}
}}
""")
    return path


def lua(work: str, name: str, body: str) -> str:
    path = os.path.join(work, f"{name}.lua")
    with open(path, "w") as f:
        f.write(body)
    return path


def unit(value: str, scale: dict) -> float:
    m = re.match(r"([\d.]+)(\D*)", value)
    if not m:
        raise ValueError(f"unexpected wrk figure {value!r}")
    return float(m.group(1)) * scale.get(m.group(2), 1)


def wrk(port: int, script: str | None, conns: int, duration: float, path: str = "/") -> dict:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "30s"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    if out.returncode != 0 or "Requests/sec" not in out.stdout:
        sys.exit(f"wrk failed: {out.stdout}{out.stderr}")
    try:
        return parse_wrk(out.stdout)
    except (AttributeError, ValueError) as e:
        sys.exit(f"cannot read wrk's output ({e}):\n{out.stdout}")


def parse_wrk(t: str) -> dict:
    lat = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    size = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
        "mbps": unit(re.search(r"Transfer/sec:\s+(\S+)", t).group(1), size),
        "p50": unit(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1), lat),
        "p99": unit(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1), lat),
        "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", t)) else 0,
        "errors": "Socket errors" in t,
        "requests": int(re.search(r"(\d+) requests in", t).group(1)),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--paths", type=int)
    p.add_argument("--runs", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = p.parse_args()
    paths = a.paths or (200 if a.quick else 100_000)
    runs = a.runs or (1 if a.quick else 3)
    duration = a.duration or (1 if a.quick else 5)
    big = 16 * MIB if a.quick else 256 * MIB
    put_size = 8 * MIB if a.quick else 64 * MIB

    work = os.path.join("/tmp", f"nix-stored-bench-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "cache")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_cache.py"), root, "--paths", str(paths),
                    "--nar-sizes", f"{MIB},{big},{put_size}"], check=True)
    os.makedirs(os.path.join(root, ".nginx-tmp"), exist_ok=True)
    nars = [line.split() for line in open(os.path.join(work, "nars.txt"))]
    nar_1m, nar_big, nar_put = nars[0][1], nars[1][1], nars[2][1]
    # The upload body is the third NAR; each server overwrites it in place.
    put_body = os.path.join(work, "put.nar")
    shutil.copy(os.path.join(root, nar_put), put_body)

    hits = lua(work, "hits", f"""
local keys = {{}}
for line in io.lines("{work}/keys.txt") do keys[#keys + 1] = line end
request = function() return wrk.format("GET", "/" .. keys[math.random(#keys)] .. ".narinfo") end
""")
    miss_tpl = """
local A = "0123456789abcdfghijklmnpqrsvwxyz"
request = function()
  local t = {{}}
  for i = 1, 32 do local r = math.random(32); t[i] = A:sub(r, r) end
  return wrk.format("{method}", "/" .. table.concat(t) .. ".narinfo")
end
"""
    # HEAD is not measured: wrk's response parser does not know the request was a
    # HEAD and waits for the Content-Length body that a HEAD answer never has.
    miss_get = lua(work, "miss_get", miss_tpl.format(method="GET"))
    put = lua(work, "put", f"""
local f = io.open("{put_body}", "rb")
wrk.method = "PUT"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/x-nix-nar"
""")
    # (name, lua, connections, path, what counts as success)
    workloads = [
        ("narinfo GET hit", hits, 64, "/", "2xx"),
        ("narinfo GET miss", miss_get, 64, "/", "404"),
        ("nix-cache-info GET", None, 64, "/nix-cache-info", "2xx"),
        ("NAR GET 1 MiB, 1 conn", None, 1, "/" + nar_1m, "2xx"),
        ("NAR GET 1 MiB, 16 conns", None, 16, "/" + nar_1m, "2xx"),
        (f"NAR GET {big // MIB} MiB, 1 conn", None, 1, "/" + nar_big, "2xx"),
        (f"NAR GET {big // MIB} MiB, 16 conns", None, 16, "/" + nar_big, "2xx"),
        (f"NAR PUT {put_size // MIB} MiB, 4 conns", put, 4, "/" + nar_put, "2xx"),
    ]
    # wrk's Transfer/sec counts received bytes only; an upload's rate is its body size
    # times the request rate.
    upload_bytes = {workloads[-1][0]: os.path.getsize(put_body)}

    env = dict(os.environ, NIX_STORED_PATH=root, NIX_STORED_LISTEN_INTERFACE="127.0.0.1:18400", NIX_STORED_LOG_LEVEL="info")
    servers = [
        ("nix-stored", lambda: Server("nix-stored", [os.path.join(REPO, "target/release/nix-stored")], env, 18400, work)),
        ("nginx", lambda: Server("nginx", ["nginx", "-c", nginx_conf(work, root, 18401, False)], os.environ, 18401, work)),
        ("nginx+ofc", lambda: Server("nginx+ofc", ["nginx", "-c", nginx_conf(work, root, 18402, True)], os.environ, 18402, work)),
    ]
    results: dict[tuple[str, str], dict] = {}
    startup = {}
    for name, start in servers:
        srv = start()
        try:
            startup[name] = srv.startup
            run_workloads(name, srv, workloads, runs, duration, results, upload_bytes)
        finally:
            srv.stop()
    report(a, results, workloads, startup, paths, runs, duration)
    shutil.rmtree(work, ignore_errors=True)


def run_workloads(name, srv, workloads, runs, duration, results, upload_bytes) -> None:
    for wl, script, conns, path, ok in workloads:
        samples = []
        srv.reset_peak()
        for _ in range(runs):
            r = wrk(srv.port, script, conns, duration, path)
            if r["errors"] or r["requests"] == 0:
                sys.exit(f"{name} / {wl}: socket errors or no requests")
            if ok == "2xx" and r["non2xx"]:
                sys.exit(f"{name} / {wl}: {r['non2xx']} answers were not 2xx (see {srv.log.name})")
            if ok == "404" and r["non2xx"] != r["requests"]:
                sys.exit(f"{name} / {wl}: some misses were answered 2xx")
            if wl in upload_bytes:
                r["mbps"] = r["rps"] * upload_bytes[wl] / MIB
            samples.append(r)
        med = sorted(samples, key=lambda r: r["rps"])[len(samples) // 2]
        med["rss"] = srv.peak_mib()
        results[(wl, name)] = med
        print(f"{name:11} {wl:28} {med['rps']:10.0f} req/s {med['mbps']:9.1f} MB/s p99 {med['p99']:7.2f} ms rss {med['rss']:6.1f} MiB", flush=True)


def report(a, results, workloads, startup, paths, runs, duration) -> None:
    def cmd(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    lines = [
        "# nix-stored benchmark results" + (" (quick mode: smoke run, not figures to quote)" if a.quick else ""),
        "",
        f"Machine: {os.cpu_count()} cores, {cpu}, {int(mem) // 1024} MiB RAM, kernel {os.uname().release}; "
        f"{cmd(['nginx', '-v'])}; {cmd(['wrk', '--version'])}; {cmd([os.path.join(REPO, 'target/release/nix-stored'), '--version'])}.",
        "",
        f"Setup: {paths} narinfos (one shared 1 KB NAR) plus the NARs below, one directory for every server. "
        f"Each server pinned to core 0 (`taskset -c 0`), wrk (`-t1`) to core 1; {runs} run(s) of {duration:g} s per "
        "workload, median reported. Request logging on for all: nix-stored one line per request to a file, "
        "nginx `access_log` to a file. nginx: one worker, `sendfile on; tcp_nopush on; tcp_nodelay on`, keep-alive, "
        "WebDAV PUT (`dav_methods PUT`, no verification), `open_file_cache` off (nginx) and on (nginx+ofc). "
        "nix-stored verifies every NAR PUT's SHA-256 and fsyncs it before answering; nginx does neither. "
        "Peak RSS is VmHWM of the serving process, reset before each workload.",
        "",
        "Not measured yet (issue 4): HEAD misses (wrk waits for a body after a HEAD answer's Content-Length, "
        "so it needs another load generator), growth to 1 000 000 paths, the 200-path `nix copy` end to end, harmonia "
        "(its `harmonia-cache` binary has to be built from source), the ratio chart. The seed's Go original "
        "cannot be built here: it needs code generation (oapi-codegen) that is not available from the reachable registries.",
        "",
        "| workload | server | req/s | MB/s | p50 ms | p99 ms | peak RSS MiB | nix-stored/nginx | nix-stored/nginx+ofc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wl, *_ in workloads:
        ns = results[(wl, "nix-stored")]
        for name in ("nix-stored", "nginx", "nginx+ofc"):
            r = results[(wl, name)]
            ratios = ["", ""]
            if name == "nix-stored":
                key = "mbps" if "NAR" in wl else "rps"
                ratios = [f"{ns[key] / results[(wl, peer)][key]:.2f}" for peer in ("nginx", "nginx+ofc")]
            lines.append(f"| {wl} | {name} | {r['rps']:.0f} | {r['mbps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rss']:.1f} | {ratios[0]} | {ratios[1]} |")
    lines.append("")
    lines.append("Time from exec to the first answer: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in startup.items()) + ".")
    lines += ["", "## Targets (against nginx, same run)", ""]

    def target(label: str, ok: bool, detail: str) -> None:
        lines.append(f"- {'✅' if ok else '❌'} {label}: {detail}")

    def ratio(wl: str, key: str = "rps") -> float:
        return results[(wl, "nix-stored")][key] / results[(wl, "nginx")][key]
    target("narinfo hits ≥ 1.2× nginx req/s", ratio("narinfo GET hit") >= 1.2, f"{ratio('narinfo GET hit'):.2f}×")
    target("narinfo GET miss ≥ 1.5× nginx req/s", ratio("narinfo GET miss") >= 1.5, f"{ratio('narinfo GET miss'):.2f}×")
    for wl in ("narinfo GET hit", "narinfo GET miss"):
        ns, ng = results[(wl, "nix-stored")]["p99"], results[(wl, "nginx")]["p99"]
        target(f"{wl} p99 no worse than nginx", ns <= ng, f"{ns:.2f} ms vs {ng:.2f} ms")
    big = next(w[0] for w in workloads if w[0].startswith("NAR GET") and "16 conns" in w[0] and "1 MiB" not in w[0])
    target(f"{big} ≥ 0.9× nginx (sendfile)", ratio(big, "mbps") >= 0.9, f"{ratio(big, 'mbps'):.2f}×")
    put = workloads[-1][0]
    target(f"{put} ≥ 0.8× nginx WebDAV", ratio(put, "mbps") >= 0.8, f"{ratio(put, 'mbps'):.2f}×")
    peak = max(results[(w[0], "nix-stored")]["rss"] for w in workloads)
    target("nix-stored peak RSS < 100 MiB in every workload", peak < 100, f"{peak:.1f} MiB at most")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
