"""Benchmark: synthetic city generation and GeoPackage write.

    PYTHONPATH=src .venv/bin/python bench/bench_generate.py [N ...]   (default 10000 100000)

Reference, measured in the same run (DESIGN §6: figures are ratios, machines are noisy): a
naive per-building Python loop that only makes each footprint as a Shapely box and an
attribute dict — the minimum work a loop-per-building generator does before it has any
streets, codes, facilities or networks. ``gen/ref`` below 1 means the vectorised generator
builds the whole city faster than the naive loop builds bare footprints.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import shapely

from cityops.synth import generate_city, write_city


def naive_footprints(n: int, seed: int) -> float:
    rnd = random.Random(seed)
    t = time.perf_counter()
    rows = []
    for i in range(n):
        x, y = rnd.uniform(0, 10_000), rnd.uniform(0, 10_000)
        w, d = rnd.uniform(8, 60), rnd.uniform(8, 20)
        rows.append(
            {"id": i, "floors": rnd.randint(1, 33), "geometry": shapely.box(x, y, x + w, y + d)}
        )
    return time.perf_counter() - t


def main(sizes: list[int]) -> None:
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(
        f"{'buildings':>10} {'generate s':>11} {'write s':>9} {'MB':>7} {'ref s':>8} {'gen/ref':>8}"
    )
    for n in sizes:
        t = time.perf_counter()
        city = generate_city(n, 1)
        t_gen = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "city.gpkg"
            t = time.perf_counter()
            write_city(city, path)
            t_write = time.perf_counter() - t
            size = path.stat().st_size / 1e6
        t_ref = naive_footprints(n, 1)
        ratio = t_gen / t_ref
        print(f"{n:>10,} {t_gen:>11.2f} {t_write:>9.2f} {size:>7.1f} {t_ref:>8.2f} {ratio:>8.2f}")
        counts = ", ".join(f"{k} {len(v):,}" for k, v in city.items())
        print(f"{'':>10} {counts}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000])
