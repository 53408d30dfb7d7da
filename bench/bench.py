#!/usr/bin/env python3
"""Benchmarks nix-stored against its peers on one synthetic cache, in one run.

Peers: nginx serving the same directory as static files with WebDAV PUT, with
`open_file_cache` off ("nginx") and on ("nginx+ofc"), and harmonia when HARMONIA_BIN
names a `harmonia-cache` binary (it serves the local Nix store, so the synthetic paths
are imported into it first). Every server runs pinned to core 0 and the load generator
(wrk, or bench/loadgen.rs for HEAD requests, or the Nix client) to core 1; every
workload runs `runs` times for a fixed duration and the median is reported, with the
ratio nix-stored/peer measured in the same run.

With Garage installed (scripts/garage.sh installs it), three more columns: "nix-stored-s3",
the same nix-stored on the S3 backend, the synthetic cache copied into a bucket of a
single-node Garage that runs pinned to core 0 with the server (the serving side gets one
core in every column); "nix-stored-s3-redirect", the same with NAR GETs answered by a 307
to a presigned URL (the NAR GET workloads only, the redirect followed by loadgen); and
"garage-direct", the same objects asked of Garage itself by the same load generators
(presigned URLs made here; uploads as nix-stored makes them, multipart above 8 MiB), the
peer that the S3 columns are divided by. They are left out of the growth workload (copying
a million objects into the bucket would dominate the run).

Workloads: narinfo hits, GET and HEAD misses, nix-cache-info, NAR GET (small and large,
1 and 16 connections), NAR PUT (the small-request and PUT workloads driven by
bench/loadgen.rs, the NAR GETs by wrk); growth (hits, misses, Zipf-skewed hits, start-up time and memory at
several cache sizes); end to end (`nix copy --to` and substitution of a closure with
the real Nix client). Writes a markdown report (RESULTS.md) and a chart of the ratios.

Exit status: 0 when the harness worked, whatever the figures (missed targets are
reported, not failures); 1 when something broke: a server did not start or crashed,
the load generator failed, an answer was wrong (a non-2xx where 2xx is expected, a
miss that is not a 404, a body that does not match the cache).
Python standard library only; the chart is drawn by bench/chart.py with matplotlib.
"""
import argparse
import concurrent.futures
import datetime
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NIX_STORED = os.path.join(REPO, "target", "release", "nix-stored")
MIB = 1 << 20
# The Zipf exponent of the skewed narinfo workload (s ≈ 1.1: a few thousand paths take
# most requests, as when many machines substitute the same closures).
ZIPF_S = 1.1
ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
sys.path.insert(0, HERE)
from gen_cache import nix32  # noqa: E402


class Broken(Exception):
    """The harness or a server broke: the run fails."""


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, CPU seconds busy on the whole machine, CPU seconds of this process and its reaped children)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def foreign_share(start: tuple, end: tuple) -> float:
    """The share of the machine's CPU time used by others (and by kernel threads) between two snapshots."""
    wall = end[0] - start[0]
    return max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (wall * (os.cpu_count() or 1))


