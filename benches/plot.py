#!/usr/bin/env python3
"""Renders the plots of benches/RESULTS.md from the saved loadgen outputs.

    python3 -m pip install matplotlib   # in your session; not a project dependency
    python3 benches/plot.py

Reads the `RESULT {json}` lines of benches/results/*.txt and writes
benches/latency-vs-rate.png (ramp steps) and benches/rss-vs-connections.png
(idle checkpoints, before and after the commits that followed e5ef3e9).
"""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def result(name):
    for line in (RESULTS / name).read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"no RESULT line in {name}")


def latency_vs_rate():
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, name in zip(axes, ["ramp-1000-curve.txt", "ramp-5000-curve.txt"]):
        r = result(name)
        steps = r["steps"]
        rates = [s["rate"] for s in steps]
        for key, style in [("p50_ms", "o-"), ("p90_ms", "s-"), ("p99_ms", "^-"), ("max_ms", "x--")]:
            ax.plot(rates, [s["delivery"]["last_subscriber"][key] for s in steps], style,
                    label=key.replace("_ms", ""))
        ax.axhline(10, color="red", lw=0.8, ls=":", label="10 ms target (p99)")
        ax.set_yscale("log")
        ax.set_xlabel("publish rate (messages/s)")
        ax.set_title(f"{r['params']['subscribers']} subscribers, one channel, ~200 B data")
        ax.grid(True, which="both", alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(rates, [s["frames_per_server_cpu_s"] / 1000 for s in steps], color="gray", alpha=0.5,
                 lw=1, label="k frames / server CPU-s")
        ax2.set_ylabel("k frames per server CPU-second", color="gray")
        ax2.set_ylim(0, 350)
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("publish -> last subscriber latency (ms, log)")
    fig.suptitle("herald dev (release, SQLite), latency at the last subscriber vs rate (loadgen ramp)")
    fig.tight_layout()
    fig.savefig(HERE / "latency-vs-rate.png", dpi=110)


def rss_vs_connections():
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = [
        ("idle-19000.txt", "before: binaries of e5ef3e9", "o--", "gray"),
        ("e8f3e66/idle-19000.txt", "after: binaries of e8f3e66", "o-", "C0"),
    ]
    for name, label, style, color in runs:
        r = result(name)
        idle = r["idle"]
        xs = [0] + [p["connections"] for p in idle["points"]]
        ys = [idle["rss_before_kb"] / 1024] + [p["rss_kb"] / 1024 for p in idle["points"]]
        ax.plot(xs, ys, style, color=color, label=f"{label} (idle, 1 subscription each)")
        for p in idle["points"]:
            ax.annotate(f"{p['rss_per_conn_bytes'] / 1024:.1f} KiB/conn",
                        (p["connections"], p["rss_kb"] / 1024),
                        textcoords="offset points", xytext=(-30, 8), fontsize=7, color=color)
    base = result("e8f3e66/idle-19000.txt")["idle"]["rss_before_kb"] / 1024
    ax.plot([0, 19000], [base, base + 19000 * 4 / 1024], "r:", label="4 KiB/connection target")
    ax.margins(x=0.1, y=0.12)
    ax.set_xlabel("open connections")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("herald dev (release): RSS vs idle connections")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "rss-vs-connections.png", dpi=110)


if __name__ == "__main__":
    latency_vs_rate()
    rss_vs_connections()
