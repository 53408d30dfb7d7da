#!/usr/bin/env python3
"""Writes a synthetic binary cache: N narinfos, each pointing at a valid NAR.

Layout and formats are what `nix copy --to file://DIR` writes, so every server under
test serves the same directory. All narinfos of the hit workload share one small NAR
(serving a narinfo never reads its NAR); large NARs for throughput are separate.
"""
import argparse
import hashlib
import os
import random

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def nix32(digest: bytes) -> str:
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
    head = b"".join(nar_str(t) for t in (b"nix-archive-1", b"(", b"type", b"regular", b"contents"))
    return head + size.to_bytes(8, "little")


def write_nar(root: str, size: int, seed: int) -> tuple[str, int]:
    """A NAR of one regular file of `size` pseudo-random bytes, streamed to disk."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    tmp = os.path.join(root, "nar", f".gen-{seed}")
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
        put(b"\0" * ((8 - size % 8) % 8) + nar_str(b")"))
        total = f.tell()
    fh = nix32(h.digest())
    os.rename(tmp, os.path.join(root, "nar", f"{fh}.nar"))
    return fh, total


def narinfo(h: str, i: int, fh: str, size: int) -> str:
    return (
        f"StorePath: /nix/store/{h}-bench-{i}\nURL: nar/{fh}.nar\nCompression: none\n"
        f"FileHash: sha256:{fh}\nFileSize: {size}\nNarHash: sha256:{fh}\nNarSize: {size}\nReferences: \n"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--paths", type=int, default=1000)
    p.add_argument("--nar-sizes", default="", help="comma-separated sizes of extra NARs, in bytes")
    a = p.parse_args()
    os.makedirs(os.path.join(a.dir, "nar"), exist_ok=True)
    with open(os.path.join(a.dir, "nix-cache-info"), "w") as f:
        f.write("StoreDir: /nix/store\n")
    fh, size = write_nar(a.dir, 1000, 0)
    rng = random.Random(1)
    keys = []
    for i in range(a.paths):
        h = "".join(rng.choice(ALPHABET) for _ in range(32))
        keys.append(h)
        with open(os.path.join(a.dir, f"{h}.narinfo"), "w") as f:
            f.write(narinfo(h, i, fh, size))
    with open(os.path.join(a.dir, "..", "keys.txt"), "w") as f:
        f.write("\n".join(keys) + "\n")
    with open(os.path.join(a.dir, "..", "nars.txt"), "w") as f:
        for n, s in enumerate(x for x in a.nar_sizes.split(",") if x):
            nfh, total = write_nar(a.dir, int(s), 100 + n)
            f.write(f"{s} nar/{nfh}.nar {total}\n")


if __name__ == "__main__":
    main()