def others_busy(window: float = 1.0) -> list[str]:
    """Processes of others using more than a tenth of a core over `window` seconds (builds, benchmarks)."""
    def sample() -> dict[int, tuple[str, int]]:
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        head, tail = f.read().rsplit(")", 1)
                    fields = tail.split()
                    out[int(entry)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
                except (OSError, IndexError, ValueError):
                    pass
        return out
    a = sample()
    time.sleep(window)
    b = sample()
    tick = os.sysconf("SC_CLK_TCK")
    return [f"{name}[{pid}] {100 * (t - a[pid][1]) / tick / window:.0f}%"
            for pid, (name, t) in b.items() if pid in a and (t - a[pid][1]) / tick > 0.1 * window]


def run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise Broken(f"{what} failed ({out.returncode}): {' '.join(argv)[:300]}\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return out


# ---------------------------------------------------------------------------------------
# Servers


class Server:
    """One server process, pinned to core 0, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, port: int, log_path: str, probe: str):
        self.name, self.port, self.log_path = name, port, log_path
        self.logf = open(log_path, "ab")
        self.log_start = self.logf.tell()
        self._pid = None
        # Processes that serve with it on core 0 (Garage, for the S3 backend).
        self.helpers: list[int] = []
        t0 = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", "0", *argv], env=env, stdout=self.logf, stderr=self.logf,
                                     stdin=subprocess.DEVNULL)
        try:
            self.startup = self._wait(probe, t0)
        except Broken:
            self.stop()
            raise

    def _wait(self, probe: str, t0: float, limit: float = 60.0) -> float:
        """Seconds from exec until `GET probe` is answered 200 by this process."""
        request = f"GET {probe} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        while time.monotonic() - t0 < limit:
            if self.proc.poll() is not None:
                raise Broken(f"{self.name} exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(request)
                    status = s.recv(12)
                    elapsed = time.monotonic() - t0
                    if status.startswith(b"HTTP/1.1 200") or status.startswith(b"HTTP/1.0 200"):
                        if self.proc.poll() is not None:
                            raise Broken(f"port {self.port} is answered by another process than {self.name}")
                        return elapsed
                    time.sleep(0.01)
            except OSError:
                time.sleep(0.002)
        raise Broken(f"{self.name}: GET {probe} not answered 200 within {limit:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        self.logf.flush()
        with open(self.log_path, "rb") as f:
            f.seek(max(self.log_start, os.path.getsize(self.log_path) - n))
            return f.read().decode(errors="replace")

    def pid(self) -> int:
        """The serving process: nginx's one worker, or the server itself."""
        if self._pid is None:
            kids = children(self.proc.pid)
            self._pid = kids[0] if kids else self.proc.pid
        return self._pid

    def status(self, field: str) -> float:
        """A /proc/PID/status memory figure, in MiB."""
        with open(f"/proc/{self.pid()}/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024

    def cpu_ticks(self) -> tuple[int, int]:
        """CPU time (utime + stime, clock ticks) of the server and of its helpers."""
        def ticks(pid: int) -> int:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        return ticks(self.pid()), sum(ticks(p) for p in self.helpers)

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid()}/clear_refs", "w") as f:
            f.write("5")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise Broken(f"{self.name} died (exit {self.proc.returncode}):\n{self.tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        return self.proc.returncode


class Kind:
    """How to start one server under test on a directory, and how the load generators address it."""

    # The column whose figures this one's are divided by in the ratio columns (None: the
    # ratio is nix-stored ÷ this one).
    ratio_base: str | None = None

    def __init__(self, name: str, work: str):
        self.name, self.work = name, work

    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        raise NotImplementedError

    def target(self, path: str, method: str = "GET") -> str:
        """The request target that asks this server for `path` (of the cache directory)."""
        return path

    def skip(self, wl: "Workload") -> str | None:
        """Why this server does not run a workload (None: it does)."""
        return None

    def tool(self, wl: "Workload") -> str:
        return wl.tool

    def loadgen_args(self, wl: "Workload", path: str, duration: float) -> list[str]:
        """bench/loadgen.rs's arguments after SECONDS for one run of `wl`."""
        if is_nar_get(wl):
            # One NAR, asked again and again: `path` is the whole request target.
            keys = os.path.join(self.work, f"{self.name}-{wl.path}.txt")
            with open(keys, "w") as f:
                f.write(path + "\n")
            return [f"keys={keys}", ""]
        return [wl.keys, wl.suffix] + ([f"body={wl.body}"] if wl.body else [])

    def loadgen_done(self) -> None:
        """Called after each loadgen run (to clean up what its arguments set up)."""

    def uploaded(self, path: str) -> str:
        """Where one object uploaded by the PUT workload (to `path`) can be read back."""
        return path

    def check_stopped(self, code: int, srv: Server) -> None:
        if code != 0:
            raise Broken(f"{self.name} exited with {code} after SIGTERM:\n{srv.tail()}")


class NixStored(Kind):
    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        port = free_port()
        env = dict(os.environ, NIX_STORED_PATH=root, NIX_STORED_LISTEN_INTERFACE=f"127.0.0.1:{port}",
                   NIX_STORED_LOG_LEVEL="info", NIX_STORED_ANONYMOUS_WRITES="true")
        return Server(self.name, [NIX_STORED], env, port, os.path.join(self.work, "logs", f"{self.name}.log"), probe)

    def check_stopped(self, code: int, srv: Server) -> None:
        super().check_stopped(code, srv)
        with open(srv.log_path, errors="replace") as f:
            f.seek(srv.log_start)
            for line in f:
                if "panicked" in line or " ERROR " in line:
                    raise Broken(f"{self.name} logged: {line.strip()}")


class S3Bucket:
    """A Garage of this run (scripts/garage.sh), and copies of cache directories in it."""

    def __init__(self, work: str):
        self.dir = os.path.join(work, "garage")
        out = run(["bash", os.path.join(REPO, "scripts", "garage.sh"), "start", self.dir], "scripts/garage.sh start")
        self.env = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
        with open(os.path.join(self.dir, "garage.pid")) as f:
            self.pid = int(f.read().strip())
        # The store is part of the serving side: on core 0 with the server.
        run(["taskset", "-a", "-p", "-c", "0", str(self.pid)], "pinning Garage")
        self.endpoint = self.env["NIX_STORED_TEST_S3_ENDPOINT"]
        self.bucket = self.env["NIX_STORED_TEST_S3_BUCKET"]
        self.region = self.env["NIX_STORED_TEST_S3_REGION"]
        self.key_id = self.env["NIX_STORED_TEST_S3_KEY_ID"]
        self.secret = self.env["NIX_STORED_TEST_S3_SECRET"]
        self.synced: dict[str, dict[str, tuple]] = {}
        self.signing_keys: dict[str, bytes] = {}

    def close(self) -> None:
        subprocess.run(["bash", os.path.join(REPO, "scripts", "garage.sh"), "stop", self.dir], capture_output=True)

    def settle(self, limit: float = 20.0) -> None:
        """Waits (at most `limit` s) until Garage's background work after the copy or the last uploads is
        done (under 5 % of a core over half a second), so that it does not land in the next runs."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> int:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        t = time.monotonic()
        while time.monotonic() - t < limit:
            a = cpu()
            time.sleep(0.5)
            if (cpu() - a) / tick < 0.025:
                return
        log(f"S3: Garage still busy after {limit:.0f}s")

    def _path(self, key: str) -> str:
        return "/" + self.bucket + "/" + "/".join(urllib.parse.quote(part, safe="-_.~") for part in key.split("/"))

    def _signing_key(self, day: str) -> bytes:
        k = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        return k

    def _signature(self, day: str, amz_date: str, canonical: str) -> str:
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = self.signing_keys.get(day)
        if key is None:
            key = self.signing_keys[day] = self._signing_key(day)
        return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()

    def put(self, conn: http.client.HTTPConnection, key: str, body: bytes) -> None:
        """One AWS SigV4-signed PutObject."""
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = self.endpoint.split("://", 1)[1]
        path = self._path(key)
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(["PUT", path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sig = self._signature(day, amz_date, canonical)
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.key_id}/{scope}, SignedHeaders={signed}, "
                                    f"Signature={sig}")
        conn.request("PUT", path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise Broken(f"S3 PUT {key} -> {r.status} {data[:300]!r}")

    def presign(self, method: str, key: str, query: dict | None = None, expires: int = 604_800) -> str:
        """A presigned URL's path and query (SigV4 in the query string, only `host` signed, the payload
        unsigned), valid `expires` seconds (S3's limit is 7 days): what a client without the secret sends."""
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = self.endpoint.split("://", 1)[1]
        path = self._path(key)
        q = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": f"{self.key_id}/{day}/{self.region}/s3/aws4_request",
             "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host", **(query or {})}
        canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                                   for k, v in sorted(q.items()))
        canonical = "\n".join([method, path, canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"])
        return f"{path}?{canonical_query}&X-Amz-Signature={self._signature(day, amz_date, canonical)}"

    def signed_request(self, method: str, key: str, query: dict | None = None, body: bytes = b"") -> tuple[int, bytes]:
        """One request by a presigned URL, on a connection of its own: (status, body)."""
        host, port = self.endpoint.split("://", 1)[1].rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            c.request(method, self.presign(method, key, query), body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def sync(self, root: str) -> str:
        """Copies what changed in `root` since the last call into the bucket; returns the prefix."""
        prefix = "bench-" + os.path.basename(os.path.dirname(root)) + "-" + os.path.basename(root)
        done = self.synced.setdefault(root, {})
        todo = []
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                st = os.stat(full)
                if done.get(rel) != (st.st_size, st.st_mtime_ns):
                    todo.append((rel, full, (st.st_size, st.st_mtime_ns)))
        host, port = self.endpoint.split("://", 1)[1].rsplit(":", 1)

        def upload(batch: list) -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            for rel, full, sig in batch:
                with open(full, "rb") as f:
                    self.put(conn, f"{prefix}/{rel}", f.read())
                done[rel] = sig
            conn.close()

        t = time.monotonic()
        batches = [todo[i::8] for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(upload, b) for b in batches if b]:
                f.result()
        log(f"S3: copied {len(todo)} objects of {root} into the bucket in {time.monotonic() - t:.1f}s")
        return prefix


class NixStoredS3(NixStored):
    """nix-stored on the S3 backend, serving a copy of the directory in Garage; with `redirect`,
    answering NAR GETs with a 307 to a presigned Garage URL (NIX_STORED_S3_REDIRECT=true)."""

    def __init__(self, name: str, work: str, bucket: S3Bucket, redirect: bool = False):
        super().__init__(name, work)
        self.bucket, self.redirect = bucket, redirect

    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        prefix = self.bucket.sync(root)
        self.bucket.settle()
        port = free_port()
        b = self.bucket
        env = dict(os.environ, NIX_STORED_S3_BUCKET=b.bucket, NIX_STORED_S3_PREFIX=prefix,
                   NIX_STORED_S3_ENDPOINT=b.endpoint, NIX_STORED_S3_REGION=b.region, AWS_ACCESS_KEY_ID=b.key_id,
                   AWS_SECRET_ACCESS_KEY=b.secret, NIX_STORED_LISTEN_INTERFACE=f"127.0.0.1:{port}",
                   NIX_STORED_LOG_LEVEL="info", NIX_STORED_ANONYMOUS_WRITES="true",
                   # What nix-stored does over HTTPS (every S3 service but a local one): this Garage
                   # is http:// only to spare the bench a certificate; garage-direct's presigned
                   # uploads are unsigned too.
                   AWS_UNSIGNED_PAYLOAD="true")
        if self.redirect:
            env.update(NIX_STORED_S3_REDIRECT="true", NIX_STORED_S3_REDIRECT_EXPIRY="3600")
        srv = Server(self.name, [NIX_STORED], env, port, os.path.join(self.work, "logs", f"{self.name}.log"), probe)
        srv.helpers = [b.pid]
        return srv

    def skip(self, wl: "Workload") -> str | None:
        # Only NAR GETs are redirected: every other request is nix-stored-s3's.
        if self.redirect and not is_nar_get(wl):
            return "not redirected: as nix-stored-s3"
        return None

    def tool(self, wl: "Workload") -> str:
        # NAR GETs by loadgen in every S3 column: wrk does not follow redirects, and its 8 KiB reads
        # leave Garage (no TCP_NODELAY) waiting for delayed ACKs (see GarageDirect).
        return "loadgen" if is_nar_get(wl) else wl.tool

    def loadgen_args(self, wl: "Workload", path: str, duration: float) -> list[str]:
        args = super().loadgen_args(wl, path, duration)
        # loadgen follows the 307 and counts the redirect and the fetch as one request.
        return args + ["follow"] if self.redirect and is_nar_get(wl) else args


class Attached(Server):
    """A server that is already running (Garage, serving its own S3 API): measured, never started or stopped."""

    def __init__(self, name: str, pid: int, port: int, log_path: str):
        self.name, self.port, self.log_path = name, port, log_path
        self._pid, self.helpers, self.startup = pid, [], None
        self.logf = open(log_path, "ab")
        self.log_start = self.logf.tell()

    def alive(self) -> None:
        try:
            os.kill(self._pid, 0)
        except OSError:
            raise Broken(f"{self.name} died:\n{self.tail()}")

    def stop(self) -> int:
        self.logf.close()
        return 0


class GarageDirect(Kind):
    """The same objects as nix-stored-s3 serves, asked of Garage itself by the same load generators:
    presigned URLs (one per key, valid 7 days, made in advance), so that the client does no signing;
    uploads as nix-stored makes them (one PUT up to 8 MiB, else a multipart upload of 8 MiB parts, one
    part in flight), each to a key of its own."""

    ratio_base = "nix-stored-s3"
    PART = 8 * MIB  # src/storage/s3/upload.rs PART_SIZE

    def __init__(self, name: str, work: str, bucket: S3Bucket, misses: int):
        super().__init__(name, work)
        self.bucket, self.misses = bucket, misses
        self.prefix = ""
        self.files: dict[tuple, str] = {}
        self.uploads: list[tuple[str, str]] = []
        self.put_seq = 0
        self.last_put = ""

    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        self.prefix = self.bucket.sync(root)
        self.bucket.settle()
        port = int(self.bucket.endpoint.rsplit(":", 1)[1])
        srv = Attached(self.name, self.bucket.pid, port, os.path.join(self.bucket.dir, "garage.log"))
        st, _, _ = request(port, "GET", self.target(probe))
        if st != 200:
            raise Broken(f"{self.name}: presigned GET {probe} -> {st}")
        return srv

    def target(self, path: str, method: str = "GET") -> str:
        return self.bucket.presign(method, self.prefix + path)

    def tool(self, wl: "Workload") -> str:
        # Garage does not set TCP_NODELAY: the last bytes of an object past a block boundary wait for
        # the client's ACK, which wrk's 8 KiB reads delay (delayed ACK, p50 24 ms for a NAR of 1 MiB
        # + 112 bytes; 1.3 ms with loadgen's 256 KiB reads). wrk would measure that, not Garage.
        return "loadgen" if is_nar_get(wl) else wl.tool

    def loadgen_args(self, wl: "Workload", path: str, duration: float) -> list[str]:
        if is_nar_get(wl):
            return super().loadgen_args(wl, path, duration)
        if wl.upload:
            return [f"plan={self.plan(wl, duration)}", "", f"body={wl.body}"]
        key = (wl.keys, wl.suffix, wl.method)
        if key not in self.files:
            out = os.path.join(self.work, f"direct-{len(self.files)}.txt")
            if wl.keys == "miss":
                names = ["".join(random.choices(ALPHABET, k=32)) for _ in range(self.misses)]
            else:
                names = [line.strip() for line in open(wl.keys.removeprefix("keys=")) if line.strip()]
            with open(out, "w") as f:
                for n in names:
                    f.write(self.target(f"/{n}{wl.suffix}", wl.method) + "\n")
            self.files[key] = out
        return [f"keys={self.files[key]}", ""]

    def plan(self, wl: "Workload", duration: float) -> str:
        """Enough uploads for `duration` at 2 GB/s: multipart ones are created here (their parts' URLs
        need the upload's id), the ones not used are aborted after the run."""
        size = wl.upload
        jobs = int(duration * 2000 * MIB / size) + 2 * wl.conns
        out = os.path.join(self.work, "direct-plan.txt")
        self.uploads = []
        with open(out, "w") as f:
            for _ in range(jobs):
                self.put_seq += 1
                key = f"{self.prefix}-direct/put-{self.put_seq}.nar"
                if size <= self.PART:
                    f.write(f"PUT {self.bucket.presign('PUT', key)}\n")
                    continue
                st, body = self.bucket.signed_request("POST", key, {"uploads": ""})
                m = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
                if st != 200 or not m:
                    raise Broken(f"{self.name}: CreateMultipartUpload -> {st} {body[:300]!r}")
                uid = m.group(1).decode()
                self.uploads.append((key, uid))
                parts = [self.bucket.presign("PUT", key, {"partNumber": str(n + 1), "uploadId": uid})
                         for n in range(-(-size // self.PART))]
                f.write(f"MPU {self.PART} {self.bucket.presign('POST', key, {'uploadId': uid})} {' '.join(parts)}\n")
        # The first upload of the plan is the first one sent: it is read back after the workload.
        self.last_put = f"{self.prefix}-direct/put-{self.put_seq - jobs + 1}.nar"
        return out

    def loadgen_done(self) -> None:
        for key, uid in self.uploads:
            # Completed ones answer 404 (no such upload): nothing to do.
            self.bucket.signed_request("DELETE", key, {"uploadId": uid})
        self.uploads = []

    def uploaded(self, path: str) -> str:
        return self.bucket.presign("GET", self.last_put)


class Nginx(Kind):
    def __init__(self, name: str, work: str, open_file_cache: bool):
        super().__init__(name, work)
        self.ofc = open_file_cache

    def conf(self, root: str, port: int) -> str:
        w = os.path.join(self.work, "nginx", f"{self.name}-{port}")
        os.makedirs(os.path.join(w, "body"), exist_ok=True)
        cache = (f"open_file_cache max={self.ofc_max()} inactive=60s; open_file_cache_valid 60s;"
                 if self.ofc else "open_file_cache off;")
        path = os.path.join(w, "nginx.conf")
        with open(path, "w") as f:
            f.write(f"""user root;
worker_processes 1;
worker_rlimit_nofile {self.nofile()};
daemon off;
pid {w}/nginx.pid;
error_log {self.work}/logs/{self.name}-error.log;
events {{ worker_connections 4096; }}
http {{
  types {{ text/x-nix-narinfo narinfo; application/x-nix-archive nar; text/plain ls; }}
  default_type application/octet-stream;
  access_log {self.work}/logs/{self.name}-access.log;
  log_not_found off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  # Upload bodies are staged on the same filesystem (rename, no copy), outside the cache.
  client_body_temp_path {w}/body;
  proxy_temp_path {w}/proxy; fastcgi_temp_path {w}/fastcgi; uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;
  {cache}
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ dav_methods PUT; create_full_put_path on; client_max_body_size 0; }}
  }}
}}
""")
        return path

    @staticmethod
    def nofile() -> int:
        """File descriptors the worker may have: as many as the hard limit allows, up to 400 000."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return 400_000 if hard == resource.RLIM_INFINITY else min(hard, 400_000)

    @classmethod
    def ofc_max(cls) -> int:
        """open_file_cache entries: 200 000, or fewer when the descriptor limit is lower (each holds one)."""
        return max(1000, min(200_000, cls.nofile() - 4096 - 1000))

    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        port = free_port()
        conf = self.conf(root, port)
        return Server(self.name, ["nginx", "-e", os.path.join(self.work, "logs", f"{self.name}-error.log"), "-c", conf],
                      dict(os.environ), port, os.path.join(self.work, "logs", f"{self.name}.log"), probe)


class Harmonia(Kind):
    """harmonia-cache serves the local Nix store through the Nix daemon."""

    def __init__(self, name: str, work: str, binary: str, nix_env: dict):
        super().__init__(name, work)
        self.binary, self.nix_env, self.daemon = binary, nix_env, None

    def skip(self, wl: "Workload") -> str | None:
        return "read-only" if wl.upload else None

    def start(self, root: str, probe: str = "/nix-cache-info") -> Server:
        sock = "/nix/var/nix/daemon-socket/socket"
        if self.daemon is None and not os.path.exists(sock):
            # The daemon does harmonia's store queries: it runs on the server's core too.
            self.daemon = subprocess.Popen(["taskset", "-c", "0", "nix-daemon"], env=self.nix_env,
                                           stdout=subprocess.DEVNULL,
                                           stderr=open(os.path.join(self.work, "logs", "nix-daemon.log"), "ab"))
            for _ in range(500):
                if os.path.exists(sock):
                    break
                time.sleep(0.01)
        port = free_port()
        conf = os.path.join(self.work, f"harmonia-{port}.toml")
        with open(conf, "w") as f:
            # Compression off: every server sends the stored bytes as they are.
            f.write(f'bind = "127.0.0.1:{port}"\nworkers = 1\nmax_connection_rate = 1024\npriority = 30\n'
                    'enable_compression = false\n')
        env = dict(os.environ, CONFIG_FILE=conf, RUST_LOG="info")
        return Server(self.name, [self.binary], env, port, os.path.join(self.work, "logs", f"{self.name}.log"), probe)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait()


# ---------------------------------------------------------------------------------------
# Load generators


def unit(value: str, scale: dict) -> float:
    m = re.match(r"([\d.]+)(\D*)", value)
    if not m:
        raise ValueError(f"unexpected wrk figure {value!r}")
    return float(m.group(1)) * scale.get(m.group(2), 1)


def parse_wrk(t: str) -> dict:
    lat = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
    size = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0 * 1024}
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
        "mbps": unit(re.search(r"Transfer/sec:\s+(\S+)", t).group(1), size),
        "p50": unit(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1), lat),
        "p99": unit(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1), lat),
        "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", t)) else 0,
        "socket_errors": m.group(0) if (m := re.search(r"Socket errors:.*", t)) else "",
        "requests": int(re.search(r"(\d+) requests in", t).group(1)),
    }


def wrk(port: int, script: str | None, conns: int, duration: float, path: str) -> dict:
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "60s"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(argv + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True)
    if out.returncode != 0 or "Requests/sec" not in out.stdout:
        raise Broken(f"wrk failed: {out.stdout}{out.stderr}")
    try:
        r = parse_wrk(out.stdout)
    except (AttributeError, ValueError) as e:
        raise Broken(f"cannot read wrk's output ({e}):\n{out.stdout}")
    r["raw"] = out.stdout
    return r


def loadgen(binary: str, port: int, method: str, conns: int, duration: float, args: list[str]) -> dict:
    out = run(["taskset", "-c", "1", binary, f"127.0.0.1:{port}", method, str(conns), f"{duration:g}", *args],
              "loadgen")
    j = json.loads(out.stdout)
    return {"rps": j["rps"], "mbps": j["mbps"], "p50": j["p50_ms"], "p99": j["p99_ms"], "requests": j["requests"],
            "statuses": {int(k): v for k, v in j["statuses"].items()}, "errors": j["errors"],
            "redirects": j["redirects"], "raw": out.stdout}


# ---------------------------------------------------------------------------------------
# Correctness checks (a benchmark of wrong answers is worthless)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def nar_hash(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, int]:
    """GET of a NAR: (status, nix32 SHA-256 of the body, bytes), following one redirect (S3 redirect mode)."""
    c = http.client.HTTPConnection(host, port, timeout=120)
    try:
        c.request("GET", path)
        r = c.getresponse()
        if r.status in (301, 302, 303, 307, 308) and host == "127.0.0.1":
            loc = urllib.parse.urlsplit(r.getheader("location", ""))
            r.read()
            if loc.scheme != "http" or not loc.hostname or not loc.port:
                return r.status, f"a redirect to {loc.geturl()!r}", 0
            return nar_hash(loc.port, loc.path + (f"?{loc.query}" if loc.query else ""), host=loc.hostname)
        h, n = hashlib.sha256(), 0
        while chunk := r.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        return r.status, nix32(h.digest()), n
    finally:
        c.close()


def expect(cond: bool, srv: Server, what: str) -> None:
    if not cond:
        raise Broken(f"{srv.name}: wrong answer: {what}")


def check_server(srv: Server, kind: Kind, root: str, key: str, nars: dict) -> None:
    """A hit, a miss (GET and HEAD), nix-cache-info and each NAR, answered right."""
    t = kind.target
    st, _, body = request(srv.port, "GET", t("/nix-cache-info"))
    expect(st == 200 and b"StoreDir: /nix/store" in body, srv, f"GET /nix-cache-info -> {st} {body[:200]!r}")
    st, hdr, body = request(srv.port, "GET", t(f"/{key}.narinfo"))
    if isinstance(kind, Harmonia):
        expect(st == 200 and f"StorePath: /nix/store/{key}-".encode() in body, srv, f"GET {key}.narinfo -> {st} {body[:300]!r}")
    else:
        with open(os.path.join(root, f"{key}.narinfo"), "rb") as f:
            want = f.read()
        expect(st == 200 and body == want, srv, f"GET {key}.narinfo -> {st} {body[:300]!r}, expected the file")
        st, hdr, body = request(srv.port, "HEAD", t(f"/{key}.narinfo", "HEAD"))
        expect(st == 200 and hdr.get("content-length") == str(len(want)), srv, f"HEAD {key}.narinfo -> {st} {hdr}")
    miss = "".join(random.choices(ALPHABET, k=32))
    for method in ("GET", "HEAD"):
        st, _, body = request(srv.port, method, t(f"/{miss}.narinfo", method))
        expect(st == 404, srv, f"{method} /{miss}.narinfo (absent) -> {st} {body[:200]!r}")
    for url, (fh, size) in nars.items():
        st, hdr, _ = request(srv.port, "HEAD", t(url, "HEAD"))
        expect(st == 200 and hdr.get("content-length") == str(size), srv, f"HEAD {url} -> {st} {hdr}")
        st, got, n = nar_hash(srv.port, t(url))
        expect(st == 200 and n == size and (fh is None or got == fh), srv,
               f"GET {url} -> {st}, {n} bytes hashing to {got}; expected {size} bytes hashing to {fh}")


# ---------------------------------------------------------------------------------------
# Workloads


class Workload:
    def __init__(self, name: str, metric: str, conns: int, target: str, *, lua: str | None = None, path: str = "/",
                 expect: str = "2xx", tool: str = "wrk", method: str = "GET", keys: str = "miss", upload: int = 0,
                 suffix: str = ".narinfo", body: str | None = None):
        self.name, self.metric, self.conns, self.target = name, metric, conns, target
        self.lua, self.path, self.expect, self.tool = lua, path, expect, tool
        self.method, self.keys, self.upload, self.suffix, self.body = method, keys, upload, suffix, body


def is_nar_get(wl: Workload) -> bool:
    return wl.path in ("nar1m", "narbig") and not wl.upload


def measure(srv: Server, wl: Workload, path: str, runs: int, duration: float, lg: str, kind: Kind) -> dict:
    """`runs` runs of one workload; the median run by its headline metric, and the peak RSS."""
    samples = []
    tool = kind.tool(wl)

    def lg_run(d: float) -> dict:
        try:
            return loadgen(lg, srv.port, wl.method, wl.conns, d, kind.loadgen_args(wl, path, d))
        finally:
            kind.loadgen_done()
    if runs > 1:
        # One discarded run: connections, page cache and the server's lazily built state warm up
        # the same way for every server, instead of favouring whichever runs second.
        if tool == "loadgen":
            lg_run(min(duration, 1.0))
        else:
            wrk(srv.port, wl.lua, wl.conns, min(duration, 1.0), path)
    srv.reset_peak()
    ticks = srv.cpu_ticks()
    for _ in range(runs):
        if tool == "loadgen":
            r = lg_run(duration)
            streamed = is_nar_get(wl)
            if r["requests"] == 0 and not r["errors"] and not r["statuses"] and not streamed:
                # Not one answer and nothing broken: the server stalled for the whole run (seen on a busy
                # machine in 1 s quick runs: another job's disk writes or CPU). Once more; a server that
                # stalls twice is reported broken below.
                log(f"{srv.name} / {wl.name}: no answer within {duration:g} s, running it again")
                r = lg_run(max(duration, 2.0))
            if r["requests"] == 0 and streamed and not r["errors"]:
                # As with wrk below: no answer completed, the bytes received still measure (none at all
                # is a figure too: seen in 1 s quick runs of nix-stored-s3 when Garage's answer stalled).
                r["p50"] = r["p99"] = float("nan")
            bad = {s: n for s, n in r["statuses"].items() if not (s == 404 if wl.expect == "404" else 200 <= s < 300)}
            if r["errors"] or (r["requests"] == 0 and not streamed) or bad:
                raise Broken(f"{srv.name} / {wl.name}: {r['errors']} broken connections, {r['requests']} answers, "
                             f"unexpected statuses {bad}\n{srv.tail()}")
        else:
            r = wrk(srv.port, wl.lua, wl.conns, duration, path)
            streamed = wl.metric == "mbps" and not wl.upload and r["mbps"] > 0
            if r["requests"] == 0 and streamed and not r["socket_errors"]:
                # Not one 256 MiB answer completed within the run (a slow backend over 16
                # connections): the bytes received still measure the throughput, but
                # there is no latency to report.
                r["p50"] = r["p99"] = float("nan")
            elif r["socket_errors"] or r["requests"] == 0:
                raise Broken(f"{srv.name} / {wl.name}: {r['socket_errors'] or 'no answers'}\n{r['raw']}\n{srv.tail()}")
            if wl.expect == "2xx" and r["non2xx"]:
                raise Broken(f"{srv.name} / {wl.name}: {r['non2xx']} of {r['requests']} answers were not 2xx/3xx\n{srv.tail()}")
            if wl.expect == "404" and r["non2xx"] != r["requests"]:
                raise Broken(f"{srv.name} / {wl.name}: {r['requests'] - r['non2xx']} misses were answered 2xx/3xx")
        if wl.upload:
            # wrk's Transfer/sec counts received bytes: an upload's rate is its body times the request rate.
            r["mbps"] = r["rps"] * wl.upload / MIB
        srv.alive()
        samples.append(r)
    med = sorted(samples, key=lambda r: r[wl.metric])[len(samples) // 2]
    med = {k: v for k, v in med.items() if k != "raw"}
    med["rss"] = srv.status("VmHWM")
    med["spread"] = [s[wl.metric] for s in samples]
    own, helpers = (b - a for a, b in zip(ticks, srv.cpu_ticks()))
    if srv.helpers and own + helpers:
        med["helper_cpu"] = helpers / (own + helpers)
    return med


def gen_cache(root: str, paths: int, keys_file: str, start: int = 0, nar_sizes: list[int] = (),
              nars_file: str | None = None) -> None:
    argv = [sys.executable, os.path.join(HERE, "gen_cache.py"), root, "--paths", str(paths), "--start", str(start),
            "--keys", keys_file]
    if nar_sizes:
        argv += ["--nar-sizes", ",".join(map(str, nar_sizes)), "--nars", nars_file]
    run(argv, "gen_cache.py")


def main_workloads(cfg, kinds: list[Kind], lg: str, results: dict, notes: list[str]) -> dict:
    work = cfg.work
    root = os.path.join(work, "cache")
    keys_file = os.path.join(work, "keys.txt")
    nars_file = os.path.join(work, "nars.txt")
    t = time.monotonic()
    gen_cache(root, cfg.paths, keys_file, nar_sizes=[MIB, cfg.big, cfg.put_size], nars_file=nars_file)
    # Write-back of the freshly generated files must not land in the first server's runs.
    os.sync()
    log(f"generated {cfg.paths} narinfos and NARs of 1 MiB, {cfg.big // MIB} MiB, {cfg.put_size // MIB} MiB "
        f"in {time.monotonic() - t:.1f}s")
    nars = [line.split() for line in open(nars_file)]
    (_, nar_1m, size_1m, h_1m), (_, nar_big, size_big, h_big), (_, nar_put, size_put, _) = nars
    put_body = os.path.join(work, "put.nar")
    shutil.copy(os.path.join(root, nar_put), put_body)
    key0 = open(keys_file).readline().strip()
    info_file = os.path.join(work, "cache-info-key.txt")
    with open(info_file, "w") as f:
        f.write("nix-cache-info\n")
    put_file = os.path.join(work, "put-key.txt")
    with open(put_file, "w") as f:
        f.write(f"/{nar_put}\n")
    big = f"{cfg.big // MIB} MiB"
    workloads = [
        Workload("narinfo GET hit", "rps", 64, "hit", tool="loadgen", keys=f"keys={keys_file}"),
        Workload("narinfo GET miss", "rps", 64, "miss", tool="loadgen", expect="404"),
        Workload("narinfo HEAD miss", "rps", 64, "miss", tool="loadgen", method="HEAD", expect="404"),
        Workload("nix-cache-info GET", "rps", 64, "", tool="loadgen", keys=f"keys={info_file}", suffix=""),
        Workload("NAR GET 1 MiB, 1 conn", "mbps", 1, "", path="nar1m"),
        Workload("NAR GET 1 MiB, 16 conns", "mbps", 16, "", path="nar1m"),
        Workload(f"NAR GET {big}, 1 conn", "mbps", 1, "big", path="narbig"),
        Workload(f"NAR GET {big}, 16 conns", "mbps", 16, "big", path="narbig"),
        Workload(f"NAR PUT {cfg.put_size // MIB} MiB, 4 conns", "mbps", 4, "put", tool="loadgen", method="PUT",
                 keys=f"keys={put_file}", suffix="", body=put_body, path="narput", upload=int(size_put)),
    ]
    startup = {}
    for kind in kinds:
        urls = {"nar1m": "/" + nar_1m, "narbig": "/" + nar_big, "narput": "/" + nar_put}
        expected = {"/" + nar_1m: (nar_1m[4:-4], int(size_1m)), "/" + nar_big: (nar_big[4:-4], int(size_big))}
        if isinstance(kind, Harmonia):
            import_into_store(cfg, root, keys_file, [h_1m, h_big])
        srv = kind.start(root)
        try:
            if srv.startup is not None:
                startup[kind.name] = srv.startup
            if isinstance(kind, Harmonia):
                # harmonia names NARs itself: follow each narinfo's URL.
                expected = {}
                for name, h, size in (("nar1m", h_1m, size_1m), ("narbig", h_big, size_big)):
                    st, _, body = request(srv.port, "GET", f"/{h}.narinfo")
                    m = re.search(rb"^URL: (\S+)$", body, re.M)
                    expect(st == 200 and m is not None, srv, f"GET /{h}.narinfo -> {st} {body[:300]!r}")
                    urls[name] = "/" + m.group(1).decode()
                    expected[urls[name]] = (None, int(size))
                del urls["narput"]  # read-only
            check_server(srv, kind, root, key0, expected)
            for wl in workloads:
                if kind.skip(wl) or (wl.path in ("nar1m", "narbig", "narput") and wl.path not in urls):
                    results[(wl.name, kind.name)] = None
                    continue
                path = kind.target(urls.get(wl.path, wl.path))
                if wl.upload:
                    os.sync()
                r = measure(srv, wl, path, cfg.runs, cfg.duration, lg, kind)
                results[(wl.name, kind.name)] = r
                log(f"{kind.name:10} {wl.name:26} {r['rps']:9.0f} req/s {r['mbps']:8.1f} MB/s "
                    f"p50 {r['p50']:7.2f} ms p99 {r['p99']:7.2f} ms peak RSS {r['rss']:6.1f} MiB")
                if wl.upload:
                    st, got, n = nar_hash(srv.port, kind.uploaded(path))
                    expect(st == 200 and got == nar_put[4:-4] and n == int(size_put), srv,
                           f"after the PUTs, GET {path} -> {st}, {n} bytes hashing to {got}")
        finally:
            code = srv.stop()
        kind.check_stopped(code, srv)
        tmp = os.path.join(root, ".tmp")
        leftovers = os.listdir(tmp) if os.path.isdir(tmp) else []
        if leftovers:
            notes.append(f"{kind.name} left {len(leftovers)} file(s) in .tmp/ after a clean stop.")
        # A server's dirty pages (nginx does not fsync uploads) must not be written back during the next one's run.
        os.sync()
    return {"workloads": workloads, "startup": startup}


def growth(cfg, kinds: list[Kind], lg: str, results: dict) -> None:
    """Hits, misses, start-up time and memory as the cache grows, in one directory grown in place."""
    gdir = os.path.join(cfg.work, "growth")
    os.makedirs(gdir, exist_ok=True)
    root, keys_file = os.path.join(gdir, "cache"), os.path.join(gdir, "keys.txt")
    hit = Workload("hit", "rps", 64, "", tool="loadgen", keys=f"keys={keys_file}")
    miss = Workload("miss", "rps", 64, "", tool="loadgen", expect="404")
    # Skewed traffic: many machines substitute the same closures (bench/loadgen.rs's
    # zipf mode, the same sequence for every server).
    zipf = Workload("zipf", "rps", 64, "", tool="loadgen", keys=f"zipf={ZIPF_S}:{keys_file}")
    have = 0
    for n in cfg.growth:
        t = time.monotonic()
        gen_cache(root, n, keys_file, start=have)
        have = n
        os.sync()
        log(f"growth: {n} narinfos ({time.monotonic() - t:.1f}s to write)")
        key0 = open(keys_file).readline().strip()
        for kind in kinds:
            if isinstance(kind, (Harmonia, NixStoredS3, GarageDirect)):
                continue
            srv = kind.start(root, probe=f"/{key0}.narinfo")
            try:
                rss_start = srv.status("VmRSS")
                h = measure(srv, hit, "/", cfg.runs, cfg.growth_duration, lg, kind)
                m = measure(srv, miss, "/", cfg.runs, cfg.growth_duration, lg, kind)
                z = measure(srv, zipf, "/", cfg.runs, cfg.growth_duration, lg, kind)
            finally:
                code = srv.stop()
            kind.check_stopped(code, srv)
            rss = max(h["rss"], m["rss"], z["rss"])
            results[(n, kind.name)] = {"startup": srv.startup, "rss_start": rss_start, "rss": rss, "hit": h, "miss": m,
                                       "zipf": z}
            log(f"growth {n:>8} {kind.name:10} start {srv.startup * 1000:7.1f} ms  hits {h['rps']:8.0f} req/s "
                f"(p99 {h['p99']:.2f} ms)  misses {m['rps']:8.0f} req/s (p99 {m['p99']:.2f} ms)  "
                f"Zipf {z['rps']:8.0f} req/s (p99 {z['p99']:.2f} ms)  RSS {rss:.1f} MiB")
    # Left for the end of the run, with the work directory: freeing a million inodes here would bill the
    # end-to-end uploads that follow for skipping them (see e2e's doc).


# ---------------------------------------------------------------------------------------
# End to end, with the real Nix client


def nix_env(cfg) -> dict:
    conf = os.path.join(cfg.work, "nix-conf")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "nix.conf"), "w") as f:
        f.write("build-users-group =\nexperimental-features = nix-command\nsubstituters =\ntrusted-public-keys =\n"
                "require-sigs = true\nsandbox = false\nconnect-timeout = 5\nstalled-download-timeout = 60\n"
                "narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_") or k == "NIX_SSL_CERT_FILE"}
    env.update(NIX_CONF_DIR=conf, XDG_CONFIG_HOME=os.path.join(cfg.work, "xdg-config"))
    return env


def nix(cfg, argv: list[str], what: str, env: dict) -> tuple[float, str]:
    """Runs a Nix command on core 1 with a fresh client cache; returns (seconds, stdout)."""
    e = dict(env, XDG_CACHE_HOME=tempfile.mkdtemp(dir=cfg.work, prefix="xdg-cache-"))
    t = time.monotonic()
    out = run(["taskset", "-c", "1", *argv], what, env=e)
    return time.monotonic() - t, out.stdout


NIX_CHROOT = "/var/cache/nix-stored-test/trixie"


class NixClient:
    """A Nix client of the end-to-end part: the host's (Debian 12's Nix 2.8, one path at a time) or the one in the
    Debian 13 chroot that scripts/nix-chroot.sh prepares (Nix 2.26), each with its own store and nix.conf, run on
    core 1 with a fresh client cache per call."""

    def __init__(self, cfg, chroot: str | None = None):
        self.chroot = chroot
        # Where its files live, as the host sees them and as the client does.
        self.inner = "/tmp/nix-stored-bench" if chroot else cfg.work
        self.base = os.path.join(chroot, self.inner.lstrip("/")) if chroot else cfg.work
        if chroot:
            shutil.rmtree(self.base, ignore_errors=True)
            os.makedirs(self.base)
            self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            conf = os.path.join(self.base, "nix-conf")
            os.makedirs(conf)
            shutil.copy(os.path.join(nix_env(cfg)["NIX_CONF_DIR"], "nix.conf"), conf)
        else:
            self.env = nix_env(cfg)
        # "nix (Nix) 2.26.3" -> "Nix 2.26.3"
        self.version = "Nix " + self.run(["nix", "--version"], "nix --version")[1].split()[-1]

    def run(self, argv: list[str], what: str) -> tuple[float, str]:
        """Runs a Nix command; returns (seconds, stdout)."""
        xdg = tempfile.mkdtemp(dir=self.base, prefix="xdg-cache-")
        if self.chroot:
            inner_xdg = "/" + os.path.relpath(xdg, self.chroot)
            argv = ["chroot", self.chroot, "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                    f"NIX_CONF_DIR={self.inner}/nix-conf", f"XDG_CACHE_HOME={inner_xdg}", *argv]
        t = time.monotonic()
        out = run(["taskset", "-c", "1", *argv], what, env=dict(self.env, XDG_CACHE_HOME=xdg))
        return time.monotonic() - t, out.stdout

    def close(self) -> None:
        if self.chroot:
            shutil.rmtree(self.base, ignore_errors=True)


def nix_clients(cfg, notes: list[str]) -> list[NixClient]:
    """The host's client, and the chroot's when scripts/nix-chroot.sh has prepared it (the test suite does)."""
    clients = [NixClient(cfg)]
    if os.path.isfile(os.path.join(NIX_CHROOT, ".nix-stored-complete")):
        # Idempotent: mounts /proc and /dev inside when they are not yet.
        run(["bash", os.path.join(REPO, "scripts", "nix-chroot.sh"), NIX_CHROOT], "scripts/nix-chroot.sh")
        clients.append(NixClient(cfg, NIX_CHROOT))
    else:
        notes.append(f"end to end with Nix 2.26 not measured: no chroot in {NIX_CHROOT} (scripts/nix-chroot.sh "
                     f"prepares it; the test suite does)")
    return clients


def make_closure(client: NixClient, n: int) -> tuple[str, list[str]]:
    """n small text paths (`builtins.toFile`), each referring to two others: a tree of depth log2(n).

    Content-addressed, so Nix accepts them without a signature; no build needed."""
    expr = f"""
let
  n = {n};
  filler = builtins.concatStringsSep "" (builtins.genList (x: "nix-stored benchmark filler. ") 35);
  mk = i: builtins.toFile "nix-stored-bench-e2e-${{toString i}}"
    ("${{toString i}}\\n" + filler
     + (if 2 * i + 1 < n then "${{mk (2 * i + 1)}}\\n" else "")
     + (if 2 * i + 2 < n then "${{mk (2 * i + 2)}}\\n" else ""));
in mk 0
"""
    _, root = client.run(["nix", "eval", "--raw", "--expr", expr], "nix eval (making the e2e closure)")
    _, closure = client.run(["nix-store", "-qR", root], "nix-store -qR")
    paths = closure.split()
    if len(paths) != n:
        raise Broken(f"the e2e closure has {len(paths)} paths, expected {n}")
    return root, paths


def e2e(cfg, kinds: list[Kind], clients: list[NixClient], results: dict) -> None:
    """nix copy --to each server, then substitution from it, with each client, run by run: the servers take turns
    in an order that alternates from run to run, and write-back is flushed (sync) before each copy. The run
    directories are removed only at the end: on ext4 without a journal a file created next to inodes freed in the
    last seconds pays for skipping them (`recently_deleted`), so removing one run's cache just before the next
    server's copy would bill that server for its predecessor's cleanup."""
    n = cfg.e2e_paths
    for client in clients:
        store_root, paths = make_closure(client, n)
        log(f"e2e: {client.version}: closure of {n} paths, root {store_root}")
        copies = {k.name: [] for k in kinds}
        subs = {k.name: [] for k in kinds}
        rss = {k.name: 0.0 for k in kinds}
        roots = []
        try:
            for r in range(cfg.runs):
                for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                    root = os.path.join(cfg.work, "e2e", f"{kind.name}-{len(roots)}")
                    roots.append(root)
                    os.makedirs(root)
                    with open(os.path.join(root, "nix-cache-info"), "w") as f:
                        f.write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
                    os.sync()
                    srv = kind.start(root)
                    try:
                        srv.reset_peak()
                        url = f"http://127.0.0.1:{srv.port}"
                        t, _ = client.run(["nix", "copy", "--to", f"{url}?compression=zstd", store_root],
                                          f"nix copy --to {kind.name}")
                        copies[kind.name].append(t)
                        stored = [e for e in os.listdir(root) if e.endswith(".narinfo")]
                        expect(len(stored) == n, srv,
                               f"after nix copy --to, {len(stored)} narinfos in the cache, expected {n}")
                        client.run(["nix-store", "--delete", *paths], "nix-store --delete (before substituting)")
                        t, _ = client.run(["nix-store", "-r", store_root, "--option", "substituters", url],
                                          f"substitution from {kind.name}")
                        subs[kind.name].append(t)
                        client.run(["nix-store", "--check-validity", *paths],
                                   f"the closure substituted from {kind.name} is incomplete:")
                        srv.alive()
                        rss[kind.name] = max(rss[kind.name], srv.status("VmHWM"))
                    finally:
                        code = srv.stop()
                    kind.check_stopped(code, srv)
            for kind in kinds:
                c, s_ = copies[kind.name], subs[kind.name]
                for step, times in (("copy", c), ("subst", s_)):
                    results[(step, client.version, kind.name)] = {
                        "time": statistics.median(times), "spread": times, "rss": rss[kind.name]}
                log(f"e2e {client.version} {kind.name:10} nix copy --to {statistics.median(c):.2f} s, substitution "
                    f"{statistics.median(s_):.2f} s ({n} paths, median of {cfg.runs}; copies "
                    f"{' '.join(f'{t:.2f}' for t in c)}); peak RSS {rss[kind.name]:.1f} MiB")
        finally:
            try:
                client.run(["nix-store", "--delete", *paths], "nix-store --delete (after the runs)")
            except Broken:
                pass
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)


def import_into_store(cfg, root: str, keys_file: str, extra: list[str]) -> None:
    """harmonia serves the local store: import the synthetic paths (unsigned, so --no-check-sigs)."""
    env = nix_env(cfg)
    base = ["nix", "copy", "--from", f"file://{root}", "--no-check-sigs"]
    t = time.monotonic()
    out = subprocess.run(base + ["--all"], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        log(f"harmonia: `nix copy --all` from file:// failed, importing by path: {out.stderr.strip()[-300:]}")
        paths = [f"/nix/store/{k}-bench-{i}" for i, k in enumerate(open(keys_file).read().split())]
        for h in extra:
            with open(os.path.join(root, f"{h}.narinfo")) as f:
                paths.append(f.readline().split(": ", 1)[1].strip())
        for i in range(0, len(paths), 5000):
            run(base + paths[i:i + 5000], "nix copy --from file:// (harmonia import)", env=env)
    log(f"harmonia: imported the synthetic cache into /nix/store in {time.monotonic() - t:.1f}s")


def remove_from_store(cfg, root: str) -> None:
    env = nix_env(cfg)
    paths = []
    for e in os.listdir(root):
        if e.endswith(".narinfo"):
            with open(os.path.join(root, e)) as f:
                paths.append(f.readline().split(": ", 1)[1].strip())
    for i in range(0, len(paths), 5000):
        subprocess.run(["nix-store", "--delete", *paths[i:i + 5000]], env=env, capture_output=True)


# ---------------------------------------------------------------------------------------
# Report


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout.strip() or out.stderr.strip()).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def harmonia_version(binary: str) -> str:
    # harmonia-cache has no --version (it starts serving instead): name it by HARMONIA_VERSION.
    return f"{os.environ.get('HARMONIA_VERSION', 'version not given (set HARMONIA_VERSION)')} ({binary})"


def machine() -> list[str]:
    model = "?"
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    commit = first_line(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return [
        f"- CPU: {first_line(['nproc'])} cores (`nproc`), {model} (`lscpu`); memory {int(mem) // 1024} MiB; "
        f"kernel {os.uname().release}",
        f"- nix-stored: {first_line([NIX_STORED, '--version'])} (commit {commit}, `cargo build --release`)",
        f"- {first_line(['nginx', '-v'])}; {first_line(['wrk', '--version'])}; "
        f"{first_line(['nix', '--version']) if shutil.which('nix') else 'nix: not installed'}; "
        f"Python {sys.version.split()[0]}"
        + (f"; harmonia: {harmonia_version(os.environ['HARMONIA_BIN'])}" if os.environ.get("HARMONIA_BIN") else ""),
    ]


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}".replace(",", " ")


def report(cfg, main: dict | None, results: dict, gres: dict, eres: dict, kinds: list[Kind], notes: list[str],
           load: tuple, elapsed: float) -> tuple[list[str], list[dict]]:
    peers = [k.name for k in kinds if k.name != "nix-stored"]
    e2e_peers = ["nginx"]
    chart: list[dict] = []
    busy = load[1] > 0.10 or load[2]
    L = [
        "# nix-stored benchmark" + (" — quick mode (a smoke run of the harness: figures not to quote)" if cfg.quick else ""),
        "",
        f"Written by `bench/run.sh{' --quick' if cfg.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"in {elapsed / 60:.1f} min. Load average at start {load[0]:.2f}; CPU time of other processes and kernel "
        f"threads during the run: {load[1] * 100:.0f}% of the machine"
        + ((" — **the machine was not idle: figures are noisy**"
            + (f" (running at start: {', '.join(load[2][:6])})" if load[2] else "") + ".") if busy else " (quiet machine)."),
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Set-up (the same for every server)",
        "",
        f"- One synthetic cache directory, served by every server in turn in the same run: {cfg.paths} narinfos "
        f"(valid, `Compression: none`, sharing one 1 KB NAR) plus NARs of 1 MiB, {cfg.big // MIB} MiB and "
        f"{cfg.put_size // MIB} MiB (`bench/gen_cache.py`).",
        f"- Server pinned to core 0 (`taskset -c 0`), load generator to core 1 (`taskset -c 1 wrk -t1`). "
        f"{cfg.runs} run(s) of {cfg.duration:g} s per workload and server, median run reported (by req/s or MB/s); "
        "p50/p99 are wrk's `--latency` figures of that run (nan: no answer completed within the run, "
        "so only the bytes received were measured); loadgen's in the same way where it drives a workload.",
        "- Peak RSS: `VmHWM` of the serving process (nix-stored; nginx's one worker; harmonia), reset with "
        "`clear_refs` before each workload and read after it.",
        "- Access logging on for all: nix-stored `NIX_STORED_LOG_LEVEL=info` (one line per request on stderr, "
        "redirected to a file); nginx `access_log` to a file (default format, unbuffered).",
        "- nginx, tuned as a careful operator would: `worker_processes 1` (pinned with its master on core 0), "
        "`sendfile on; tcp_nopush on; tcp_nodelay on`, keep-alive (`keepalive_requests 1000000`), "
        "`log_not_found off` (misses are normal for a cache), WebDAV `dav_methods PUT; create_full_put_path on; "
        "client_max_body_size 0`, upload bodies staged on the same filesystem; `open_file_cache` off (**nginx**) "
        f"and `open_file_cache max={Nginx.ofc_max()} inactive=60s; open_file_cache_valid 60s` (**nginx+ofc**; "
        f"`worker_rlimit_nofile {Nginx.nofile()}`, the hard descriptor limit here, bounds the cache: each entry "
        "holds an open file).",
        "- What differs by design: nix-stored hashes every NAR PUT against its name and fsyncs it (file and "
        "directory) before answering; nginx WebDAV stores whatever it is sent, without fsync. nix-stored generates "
        "`nix-cache-info`; nginx serves the file written at start.",
        "- Load generators: the narinfo and `nix-cache-info` workloads are driven by `bench/loadgen.rs` (built "
        "with `rustc -O`: one thread, epoll, 64 keep-alive connections with one request in flight on each, a new "
        "random key per request), and so is the NAR PUT (the NAR's bytes from memory with a Content-Length, "
        "the next PUT when the answer came); the NAR GET workloads by `wrk -t1`. wrk is not used for small requests because "
        "its per-request Lua `request()` saturates the load generator's core before the faster servers' (seen "
        "here: core 1 at 93–99 % during misses, so both servers measured wrk's ceiling), and because it waits "
        "for a body after a HEAD answer's Content-Length. Misses are random 32-character nix32 hashes; hits are "
        f"random keys among the N; Zipf hits (growth) are keys of rank k with probability ∝ 1/k^{ZIPF_S}.",
        "- Between servers the directory is the same; uploads are forced to disk (`sync`) so that one server's "
        "write-back does not land in the next one's run; nginx's temporary files live outside the cache.",
    ]
    if any(isinstance(k, NixStoredS3) for k in kinds):
        L.append("- S3: a single-node Garage (`scripts/garage.sh`, sqlite metadata, data on the same disk) holds a "
                 "copy of the cache directory and runs on core 0 with whichever column uses it, so the serving side "
                 "has one core in every column. **nix-stored-s3**: nix-stored on the S3 backend (narinfo memo "
                 "`NIX_STORED_S3_NARINFO_TTL` at its default), with `AWS_UNSIGNED_PAYLOAD=true`: uploads as "
                 "nix-stored makes them over HTTPS, which any S3 service but a local one uses (this Garage speaks "
                 "http:// only to spare the bench a certificate; over http:// nix-stored signs upload bodies, "
                 "which costs it and Garage a SHA-256 of every part). **garage-direct**: the same objects asked of Garage "
                 "itself, by the same load generators on core 1, with presigned URLs (SigV4 in the query string, "
                 "made by bench.py before the run, one per key, valid 7 days, so the client signs nothing; misses "
                 f"are {'2 000' if cfg.quick else '20 000'} random absent keys, each presigned for GET or HEAD); its "
                 "uploads are made as nix-stored-s3 makes them (one PUT up to 8 MiB, else a multipart upload of "
                 "8 MiB parts, one part in flight, then the completion), each to a key of its own, created before "
                 "the run (a part's URL needs the upload's id), the time of the parts and of the completion "
                 "counted, the creation not. The ratios nix-stored-s3 ÷ garage-direct say what nix-stored adds on "
                 "the same store and the same core. **nix-stored-s3-redirect**: `NIX_STORED_S3_REDIRECT=true`, a "
                 "NAR GET is answered 307 with a presigned Garage URL (after a HEAD to Garage, so that a missing NAR "
                 "stays a 404); only the NAR GET workloads are run (nothing else is redirected): a request is the "
                 "GET to nix-stored, its 307 and the GET of the Location from Garage (on a second keep-alive "
                 "connection per connection), counted once, its latency from the first byte sent to the last byte "
                 "of the NAR: what a client waits for, with both servers' work on core 0.")
        L.append("- In the three S3 columns the NAR GETs are driven by `bench/loadgen.rs` instead of wrk (the "
                 "ratio nix-stored ÷ nix-stored-s3 of these rows thus mixes the two; at S3's speeds the load "
                 "generator's core is far from busy): wrk does not follow redirects, and Garage does not set "
                 "`TCP_NODELAY`, so the bytes of an object past a block boundary (Garage's blocks are 1 MiB; the "
                 "1 MiB NAR is 112 bytes longer) wait for the client's ACK, which wrk's 8 KiB reads delay: with wrk, "
                 "Garage answered that NAR at p50 24 ms (55 MB/s on one connection) against 1.3 ms with loadgen's "
                 "256 KiB reads, and the 256 MiB NAR at 425 MB/s against 750 MB/s. That would measure wrk's ACKs, "
                 "not Garage. (For the directory columns wrk stays: at 1.5–3 GB/s the two generators differ by "
                 "up to a fifth either way, and earlier reports used wrk.)")
    if not any(isinstance(k, Harmonia) for k in kinds):
        L.append("- harmonia: not measured in this run (set `HARMONIA_BIN` to a `harmonia-cache` binary; it serves "
                 "the local Nix store through the Nix daemon, so the synthetic paths are imported with "
                 "`nix copy --from file://DIR --all --no-check-sigs` first).")
    L.append("- The seed's Go original is not measured: it needs code generation (oapi-codegen) that is not "
             "available from the registries this machine reaches.")

    def ratio(ns: float | None, peer: float | None, lower_better: bool = False) -> float | None:
        if ns is None or peer is None or ns == 0 or peer == 0:
            return None
        return peer / ns if lower_better else ns / peer

    if main:
        wls = main["workloads"]
        # (numerator, denominator, header): nix-stored ÷ each peer, and for a peer that measures the
        # store under nix-stored-s3 (Garage direct), each S3 column ÷ that peer.
        cols = []
        for k in kinds[1:]:
            if k.ratio_base is None:
                cols.append(("nix-stored", k.name, f"ratio vs {k.name}"))
        for k in kinds[1:]:
            if k.ratio_base is not None:
                cols += [(s.name, k.name, f"{s.name} ÷ {k.name}") for s in kinds
                         if isinstance(s, NixStoredS3)]
        L += ["", "## Workloads", "",
              "Ratio = nix-stored ÷ peer of the headline figure (req/s, or MB/s for NARs): above 1, nix-stored is "
              "faster" + ("; the last columns divide each nix-stored-on-S3 column by garage-direct (the same "
                          "objects asked of Garage itself)" if any(k.ratio_base for k in kinds) else "") + ".",
              "",
              "| workload | metric | " + " | ".join(["nix-stored", *peers]) + " | "
              + " | ".join(c[2] for c in cols) + " |",
              "|---|---|" + "---:|" * (1 + len(peers) + len(cols))]
        for wl in wls:
            unit_ = "req/s" if wl.metric == "rps" else "MB/s"
            vals = [results.get((wl.name, k.name)) for k in kinds]
            figs = [fmt(v[wl.metric], 0 if wl.metric == "rps" else 1) if v else "n/a" for v in vals]
            rats = []
            for num, den, _ in cols:
                a, b = results.get((wl.name, num)), results.get((wl.name, den))
                r = ratio(a[wl.metric] if a else None, b[wl.metric] if b else None)
                rats.append(f"{r:.2f}" if r else "n/a")
                if r:
                    chart.append({"label": wl.name, "peer": den if num == "nix-stored" else f"{den}, for {num}",
                                  "ratio": r})
            L.append(f"| {wl.name} | {unit_} | " + " | ".join(figs) + " | " + " | ".join(rats) + " |")
        L += ["", "Details (median run; the last column lists every run's headline figure):", "",
              "| workload | server | req/s | MB/s | p50 ms | p99 ms | peak RSS MiB | runs |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
        for wl in wls:
            for k in kinds:
                r = results.get((wl.name, k.name))
                if r is None:
                    L.append(f"| {wl.name} | {k.name} | n/a | | | | | {k.skip(wl) or 'not measured'} |")
                    continue
                spread = ", ".join(fmt(x, 0 if wl.metric == "rps" else 1) for x in r["spread"])
                L.append(f"| {wl.name} | {k.name} | {fmt(r['rps'])} | {fmt(r['mbps'], 1)} | {r['p50']:.2f} | "
                         f"{r['p99']:.2f} | {r['rss']:.1f} | {spread} |")
        L += ["", "Start-up (exec to the first `GET /nix-cache-info` answered 200) on this cache: "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in main["startup"].items()) + "."]

    if gres:
        gk = [k.name for k in kinds if not isinstance(k, (Harmonia, NixStoredS3, GarageDirect))]
        L += ["", "## Growth", "",
              f"narinfo GET hits and misses (64 connections, {cfg.runs} run(s) of {cfg.growth_duration:g} s, median) "
              "on caches of N paths, grown in place; start-up is exec to the first narinfo hit answered 200; "
              f"peak RSS is over the three workloads. Hits draw keys uniformly among the N; Zipf draws them with "
              f"probability ∝ 1/rank^{ZIPF_S} (skewed traffic: the same closures substituted by many machines; "
              "bench/loadgen.rs's `zipf=S:FILE`, one fixed sequence for every server).", "",
              "| N | server | start-up ms | hits req/s | hits p99 ms | misses req/s | misses p99 ms | Zipf req/s | Zipf p99 ms "
              "| RSS after start MiB | peak RSS MiB |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in cfg.growth:
            for k in gk:
                g = gres[(n, k)]
                L.append(f"| {fmt(n)} | {k} | {g['startup'] * 1000:.1f} | {fmt(g['hit']['rps'])} | {g['hit']['p99']:.2f} | "
                         f"{fmt(g['miss']['rps'])} | {g['miss']['p99']:.2f} | {fmt(g['zipf']['rps'])} | "
                         f"{g['zipf']['p99']:.2f} | {g['rss_start']:.1f} | {g['rss']:.1f} |")
        big_n = cfg.growth[-1]
        for p in [x for x in gk if x != "nix-stored"]:
            for what, label in (("hit", "hits"), ("miss", "misses"), ("zipf", f"Zipf {ZIPF_S}")):
                r = ratio(gres[(big_n, "nix-stored")][what]["rps"], gres[(big_n, p)][what]["rps"])
                if r:
                    chart.append({"label": f"narinfo GET {label}, N={fmt(big_n)}", "peer": p, "ratio": r})

    if eres:
        versions = list(dict.fromkeys(v for _, v, _ in eres))
        L += ["", "## End to end, real Nix clients", "",
              f"A closure of {cfg.e2e_paths} small content-addressed paths (`builtins.toFile`, each referring to two "
              f"others), `nix copy --to 'http://…?compression=zstd'` into an empty cache, then deleted from the local "
              f"store and substituted back (`nix-store -r --option substituters http://…`), with each client: "
              f"{' and '.join(versions)} (Debian 12's, and Debian 13's in the chroot of scripts/nix-chroot.sh). On core 1, a fresh "
              f"client cache per call; a fresh cache directory and server per run, the servers taking turns in an "
              f"order that alternates from run to run, write-back flushed (sync) before each copy; wall clock, median "
              f"of {cfg.runs}, each run's copy time in brackets. Ratio = peer time ÷ nix-stored time (above 1, "
              f"nix-stored is faster). nix-stored makes every upload durable (fdatasync, then linkat or rename, then a directory fsync) "
              f"before its 201; nginx's WebDAV module syncs nothing.", "",
              "| step | " + " | ".join(["nix-stored", *e2e_peers]) + " | " + " | ".join(f"ratio vs {p}" for p in e2e_peers)
              + " | nix-stored peak RSS MiB |",
              "|---|" + "---:|" * (2 + 2 * len(e2e_peers))]
        for v in versions:
            for step, label in (("copy", f"`nix copy --to`, {cfg.e2e_paths} paths, {v}"),
                                ("subst", f"substitution, {cfg.e2e_paths} paths, {v}")):
                ns = eres[(step, v, "nix-stored")]["time"]
                rats = []
                for p in e2e_peers:
                    r = ratio(ns, eres[(step, v, p)]["time"], lower_better=True)
                    rats.append(f"{r:.2f}")
                    chart.append({"label": label.replace("`", ""), "peer": p, "ratio": r})

                def cell(k: str) -> str:
                    e = eres[(step, v, k)]
                    spread = " ".join(f"{t:.2f}" for t in e["spread"]) if step == "copy" else ""
                    return f"{e['time']:.2f} s" + (f" [{spread}]" if spread else "")
                L.append(f"| {label} | " + " | ".join(cell(k) for k in ["nix-stored", *e2e_peers])
                         + " | " + " | ".join(rats) + f" | {eres[(step, v, 'nix-stored')]['rss']:.1f} |")

    L += ["", "## Targets", "", "Computed from the figures above: goals to report against, not test assertions.", ""]

    def target(label: str, checks: list[tuple[str, bool | None, str]]) -> None:
        parts = [f"{'✅' if ok else '❌' if ok is not None else '—'} {detail}" for _, ok, detail in checks]
        L.append(f"- {label}: " + "; ".join(parts))

    def vs_nginx(wl_name: str, key: str, need: float) -> list:
        out = []
        ns = results.get((wl_name, "nix-stored"))
        for p in ("nginx", "nginx+ofc"):
            v = results.get((wl_name, p))
            if ns and v:
                r = ns[key] / v[key]
                out.append((p, r >= need, f"{r:.2f}× {p}"))
        return out or [("", None, "not measured")]

    if main:
        by_target: dict[str, list[str]] = {}
        for w in main["workloads"]:
            by_target.setdefault(w.target, []).append(w.name)
        target("narinfo hits ≥ 1.2× nginx req/s", vs_nginx(by_target["hit"][0], "rps", 1.2))
        target("narinfo misses ≥ 1.5× nginx req/s",
               [(p, ok, f"{w.split()[1]} {d}") for w in by_target["miss"] for p, ok, d in vs_nginx(w, "rps", 1.5)])
        p99 = []
        for w in by_target["hit"] + by_target["miss"]:
            ns = results[(w, "nix-stored")]["p99"]
            for p in ("nginx", "nginx+ofc"):
                v = results.get((w, p))
                if v:
                    p99.append((p, ns <= v["p99"], f"{w.removeprefix('narinfo ')} {ns:.2f} vs {v['p99']:.2f} ms ({p})"))
        target("narinfo p99 latency no worse than nginx's", p99)
        target(f"NAR GET {cfg.big // MIB} MiB ≥ 0.9× nginx MB/s (sendfile)",
               [(p, ok, f"{w.split(', ')[1]}: {d}") for w in by_target["big"] for p, ok, d in vs_nginx(w, "mbps", 0.9)])
        small16 = [w.name for w in main["workloads"] if w.path == "nar1m" and w.conns == 16]
        target("NAR GET 1 MiB over 16 connections ≥ 0.9× nginx MB/s",
               vs_nginx(small16[0], "mbps", 0.9) if small16 else [("", None, "not measured")])
        target("NAR PUT ≥ 0.8× nginx WebDAV MB/s", vs_nginx(by_target["put"][0], "mbps", 0.8))
        s3 = [k.name for k in kinds if isinstance(k, NixStoredS3)]
        if s3:
            checks = []
            for w in main["workloads"]:
                fs, sv = results.get((w.name, "nix-stored")), results.get((w.name, s3[0]))
                need = {"hit": 0.8, "big": 0.7, "put": 0.7}.get(w.target)
                if w.path in ("nar1m",):
                    need = 0.7
                if need and fs and sv:
                    r = sv[w.metric] / fs[w.metric]
                    checks.append(("s3", r >= need, f"{w.name} {r:.2f}× (≥ {need})"))
            target("nix-stored on S3 (Garage) against the directory backend: narinfo hits ≥ 0.8×, NARs ≥ 0.7×",
                   checks or [("", None, "not measured")])
            direct = [k.name for k in kinds if isinstance(k, GarageDirect)]
            if direct:
                def vs_direct(col: str, bars: dict) -> list:
                    out = []
                    for w in main["workloads"]:
                        sv, dv = results.get((w.name, col)), results.get((w.name, direct[0]))
                        need = bars.get(w.target if w.path not in ("nar1m", "narbig") else "nar")
                        if need and sv and dv and dv[w.metric]:
                            r = sv[w.metric] / dv[w.metric]
                            out.append(("direct", r >= need, f"{w.name} {r:.2f}× (≥ {need})"))
                    return out or [("", None, "not measured")]
                target("nix-stored on S3 against Garage direct (the same objects, the same load generator): NAR GET "
                       "≥ 0.8×, narinfo hits ≥ 1.0×, PUT ≥ 0.7×", vs_direct(s3[0], {"nar": 0.8, "hit": 1.0, "put": 0.7}))
                if len(s3) > 1:
                    target("NAR GET in redirect mode (`NIX_STORED_S3_REDIRECT=true`: the 307 and the fetch from Garage "
                           "count as one request) against Garage direct, measured against the same 0.8× bar",
                           vs_direct(s3[1], {"nar": 0.8}))
            for col in s3:
                shares = [f"{w.name} {results[(w.name, col)]['helper_cpu']:.0%}" for w in main["workloads"]
                          if "helper_cpu" in (results.get((w.name, col)) or {})]
                if shares:
                    L.append("")
                    L.append(f"Garage's share of the CPU time spent on core 0 (Garage + nix-stored) during each {col} "
                             "workload, which says which of the two limits that column: " + "; ".join(shares) + ".")
        else:
            target("nix-stored on S3 against the directory backend", [("", None, "not measured (no Garage)")])
        if any(isinstance(k, Harmonia) for k in kinds):
            checks = []
            for w in main["workloads"]:
                ns, hv = results.get((w.name, "nix-stored")), results.get((w.name, "harmonia"))
                if w.target in ("hit", "miss", "big") and ns and hv:
                    r = ns[w.metric] / hv[w.metric]
                    checks.append(("harmonia", r > 1.0, f"{w.name} {r:.2f}×"))
            target("faster than harmonia on every read workload they share", checks or [("", None, "not measured")])
        else:
            target("faster than harmonia on every read workload they share",
                   [("", None, "not measured (HARMONIA_BIN not set)")])
    rss_all = [(w, r["rss"]) for (w, k), r in results.items() if k == "nix-stored" and r]
    rss_all += [(f"growth N={fmt(n)}", g["rss"]) for (n, k), g in gres.items() if k == "nix-stored"]
    rss_all += [(f"end to end {s}, {v}", e["rss"]) for (s, v, k), e in eres.items() if k == "nix-stored"]
    if rss_all:
        worst = max(rss_all, key=lambda x: x[1])
        target("nix-stored peak RSS < 100 MiB in every workload",
               [("", worst[1] < 100, f"at most {worst[1]:.1f} MiB ({worst[0]})")])
    if gres and len(cfg.growth) > 1:
        lo, hi = cfg.growth[0], cfg.growth[-1]
        checks = []
        for what, label in (("hit", "hits"), ("miss", "misses")):
            r = gres[(hi, "nix-stored")][what]["rps"] / gres[(lo, "nix-stored")][what]["rps"]
            checks.append(("", r >= 0.9, f"{label} {r:.2f}×"))
        target(f"nix-stored req/s at {fmt(hi)} paths ≥ 0.9× the figure at {fmt(lo)}", checks)
        s = gres[(hi, "nix-stored")]["startup"]
        target(f"nix-stored answers within 1 s of start at {fmt(hi)} paths", [("", s < 1.0, f"{s * 1000:.0f} ms")])
    if gres:
        big_n = cfg.growth[-1]
        checks = []
        for p in ("nginx", "nginx+ofc"):
            if (big_n, p) in gres:
                r = gres[(big_n, "nix-stored")]["zipf"]["rps"] / gres[(big_n, p)]["zipf"]["rps"]
                checks.append((p, r >= 2.0, f"{r:.2f}× {p}"))
        target(f"narinfo GET with Zipf keys (s = {ZIPF_S}) over {fmt(big_n)} paths ≥ 2× nginx req/s",
               checks or [("", None, "not measured")])
    if not (gres and len(cfg.growth) > 1):
        target("req/s at 1 000 000 paths ≥ 0.9× the figure at 1 000; answers within 1 s of start at 1 000 000 paths",
               [("", None, f"not measured (growth ran at N = {', '.join(map(fmt, cfg.growth)) or 'none'})")])
    if eres:
        checks = []
        for v in dict.fromkeys(v for _, v, _ in eres):
            # Run by run: the servers of one run copied back to back.
            runs = list(zip(eres[("copy", v, "nix-stored")]["spread"], eres[("copy", v, "nginx")]["spread"]))
            worst = min(ng / ns for ns, ng in runs)
            checks.append(("", worst >= 0.8, f"{v}: worst run {worst:.2f}× (" +
                           ", ".join(f"{ns:.2f} s vs {ng:.2f} s" for ns, ng in runs) + ")"))
        target(f"`nix copy` of the {cfg.e2e_paths}-path closure ≥ 0.8× nginx's speed in every run", checks)
    else:
        target("`nix copy` ≥ 0.8× nginx's speed in every run", [("", None, "not measured")])
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    L += ["", f"![ratios]({os.path.basename(cfg.chart)})"]
    return L, chart


def retention_section(path: str) -> str:
    """The Retention section bench/retention.py wrote into the report, and the notes written by hand (on S3,
    on retention), kept when the rest is rewritten."""
    try:
        text = open(path).read()
    except OSError:
        return ""
    out = ""
    for begin, end in (("<!-- s3 notes -->", "<!-- /s3 notes -->"),
                       ("<!-- retention: written by bench/retention.py -->", "<!-- /retention -->"),
                       ("<!-- retention notes -->", "<!-- /retention notes -->")):
        if begin in text and end in text:
            out += "\n" + begin + text.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    return out


def draw_chart(cfg, chart: list[dict]) -> str | None:
    """Draws the PNG; returns a note when it could not be drawn for want of matplotlib."""
    data = os.path.join(cfg.work, "ratios.json")
    with open(data, "w") as f:
        json.dump({"title": "nix-stored ÷ peer (above 1: nix-stored faster)" + (" — quick mode" if cfg.quick else ""),
                   "rows": chart}, f)
    py = cfg.chart_python or sys.executable
    if not os.access(py, os.X_OK):
        note = f"chart not drawn: {py} is missing (bench/run.sh installs matplotlib in bench/.venv)"
        log(note)
        return note
    out = subprocess.run([py, os.path.join(HERE, "chart.py"), data, cfg.chart], capture_output=True, text=True)
    if out.returncode != 0:
        if "No module named 'matplotlib'" in out.stderr:
            note = f"chart not drawn: matplotlib is not installed for {py} (bench/run.sh installs it in bench/.venv)"
            log(note)
            return note
        raise Broken(f"chart.py failed:\n{out.stderr}")
    log(f"wrote {cfg.chart}")
    return None


# ---------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="about a second per workload, small N: a smoke run")
    p.add_argument("--paths", "--n", type=int, dest="paths", help="narinfos in the main cache (100000; quick 200)")
    p.add_argument("--runs", type=int, help="runs per workload, median reported (3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per run (5; quick 1)")
    p.add_argument("--growth", help="comma-separated cache sizes for the growth workload (1000,100000,1000000; quick 1000)")
    p.add_argument("--growth-duration", type=float, help="seconds per growth run (2; quick 1)")
    p.add_argument("--e2e-paths", type=int, help="paths in the end-to-end closure (200; quick 10)")
    p.add_argument("--only", default="main,growth,e2e", help="which parts to run: main,growth,e2e")
    p.add_argument("--servers", help="comma-separated columns to measure (default: all available); nix-stored "
                   "always runs, the ratios' base")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="the markdown report")
    p.add_argument("--chart", help="the PNG chart of the ratios (default: ratios.png beside RESULTS.md, "
                   "or the --out file's name with .png)")
    p.add_argument("--chart-python", help="a Python with matplotlib, for bench/chart.py")
    p.add_argument("--keep", action="store_true", help="keep the work directory (caches, logs)")
    cfg = p.parse_args()
    q = cfg.quick
    cfg.paths = cfg.paths or (200 if q else 100_000)
    cfg.runs = cfg.runs or (1 if q else 3)
    cfg.duration = cfg.duration or (1 if q else 5)
    cfg.growth_duration = cfg.growth_duration or (1 if q else 2)
    cfg.growth = [int(x) for x in (cfg.growth or ("1000" if q else "1000,100000,1000000")).split(",") if x]
    cfg.e2e_paths = cfg.e2e_paths or (10 if q else 200)
    cfg.big = 16 * MIB if q else 256 * MIB
    cfg.put_size = 8 * MIB if q else 64 * MIB
    parts = set(cfg.only.split(","))
    if cfg.chart is None:
        base = os.path.splitext(os.path.abspath(cfg.out))[0]
        cfg.chart = (os.path.join(os.path.dirname(base), "ratios.png") if os.path.basename(base) == "RESULTS"
                     else base + ".png")
    if not os.access(NIX_STORED, os.X_OK):
        sys.exit(f"bench: {NIX_STORED} is missing: run `cargo build --release` (bench/run.sh does)")
    for tool in ("wrk", "nginx", "taskset", "rustc"):
        if not shutil.which(tool):
            sys.exit(f"bench: `{tool}` is not installed (bench/run.sh installs what it needs)")

    cfg.work = tempfile.mkdtemp(prefix="nix-stored-bench-")
    os.makedirs(os.path.join(cfg.work, "logs"))
    lg = os.path.join(cfg.work, "loadgen")
    kinds: list[Kind] = [NixStored("nix-stored", cfg.work), Nginx("nginx", cfg.work, False),
                         Nginx("nginx+ofc", cfg.work, True)]
    bucket = None
    if os.access(os.path.expanduser("~/.cargo/bin/garage"), os.X_OK) or shutil.which("garage"):
        try:
            bucket = S3Bucket(cfg.work)
            # Last, and Garage stopped right after: its background work after the copy
            # and the uploads would otherwise share core 0 with the other servers' runs.
            s3_kinds = [NixStoredS3("nix-stored-s3", cfg.work, bucket),
                        NixStoredS3("nix-stored-s3-redirect", cfg.work, bucket, redirect=True),
                        GarageDirect("garage-direct", cfg.work, bucket, 2000 if q else 20000)]
        except Broken as e:
            log(f"nix-stored-s3: skipped (Garage did not start: {e})")
    else:
        log("nix-stored-s3: skipped (Garage is not installed: scripts/garage.sh installs it)")
    harmonia = None
    if os.environ.get("HARMONIA_BIN"):
        harmonia = Harmonia("harmonia", cfg.work, os.environ["HARMONIA_BIN"], nix_env(cfg))
        kinds.append(harmonia)
    else:
        log("harmonia: skipped (HARMONIA_BIN is not set)")
    if bucket:
        kinds += s3_kinds
    if cfg.servers:
        wanted = set(cfg.servers.split(",")) | {"nix-stored"}
        unknown = wanted - {k.name for k in kinds}
        if unknown:
            sys.exit(f"bench: --servers: not available in this run: {', '.join(sorted(unknown))}")
        kinds = [k for k in kinds if k.name in wanted]
    notes: list[str] = []
    results, gres, eres = {}, {}, {}
    main_info = None
    busy = others_busy()
    if busy:
        log(f"bench: warning: other heavy processes are running ({', '.join(busy[:8])}): figures will be noisy")
    snap0 = cpu_snapshot()
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    ok = False
    try:
        run(["rustc", "-O", "--edition", "2021", "-o", lg, os.path.join(HERE, "loadgen.rs")], "building bench/loadgen.rs")
        if "main" in parts:
            main_info = main_workloads(cfg, kinds, lg, results, notes)
        if bucket:
            bucket.close()
            bucket = None
        if "growth" in parts:
            growth(cfg, kinds, lg, gres)
        if "e2e" in parts:
            if not any(k.name == "nginx" for k in kinds):
                notes.append("end to end not measured: nginx, its peer, is not among --servers")
            elif shutil.which("nix"):
                clients = nix_clients(cfg, notes)
                try:
                    e2e(cfg, [k for k in kinds if k.name in ("nix-stored", "nginx")], clients, eres)
                finally:
                    for c in clients:
                        c.close()
            else:
                notes.append("end to end not measured: the Nix client (Debian `nix-bin`) is not installed")
        L, chart = report(cfg, main_info, results, gres, eres, kinds, notes,
                          (load0, foreign_share(snap0, cpu_snapshot()), busy), time.monotonic() - t0)
        note = draw_chart(cfg, chart)
        if note:
            L[-1] = f"({note}.)"
        kept = retention_section(cfg.out)
        with open(cfg.out, "w") as f:
            f.write("\n".join(L) + "\n" + kept)
        log(f"wrote {cfg.out}")
        ok = True
    except Broken as e:
        log(f"bench: FAILED: {e}")
    finally:
        if bucket:
            bucket.close()
        if harmonia:
            harmonia.close()
            if os.path.isdir(os.path.join(cfg.work, "cache")):
                remove_from_store(cfg, os.path.join(cfg.work, "cache"))
        if ok and not cfg.keep:
            shutil.rmtree(cfg.work, ignore_errors=True)
        else:
            log(f"bench: work directory kept: {cfg.work} (logs in {cfg.work}/logs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
