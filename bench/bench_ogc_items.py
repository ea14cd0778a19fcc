"""OGC API items latency: p50/p99 of 100-item bbox pages at N buildings, over HTTP against a
running ``cityops serve``; the reference is the same client hitting ``/api/v1/health`` (the
server's floor: routing, one trivial query, JSON) in the same run. Target: items p99 < 100 ms.

    python bench/bench_ogc_items.py --db sqlite:///bench/out/bench_import.db [--requests 500]

Use the database that ``bench_import.py`` filled (SQLite or PostGIS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import subprocess
import time

import httpx
import numpy as np
from _common import CITYOPS, free_port, machine


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        [*CITYOPS, "serve", "--db", args.db, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for _ in range(300):
                try:
                    if c.get("/api/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            col = c.get("/ogcapi/collections/buildings").json()
            minx, miny, maxx, maxy = col["extent"]["spatial"]["bbox"][0]
            total = c.get("/ogcapi/collections/buildings/items", params={"limit": 1}).json()[
                "numberMatched"
            ]
            # a square holding about 400 buildings on average, so nearly every 100-item page is full
            side = ((maxx - minx) * (maxy - miny) * 400 / total) ** 0.5
            rng = random.Random(args.seed)
            boxes = []
            for _ in range(args.requests):
                x = rng.uniform(minx, maxx - side)
                y = rng.uniform(miny, maxy - side)
                boxes.append(f"{x:.6f},{y:.6f},{x + side:.6f},{y + side:.6f}")
            for b in boxes[:20]:  # warm-up
                c.get("/ogcapi/collections/buildings/items", params={"bbox": b, "limit": 100})
            items, returned, health = [], [], []
            for b in boxes:
                t0 = time.perf_counter()
                r = c.get("/ogcapi/collections/buildings/items", params={"bbox": b, "limit": 100})
                items.append(time.perf_counter() - t0)
                returned.append(r.json()["numberReturned"])
                t0 = time.perf_counter()
                c.get("/api/v1/health")
                health.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()
    print(f"# OGC API items latency — {machine()} — {dt.datetime.now():%Y-%m-%d %H:%M}")
    print(f"database {args.db}: {total:,} buildings; {args.requests} sequential requests")
    print(f"mean features per page: {np.mean(returned):.1f}")
    print(f"{'route':40} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'items, bbox, limit=100':40} {pct(items, 50):8.1f} {pct(items, 99):8.1f}")
    print(f"{'/api/v1/health (reference floor)':40} {pct(health, 50):8.1f} {pct(health, 99):8.1f}")


if __name__ == "__main__":
    main()
