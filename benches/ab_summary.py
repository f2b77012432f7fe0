#!/usr/bin/env python3
"""One line per round of benches/ab.sh: herald-floor's deliveries per
CPU-second, then for each named binary its deliveries per server
CPU-second (ingest and gateways) as a fraction of the floor's, ingest's and
the gateways' CPU, the gateways alone as a fraction of the floor (the
record's fraction), their user / system ticks and task-clock over the
measured 15 s, the last subscriber's p99 and the messages lost.

    python3 benches/ab_summary.py OUTDIR A B

Standard library only.
"""

import json
import sys
from pathlib import Path


def result(path: Path) -> dict:
    for line in path.read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{path}: no RESULT line")


def ticks(path: Path) -> tuple[int, int]:
    user = system = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        sign = {"before": -1, "after": 1}.get(parts[0] if parts else "")
        if sign:
            user += sign * int(parts[1])
            system += sign * int(parts[2])
    return user, system


def task_clock_ms(path: Path) -> float:
    for line in path.read_text().splitlines():
        if "task-clock" in line:
            return float(line.split()[0].replace(",", ""))
    return float("nan")


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out, names = Path(sys.argv[1]), sys.argv[2:]
    r = 1
    while (out / f"floor-{r}.txt").exists():
        fl = result(out / f"floor-{r}.txt")
        floor_rate = fl["delivery"]["delivered"] / fl["server_cpu_s"]
        line = [f"r{r} floor {fl['per_server_cpu_s']:,.0f} "
                f"p99 {fl['delivery']['last_subscriber']['p99_ms']:.1f}"]
        for name in names:
            base = out / f"{name}-{r}"
            j = result(base.with_suffix(".txt"))
            cpus = [s["cpu_s"] for s in j["server"]]
            ingest, gws = cpus[0], cpus[1:]
            user, system = ticks(base.with_suffix(".ut"))
            d = j["delivery"]
            line.append(
                f"{name}: {j['per_server_cpu_s']:,.0f} "
                f"{100 * j['per_server_cpu_s'] / fl['per_server_cpu_s']:.1f}% "
                f"ingest {ingest} gw {'+'.join(map(str, gws))} "
                f"gw-only {100 * (d['delivered'] / sum(gws)) / floor_rate:.1f}% "
                f"u/s {user}/{system} tc {task_clock_ms(base.with_suffix('.stat')):.0f} "
                f"p99 {d['last_subscriber']['p99_ms']:.1f} lost {d['lost']}"
            )
        print(" | ".join(line))
        r += 1


if __name__ == "__main__":
    main()
