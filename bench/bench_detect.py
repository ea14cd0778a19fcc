"""Benchmark: batch anomaly detection throughput (samples/s per core), ours vs a reference.

Ours: ``cityops.lifeline.detect.detect`` — the production detector, batch mode, over every series
of the NAB corpus (each with its NAB probationary period as learning period), or over generated
series. Reference, measured in the same run on the same arrays: a bare NumPy rolling mean and
standard deviation (cumulative sums, one window), the least any streaming detector must do.

Throughput is counted in CPU seconds of this single process (``time.process_time``), i.e. per
core, so that other load on a shared machine does not count against it; wall-clock figures are
printed too. Threads of BLAS/OpenMP are pinned to one.

    PYTHONPATH=src .venv/bin/python bench/bench_detect.py --data /work/shared/data/nab
    PYTHONPATH=src .venv/bin/python bench/bench_detect.py --generated 2000000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from cityops.lifeline.detect import detect  # noqa: E402
from cityops.lifeline.nab.corpus import load_corpus, read_data_file  # noqa: E402
from cityops.lifeline.nab.scoring import probationary_length  # noqa: E402

Series = list[tuple[np.ndarray, int]]


def nab_series(root: Path) -> Series:
    corpus = load_corpus(root)
    out = []
    for key in corpus.files:
        x = read_data_file(corpus.data_path(key)).values
        out.append((x, probationary_length(len(x))))
    return out


def generated_series(n: int, per_series: int = 20_000, seed: int = 1) -> Series:
    """Sensor-like series: daily cycle, weekly cycle, drift, noise, a few spikes and shifts."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, per_series):
        m = min(per_series, n - start)
        t = np.arange(m)
        x = (
            50
            + 10 * np.sin(2 * np.pi * t / 288)
            + 3 * np.sin(2 * np.pi * t / 2016)
            + 0.0005 * t
            + rng.normal(0, 1, m)
        )
        for pos in rng.integers(1000, m, 3):
            x[pos] += rng.choice([-1, 1]) * 40
        x[int(m * 0.8) :] += 15
        out.append((x, min(750, m // 7)))
    return out


def reference(x: np.ndarray, _p: int, window: int = 100) -> np.ndarray:
    """Bare NumPy rolling mean and standard deviation over ``window`` samples (z-score)."""
    c1 = np.cumsum(np.insert(x, 0, 0.0))
    c2 = np.cumsum(np.insert(x * x, 0, 0.0))
    i = np.arange(1, x.size + 1)
    lo = np.maximum(0, i - window)
    k = i - lo
    mean = (c1[i] - c1[lo]) / k
    var = np.maximum((c2[i] - c2[lo]) / k - mean * mean, 0.0)
    return (x - mean) / (np.sqrt(var) + 1e-12)


def measure(
    fn: Callable[[np.ndarray, int], np.ndarray], series: Series, repeat: int
) -> tuple[float, float]:
    """Best CPU and wall seconds over ``repeat`` passes over all series."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        for x, p in series:
            fn(x, p)
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
    return best_cpu, best_wall


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/nab"), help="NAB root")
    ap.add_argument("--generated", type=int, default=0, help="use N generated samples instead")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.generated:
        series, what = generated_series(args.generated), f"{args.generated:,} generated samples"
    else:
        series, what = nab_series(args.data), f"NAB corpus at {args.data}"
    n = sum(x.size for x, _ in series)
    detect(*series[0])  # warm-up (imports, first-call allocations)
    ours_cpu, ours_wall = measure(detect, series, args.repeat)
    ref_cpu, ref_wall = measure(reference, series, args.repeat)
    print(f"bench_detect: {what}, {len(series)} series, {n:,} samples, best of {args.repeat}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )
    print(
        f"ours      (cityops detect, batch) : {n / ours_cpu:>12,.0f} samples/s per core (CPU)"
        f"  {n / ours_wall:>12,.0f} samples/s wall"
    )
    print(
        f"reference (numpy rolling mean/std): {n / ref_cpu:>12,.0f} samples/s per core (CPU)"
        f"  {n / ref_wall:>12,.0f} samples/s wall"
    )
    ratio_cpu, ratio_wall = ours_cpu / ref_cpu, ours_wall / ref_wall
    print(f"ratio ours/reference time: {ratio_cpu:.1f}× (CPU), {ratio_wall:.1f}× (wall)")
    print(f"target ≥ 1,000,000 samples/s per core: {'met' if n / ours_cpu >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
