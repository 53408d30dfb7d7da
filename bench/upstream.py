#!/usr/bin/env python3
"""Pull-through benchmark: the real Nix client substitutes a closure of N paths
(`builtins.toFile` text paths, each referring to two others, as bench.py's e2e workload)

  direct   from the upstream itself (a signed `file://` cache served by nginx, or by
           `python3 -m http.server` without nginx),
  cold     through nix-stored with that upstream (NIX_STORED_UPSTREAMS) and an empty cache,
  warm     through the same nix-stored again, every path now stored there.

Each run uses fresh client caches and deletes the closure from /nix/store first; the cold run
uses a fresh nix-stored directory. Prints a Markdown table (median and spread of the runs).

    python3 bench/upstream.py [--paths 200] [--runs 3] [--bin target/release/nix-stored]
                              [--upstream nginx|python]
Needs nix (Debian's nix-bin) and root, like bench/run.sh.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time


def run(argv, env, what):
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, path, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                if s.makefile("rb").readline().split()[1:2] == [b"200"]:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing answers GET {path} on port {port}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--paths", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bin", default="target/release/nix-stored")
    p.add_argument("--upstream", choices=["nginx", "python"],
                   default="nginx" if shutil.which("nginx") else "python",
                   help="what serves the upstream cache directory (nginx when installed)")
    cfg = p.parse_args()
    work = tempfile.mkdtemp(prefix="nix-stored-upbench-")
    conf = os.path.join(work, "conf")
    os.makedirs(conf)
    with open(os.path.join(conf, "nix.conf"), "w") as f:
        f.write("build-users-group =\nexperimental-features = nix-command\nsubstituters =\n"
                "require-sigs = true\nsandbox = false\nconnect-timeout = 5\n"
                "narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env.update(NIX_CONF_DIR=conf)

    def nix(argv, what):
        e = dict(env, XDG_CACHE_HOME=tempfile.mkdtemp(dir=work, prefix="xdg-"))
        t = time.monotonic()
        out = run(argv, e, what)
        return time.monotonic() - t, out

    n = cfg.paths
    expr = f"""
let
  n = {n};
  tag = "{os.getpid()}-{time.time_ns()}";
  filler = builtins.concatStringsSep "" (builtins.genList (x: "nix-stored upstream benchmark. ") 35);
  mk = i: builtins.toFile "nix-stored-upbench-${{toString i}}"
    ("${{tag}} ${{toString i}}\\n" + filler
     + (if 2 * i + 1 < n then "${{mk (2 * i + 1)}}\\n" else "")
     + (if 2 * i + 2 < n then "${{mk (2 * i + 2)}}\\n" else ""));
in mk 0
"""
    _, root = nix(["nix", "eval", "--raw", "--expr", expr], "nix eval")
    _, closure = nix(["nix-store", "-qR", root], "nix-store -qR")
    paths = closure.split()
    assert len(paths) == n, f"{len(paths)} paths, expected {n}"

    _, sk = nix(["nix", "key", "generate-secret", "--key-name", "upbench-1"], "key")
    sk_file = os.path.join(work, "sk")
    with open(sk_file, "w") as f:
        f.write(sk)
    pk = subprocess.run(["nix", "key", "convert-secret-to-public"], input=sk, env=env,
                        capture_output=True, text=True, check=True).stdout.strip()
    up_dir = os.path.join(work, "upstream")
    nix(["nix", "copy", "--to", f"file://{up_dir}?secret-key={sk_file}&compression=zstd", root],
        "nix copy --to file://")
    up_port = free_port()
    if cfg.upstream == "nginx":
        nginx_conf = os.path.join(work, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(f"daemon off; user root; worker_processes 1; pid {work}/nginx.pid;\n"
                    f"error_log {work}/nginx-error.log;\nevents {{ worker_connections 1024; }}\n"
                    f"http {{ access_log off; server {{ listen 127.0.0.1:{up_port}; root {up_dir}; }} }}\n")
        argv = ["nginx", "-p", work, "-c", nginx_conf]
    else:
        argv = ["python3", "-m", "http.server", str(up_port), "--bind", "127.0.0.1", "--directory", up_dir]
    upstream = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = [upstream]
    try:
        wait_for(up_port, "/nix-cache-info")

        def substitute(url):
            run(["nix-store", "--delete", *paths], env, "nix-store --delete")
            t, _ = nix(["nix-store", "-r", root, "--option", "substituters", url,
                        "--option", "trusted-public-keys", pk], f"substitution from {url}")
            run(["nix-store", "--check-validity", *paths], env, "the substituted closure is incomplete:")
            return t

        times = {"direct": [], "cold": [], "warm": []}
        for _ in range(cfg.runs):
            times["direct"].append(substitute(f"http://127.0.0.1:{up_port}"))
            port = free_port()
            store = tempfile.mkdtemp(dir=work, prefix="store-")
            srv_env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_STORED_")}
            srv_env.update(NIX_STORED_PATH=store, NIX_STORED_LISTEN_INTERFACE=f"127.0.0.1:{port}",
                           NIX_STORED_UPSTREAMS=f"http://127.0.0.1:{up_port}", NIX_STORED_UPSTREAM_KEYS=pk,
                           NIX_STORED_LOG_LEVEL="warning")
            srv = subprocess.Popen([cfg.bin], env=srv_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(srv)
            wait_for(port, "/nix-cache-info")
            times["cold"].append(substitute(f"http://127.0.0.1:{port}"))
            stored = [e for e in os.listdir(store) if e.endswith(".narinfo")]
            assert len(stored) == n, f"{len(stored)} narinfos pulled, expected {n}"
            times["warm"].append(substitute(f"http://127.0.0.1:{port}"))
            srv.terminate()
            srv.wait()
        upstream_name = ("nginx (" + first_line(["nginx", "-v"]) + ")" if cfg.upstream == "nginx"
                         else "`python3 -m http.server`")
        print(f"Substitution of a closure of {n} paths by `nix-store -r` ({first_line(['nix', '--version'])}), "
              f"median of {cfg.runs} runs; the upstream is {upstream_name} on loopback.\n")
        print("| Source | Time (s) | Runs (s) |\n|---|---|---|")
        labels = {"direct": "the upstream directly",
                  "cold": "nix-stored, cold (every path pulled from the upstream)",
                  "warm": "nix-stored, warm (every path stored)"}
        for k, label in labels.items():
            spread = ", ".join(f"{t:.2f}" for t in times[k])
            print(f"| {label} | {statistics.median(times[k]):.2f} | {spread} |")
    finally:
        for s in servers:
            s.terminate()
            s.wait()
        subprocess.run(["nix-store", "--delete", *paths], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def first_line(argv):
    out = subprocess.run(argv, capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0]


if __name__ == "__main__":
    main()
