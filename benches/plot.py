#!/usr/bin/env python3
"""Renders the plots of benches/RESULTS.md from the saved loadgen outputs.

    python3 -m pip install matplotlib   # in your session; not a project dependency
    python3 benches/plot.py

Reads the `RESULT {json}` lines of benches/results/ and writes, next to
RESULTS.md:
- latency-vs-rate.png: last-subscriber latency against publish rate (ramp
  steps, 1,000 and 5,000 subscribers), current record;
- fanout-efficiency.png: frames delivered per server CPU-second against
  publish rate, 5,000 subscribers (ramp steps), current record;
- rss-vs-connections.png: RSS against idle connections (idle checkpoints),
  the first record, the second, and the current one.
"""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The commits of the current record (benches/record.sh writes results/<commit>/):
# every scenario at CURRENT, the idle runs again at IDLE (after the last
# memory commits).
CURRENT = "fa73935"
IDLE = "3e1653c"


def result(name):
    for line in (RESULTS / name).read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"no RESULT line in {name}")


def latency_vs_rate():
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, name in zip(axes, ["ramp-1000-curve.txt", "ramp-5000-curve.txt"]):
        r = result(f"{CURRENT}/{name}")
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
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("publish -> last subscriber latency (ms, log)")
    fig.suptitle(f"herald dev (release, SQLite) at {CURRENT}: latency at the last subscriber vs rate "
                 "(loadgen ramp, load generator on the same 2 cores)")
    fig.tight_layout()
    fig.savefig(HERE / "latency-vs-rate.png", dpi=110)


def fanout_efficiency():
    r = result(f"{CURRENT}/ramp-5000-throughput.txt")
    steps = r["steps"]
    rates = [s["rate"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rates, [s["frames_per_server_cpu_s"] / 1e6 for s in steps], "o-", color="C0",
            label="frames delivered per server CPU-second")
    ax.axhline(1.0, color="red", lw=0.8, ls=":", label="1,000,000 target")
    ax.set_ylim(0, 1.8)
    ax.set_xlabel("publish rate offered (messages/s), 5,000 subscribers, ~200 B data")
    ax.set_ylabel("million frames per server CPU-second")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(rates, [s["delivery"]["delivered_per_s"] / 1e6 for s in steps], "s--", color="gray",
             alpha=0.6, label="frames delivered per second (wall)")
    ax2.set_ylabel("million frames per second (wall clock)", color="gray")
    ax2.set_ylim(0, 1.8)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(f"herald dev at {CURRENT}: fan-out efficiency vs rate (ramp steps, no loss)\n"
                 "one frame per writev at low rates; several per writev once frames queue")
    fig.tight_layout()
    fig.savefig(HERE / "fanout-efficiency.png", dpi=110)


def rss_vs_connections():
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    runs = [
        ("idle-19000.txt", "first record, e5ef3e9", "o--", "gray"),
        ("e8f3e66/idle-19000.txt", "second record, e8f3e66", "o-", "C1"),
        (f"{IDLE}/idle-19000.txt", f"current, {IDLE}", "o-", "C0"),
    ]
    for name, label, style, color in runs:
        r = result(name)
        idle = r["idle"]
        xs = [0] + [p["connections"] for p in idle["points"]]
        ys = [idle["rss_before_kb"] / 1024] + [p["rss_kb"] / 1024 for p in idle["points"]]
        ax.plot(xs, ys, style, color=color, label=f"{label} (idle, 1 subscription each)")
        last = idle["points"][-1]
        ax.annotate(f"{last['rss_per_conn_bytes'] / 1024:.2f} KiB/conn",
                    (last["connections"], last["rss_kb"] / 1024),
                    textcoords="offset points", xytext=(-95, 6), fontsize=7, color=color)
    cur = result(f"{IDLE}/idle-19000.txt")["idle"]
    n = cur["points"][-1]["connections"]
    ax.plot([n], [cur["rss_after_hold_kb"] / 1024], "v", color="C0",
            label="current, after a 30 s hold (heartbeat, steady state)")
    base = cur["rss_before_kb"] / 1024
    ax.plot([0, 19000], [base, base + 19000 * 4 / 1024], "r:", label="4 KiB/connection target")
    ax.margins(x=0.1, y=0.12)
    ax.set_xlabel("open connections")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("herald dev (release): RSS vs idle connections")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "rss-vs-connections.png", dpi=110)


if __name__ == "__main__":
    latency_vs_rate()
    fanout_efficiency()
    rss_vs_connections()
