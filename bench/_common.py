"""Shared helpers of the benchmark scripts (public tools only: time.perf_counter, psql,
ogr2ogr, httpx)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
CITYOPS = [sys.executable, "-m", "cityops.cli"]
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def run(cmd: list[str], **kw: object) -> float:
    """Run a command, fail loudly, return its wall time in seconds."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return dt


def city_gpkg(buildings: int, seed: int = 1) -> Path:
    """The generated city of that size (made once, kept in bench/out/)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"city_{buildings}_{seed}.gpkg"
    if not path.exists():
        print(f"generating {buildings:,} buildings → {path} …", flush=True)
        t = run(
            [
                *CITYOPS,
                "generate-city",
                "--buildings",
                str(buildings),
                "--seed",
                str(seed),
                "--out",
                str(path),
            ]
        )
        print(f"  generated in {t:.1f} s", flush=True)
    return path


def psql(sql: str, url: str = PG_ADMIN) -> str:
    res = subprocess.run(["psql", url, "-qtAc", sql], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"psql failed: {sql}\n{res.stderr}")
    return res.stdout.strip()


def fresh_pg_db(name: str) -> str:
    psql(f'DROP DATABASE IF EXISTS "{name}"')
    psql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    psql("CREATE EXTENSION IF NOT EXISTS postgis", url)
    return url


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        sys.exit(
            f"{tool} not found: install the Debian package {package} (apt-get install "
            f"{package}) and run again"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
