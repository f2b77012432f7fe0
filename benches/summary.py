#!/usr/bin/env python3
"""Markdown tables of one record (benches/results/<commit>/), read from the
`RESULT {json}` line of each run, with every delivery run set beside its
herald-floor twin of the same record (issue 13).

    python3 benches/summary.py benches/results/<commit>

A twin is the run named `floor-<name>` for `<name>`, or for
`topology-<name>` / `topology2-<name>` (same scenario and load). The
fraction is herald's deliveries per CPU-second of its delivering process
(the `herald dev` process; in the topology, the gateways: ingest's CPU is
shown apart) over the floor's. Standard library only.
"""

import json
import re
import sys
from pathlib import Path


def result(path: Path):
    for line in path.read_text().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return None


def header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return ""


def fmt(x, digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def delivering_cpu(name: str, r: dict) -> tuple[float, float]:
    """(CPU of the delivering processes, CPU of the rest): the topology's
    first pid is ingest, the others gateways; otherwise one process."""
    servers = r.get("server") or []
    cpus = [s.get("cpu_s") or 0.0 for s in servers]
    if name.startswith("topology") and len(cpus) > 1:
        return sum(cpus[1:]), cpus[0]
    return sum(cpus), 0.0


def delivery_row(name: str, r: dict, floor: dict | None) -> str:
    d = r["delivery"]
    timed_out = floor is not None and "delivery" not in floor
    if timed_out:
        floor = None
    cpu, other = delivering_cpu(name, r)
    per = d["delivered"] / cpu if cpu else None
    fl = None
    if floor:
        fcpu, _ = delivering_cpu("floor", floor)
        fl = floor["delivery"]["delivered"] / fcpu if fcpu else None
    frac = f"**{100 * per / fl:.1f} %**" if per and fl else "–"
    if timed_out:
        fl, frac = None, "floor timed out"
    ls = d["last_subscriber"]
    fls = floor["delivery"]["last_subscriber"] if floor else None
    lost = f'{d["lost"]} / {d["duplicates"]} / {d["reordered"]}'
    other_s = f" (+ ingest {other:.2f} s)" if other else ""
    return (
        f"| `{name}` | {d['delivered']:,} of {d['expected']:,} | {lost} | "
        f"{cpu:.2f} s{other_s} | {fmt(per)} | {fmt(fl)} | {frac} | "
        f"{ls['p50_ms']:.1f} / {ls['p99_ms']:.1f} | "
        + (f"{fls['p50_ms']:.1f} / {fls['p99_ms']:.1f} |" if fls else "– |")
    )


def ramp_rows(name: str, r: dict, floor: dict | None) -> list[str]:
    rows = []
    fsteps = {s["rate"]: s for s in (floor or {}).get("steps") or []}
    for s in r.get("steps", []):
        d = s["delivery"]
        f = fsteps.get(s["rate"])
        per = s.get("frames_per_server_cpu_s")
        fper = f.get("frames_per_server_cpu_s") if f else None
        frac = f"{100 * per / fper:.1f} %" if per and fper else "–"
        fl = f["delivery"]["last_subscriber"] if f else None
        rows.append(
            f"| `{name}` | {s['rate']:.0f} | {'pass' if s['passed'] else 'fail'} | "
            f"{d['lost']} | {fmt(per)} | {fmt(fper)} | {frac} | "
            f"{d['last_subscriber']['p50_ms']:.1f} / {d['last_subscriber']['p99_ms']:.1f} | "
            + (f"{fl['p50_ms']:.1f} / {fl['p99_ms']:.1f} |" if fl else "– |")
        )
    return rows


def twin(name: str, runs: dict) -> dict | None:
    base = re.sub(r"^topology2?-", "", name)
    return runs.get(f"floor-{base}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    root = Path(argv[1])
    runs, paths = {}, {}
    for p in sorted(root.glob("*.txt")):
        r = result(p)
        if r is not None:
            runs[p.stem] = r
            paths[p.stem] = p
    if not runs:
        print(f"no RESULT lines under {root}", file=sys.stderr)
        return 1
    dates = sorted(header(p, "date") for p in paths.values() if header(p, "date"))
    print(f"Record `{root}`: {len(runs)} runs, {dates[0]} to {dates[-1]}.\n")

    print("| run | delivered | lost / dup / reordered | CPU (delivering) | "
          "deliveries per CPU-s | floor, same record | **fraction of the floor** | "
          "last subscriber p50 / p99 ms | floor p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        if name.startswith("floor-") or "delivery" not in r:
            continue
        print(delivery_row(name, r, twin(name, runs)))
    print()

    ramps = [(n, r) for n, r in runs.items() if r.get("scenario") == "ramp" and not n.startswith("floor-")]
    if ramps:
        print("| run | msg/s | step | lost | frames per CPU-s | floor | fraction | "
              "last subscriber p50 / p99 ms | floor p50 / p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in ramps:
            for row in ramp_rows(name, r, twin(name, runs)):
                print(row)
        print()

    other = [(n, r) for n, r in runs.items()
             if "delivery" not in r and r.get("scenario") != "ramp"]
    if other:
        print("| run | figure |")
        print("|---|---|")
        for name, r in other:
            sc = r.get("scenario")
            if sc == "idle":
                i = r["idle"]
                fig = (f"{r['connections']['connected']:,} connected, "
                       f"**{i['rss_per_conn_bytes']:,.0f} B** RSS per connection")
            elif sc == "connect":
                c = r["connections"]
                lat = c["connect_latency"]
                fig = (f"**{c['connects_per_s']:,.0f}/s**, p50 / p99 "
                       f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms, "
                       f"server CPU {r.get('server_cpu_s', 0):.2f} s")
            elif sc == "ingest":
                g = r["ingest"]
                fig = (f"**{g['persisted_per_s']:,.0f}** persisted/s, p50 / p99 "
                       f"{g['latency']['p50_ms']:.1f} / {g['latency']['p99_ms']:.1f} ms, "
                       f"{g['errors']} errors, server CPU {r.get('server_cpu_s', 0):.2f} s")
            else:
                fig = json.dumps({k: v for k, v in r.items()
                                  if k in ("scenario", "timed_out", "errors")})
            print(f"| `{name}` | {fig} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
