#!/usr/bin/env python3
"""Writes a synthetic binary cache: N narinfos, each pointing at a valid NAR.

Layout and formats are what `nix copy --to file://DIR` writes with `compression=none`,
so every server under test serves the same directory, and `nix copy --from file://DIR`
can import it. All narinfos of the hit workload share one small NAR (serving a narinfo
never reads its NAR); the large NARs for throughput are separate, each with its own
narinfo. Keys are a deterministic sequence, so a cache of N paths can be grown to M > N
in place (`--start N --paths M`) and the first N keys stay the same.

With `--closures` (the retention benchmark) the paths look like a real cache instead:
each has its own small NAR and references 0-10 earlier paths (some of a hundred
"base" paths every closure shares, like glibc, the rest among the thousand paths
before it), and path i's files carry the modification time CLOSURE_EPOCH + i seconds,
so the oldest paths are the first ones. All of it is deterministic: `--missing` writes
back exactly what a retention pass removed, and nothing else.

Usage: gen_cache.py DIR --paths N [--start S] [--keys FILE] [--nar-sizes A,B] [--nars FILE] [--jobs J]
       gen_cache.py DIR --paths N --closures [--missing] [--keys FILE] [--summary FILE] [--jobs J]
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import random

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
SMALL_NAR_CONTENT = 1000
# --closures: path i was stored at CLOSURE_EPOCH + i (2026-01-01T00:00:00Z + i seconds).
CLOSURE_EPOCH = 1767225600
# --closures: references go to one of the first BASE_PATHS paths with this probability,
# otherwise to one of the WINDOW paths just before.
BASE_PATHS, BASE_SHARE, WINDOW, MAX_REFS = 100, 0.3, 1000, 10


def nix32(digest: bytes) -> str:
    """Nix's base-32: least significant 5 bits last, no padding."""
    n = len(digest)
    out = []
    for k in range((8 * n - 1) // 5, -1, -1):
        i, j = divmod(5 * k, 8)
        v = digest[i] >> j
        if i + 1 < n:
            v |= digest[i + 1] << (8 - j)
        out.append(ALPHABET[v & 31])
    return "".join(out)


assert nix32(hashlib.sha256(b"").digest()) == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


def nar_str(b: bytes) -> bytes:
    return len(b).to_bytes(8, "little") + b + b"\0" * ((8 - len(b) % 8) % 8)


def nar_header(size: int) -> bytes:
    """A NAR of one regular file, up to its contents (the length comes next)."""
    head = b"".join(nar_str(t) for t in (b"nix-archive-1", b"(", b"type", b"regular", b"contents"))
    return head + size.to_bytes(8, "little")


def nar_trailer(size: int) -> bytes:
    return b"\0" * ((8 - size % 8) % 8) + nar_str(b")")


def write_nar(root: str, size: int, seed: int) -> tuple[str, int]:
    """A NAR of one regular file of `size` pseudo-random bytes, streamed to disk.

    Returns (nix32 sha256 of the NAR, NAR size)."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    tmp = os.path.join(root, "nar", f".gen-{seed}-{os.getpid()}")
    with open(tmp, "wb") as f:
        def put(b: bytes) -> None:
            h.update(b)
            f.write(b)
        put(nar_header(size))
        left = size
        while left:
            n = min(left, 1 << 20)
            put(rng.randbytes(n))
            left -= n
        put(nar_trailer(size))
        total = f.tell()
    fh = nix32(h.digest())
    os.rename(tmp, os.path.join(root, "nar", f"{fh}.nar"))
    return fh, total


def keys(count: int, seed: int = 1) -> list[str]:
    """Store path hash parts (32 nix32 characters); a prefix-stable sequence."""
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=32)) for _ in range(count)]


def narinfo(h: str, name: str, fh: str, size: int, refs: str = "") -> bytes:
    return (
        f"StorePath: /nix/store/{h}-{name}\nURL: nar/{fh}.nar\nCompression: none\n"
        f"FileHash: sha256:{fh}\nFileSize: {size}\nNarHash: sha256:{fh}\nNarSize: {size}\nReferences: {refs}\n"
    ).encode()


def closure_refs(i: int) -> list[int]:
    """The earlier paths path i references (--closures), sorted; deterministic."""
    if i == 0:
        return []
    rng = random.Random(1_000_003 * i + 5)
    out = set()
    for _ in range(rng.randint(0, min(MAX_REFS, i))):
        if rng.random() < BASE_SHARE:
            out.add(rng.randrange(min(i, BASE_PATHS)))
        else:
            out.add(rng.randrange(max(0, i - WINDOW), i))
    return sorted(out)


def closure_nar(i: int) -> bytes:
    """Path i's NAR (--closures): one regular file of 200-4000 pseudo-random bytes."""
    rng = random.Random(2_000_003 * i + 7)
    size = rng.randint(200, 4000)
    return nar_header(size) + rng.randbytes(size) + nar_trailer(size)


_ALL_KEYS: list[str] = []


def _write_closures(args: tuple[str, int, int, bool]) -> tuple[int, int]:
    """Writes paths first..last-1 (--closures); returns (paths written, bytes of all of them)."""
    root, first, last, missing = args
    written = total = 0
    for i in range(first, last):
        h = _ALL_KEYS[i]
        info_path = os.path.join(root, f"{h}.narinfo")
        nar = closure_nar(i)
        fh = nix32(hashlib.sha256(nar).digest())
        refs = " ".join(f"{_ALL_KEYS[j]}-bench-{j}" for j in closure_refs(i))
        info = narinfo(h, f"bench-{i}", fh, len(nar), refs)
        total += len(nar) + len(info)
        if missing and os.path.exists(info_path):
            continue
        t = CLOSURE_EPOCH + i
        nar_path = os.path.join(root, "nar", f"{fh}.nar")
        # The NAR before its narinfo, as Nix uploads them.
        for path, data in ((nar_path, nar), (info_path, info)):
            write_file(path, data)
            os.utime(path, (t, t))
        written += 1
    return written, total


def closures(a) -> None:
    global _ALL_KEYS
    _ALL_KEYS = keys(a.paths)
    jobs = max(1, min(a.jobs, a.paths // 10000 or 1))
    step = -(-a.paths // jobs)
    parts = [(a.dir, i, min(a.paths, i + step), a.missing) for i in range(0, a.paths, step)]
    if jobs > 1:
        # Forked workers inherit _ALL_KEYS.
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            done = pool.map(_write_closures, parts)
    else:
        done = [_write_closures(part) for part in parts]
    written, total = sum(d[0] for d in done), sum(d[1] for d in done)
    total += os.path.getsize(os.path.join(a.dir, "nix-cache-info"))
    if a.keys:
        with open(a.keys, "w") as f:
            f.write("\n".join(_ALL_KEYS) + "\n")
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump({"paths": a.paths, "bytes": total, "written": written}, f)


def write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_range(args: tuple[str, list[str], int, str, int]) -> None:
    root, part, first, fh, size = args
    for n, h in enumerate(part):
        write_file(os.path.join(root, f"{h}.narinfo"), narinfo(h, f"bench-{first + n}", fh, size))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--paths", type=int, default=1000, help="narinfos of the hit workload, in all")
    p.add_argument("--start", type=int, default=0, help="the first N already exist: write the rest")
    p.add_argument("--keys", help="write the hash parts of all hit narinfos to this file, one a line")
    p.add_argument("--nar-sizes", default="", help="comma-separated sizes of extra NARs' contents, in bytes")
    p.add_argument("--nars", help="write `size nar-path nar-size narinfo-hash` lines for the extra NARs here")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--closures", action="store_true",
                   help="paths with their own NARs and references to earlier paths (the retention benchmark)")
    p.add_argument("--missing", action="store_true", help="with --closures: write only the paths whose narinfo is missing")
    p.add_argument("--summary", help="with --closures: write {paths, bytes, written} as JSON here (bytes: the whole cache)")
    a = p.parse_args()
    os.makedirs(os.path.join(a.dir, "nar"), exist_ok=True)
    with open(os.path.join(a.dir, "nix-cache-info"), "w") as f:
        f.write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
    if a.closures:
        closures(a)
        return
    fh, size = write_nar(a.dir, SMALL_NAR_CONTENT, 0)
    all_keys = keys(a.paths)
    todo = all_keys[a.start:]
    jobs = max(1, min(a.jobs, len(todo) // 10000 or 1))
    step = -(-len(todo) // jobs) if todo else 1
    parts = [(a.dir, todo[i:i + step], a.start + i, fh, size) for i in range(0, len(todo), step)]
    if jobs > 1:
        with multiprocessing.Pool(jobs) as pool:
            pool.map(_write_range, parts)
    else:
        for part in parts:
            _write_range(part)
    if a.keys:
        with open(a.keys, "w") as f:
            f.write("\n".join(all_keys) + "\n")
    extra = [int(x) for x in a.nar_sizes.split(",") if x]
    lines = []
    for n, (content, h) in enumerate(zip(extra, keys(len(extra), seed=2))):
        nfh, total = write_nar(a.dir, content, 100 + n)
        write_file(os.path.join(a.dir, f"{h}.narinfo"), narinfo(h, f"bench-nar-{content}", nfh, total))
        lines.append(f"{content} nar/{nfh}.nar {total} {h}\n")
    if a.nars:
        with open(a.nars, "w") as f:
            f.writelines(lines)


if __name__ == "__main__":
    main()
