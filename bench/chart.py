#!/usr/bin/env python3
"""Draws bench.py's ratios as a PNG: one horizontal bar per workload and peer.

Usage: chart.py RATIOS.json OUT.png  (needs matplotlib; bench/run.sh installs it in bench/.venv)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    data = json.load(open(sys.argv[1]))
    rows = data["rows"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    value = {(r["label"], r["peer"]): r["ratio"] for r in rows}
    height = 0.8 / max(1, len(peers))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) * max(1, len(peers)) / 1.6 + 1.6))
    for j, peer in enumerate(peers):
        ys, xs = [], []
        for i, label in enumerate(labels):
            if (label, peer) in value:
                ys.append(i + (j - (len(peers) - 1) / 2) * height)
                xs.append(value[(label, peer)])
        bars = ax.barh(ys, xs, height=height, label=f"vs {peer}", color=colors[j % len(colors)])
        for b, x in zip(bars, xs):
            ax.text(b.get_width() + 0.02, b.get_y() + b.get_height() / 2, f"{x:.2f}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio nix-stored / peer (throughput; time ratios are peer / nix-stored)")
    ax.set_title(data["title"], fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, max([1.2] + [v * 1.15 for v in value.values()]))
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
