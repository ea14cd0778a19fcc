"""Case creation + dispatch over HTTP with N existing cases, on SQLite and PostgreSQL, side by
side with pgbench's built-in TPC-B-like run on the same PostgreSQL (the reference).

Each new case is one ``POST /api/v1/cases`` with ``"dispatch": true`` by a supervision +
command centre seat: geocoding, dispatch rules, duplicate search, deadlines on the working
calendar, three history events (report, register, dispatch), three outbox events and one
reporter row, in one transaction — the whole 信息收集 → 立案 → 派遣 path. The existing cases are
bulk-loaded set-based (executemany on SQLite, COPY on PostgreSQL) with consistent histories:
85 % closed (6 events each), the rest open in every status.

Measured per backend (the load generator is a lean keep-alive HTTP/1.1 client on uvloop, not
httpx, whose own CPU would compete with the server on a 2-core machine):
* paced: ``--low-rate`` (default 40/s, a rate the machine sustains) and ``--rate`` (200/s)
  new cases/s for ``--seconds``; latency from each request's *scheduled* send time (no
  coordinated omission): p50, p99, achieved rate, errors; the worker drains between runs;
* throughput: ``--clients`` connections sending back to back for ``--seconds``;
* reference: ``pgbench -i -s 10`` then ``pgbench -T 30 -c 4 -j 2`` on a scratch database of the
  same server.
Targets (issue 3): p99 < 100 ms at 200 new cases/s; throughput ≥ 20 % of pgbench's tps.

The outbox worker runs as deployed: inside the server on SQLite, as one ``cityops worker``
process on PostgreSQL (``--no-worker`` leaves it out).

    python bench/bench_cases.py --cases 1000000            # both backends
    python bench/bench_cases.py --cases 20000 --backends sqlite --seconds 10
    python bench/bench_cases.py --reuse            # measure the seeded databases again
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import OUT, PG_ADMIN, free_port, fresh_pg_db, machine, need

ROOT = Path(__file__).resolve().parents[1]
LON0, LAT0, DX, DY = 120.60, 31.30, 0.002, 0.002
DISTRICT = "320508"
STREETS, COMMUNITIES, GRIDS = 10, 10, 10
CATEGORIES = [
    "event:0102",
    "event:0103",
    "event:0104",
    "event:0201",
    "event:0505",
    "event:0507",
    "component:0101",
    "component:0102",
    "component:0118",
    "component:0305",
    "event:0510",
]
DEPT = {
    "event:0102": "sanitation",
    "event:0103": "sanitation",
    "event:0104": "sanitation",
    "event:0201": "law_enforcement",
    "event:0505": "traffic_police",
    "event:0507": "law_enforcement",
    "component:0101": "water",
    "component:0102": "drainage",
    "component:0118": "streetlight",
    "component:0305": "sanitation",
    "event:0510": "law_enforcement",
}
LIFE = ["report", "register", "dispatch", "accept", "resolve", "close"]
STATUS_AFTER = ["reported", "registered", "dispatched", "in_progress", "resolved", "closed"]
_CROCKFORD = np.array(list("0123456789ABCDEFGHJKMNPQRSTVWXYZ"))


# ------------------------------------------------------------------------------ the app
def app_factory() -> Any:
    """uvicorn --factory entry (one per worker process)."""
    from cityops.app import create_app
    from cityops.core.db import Database
    from cityops.settings import Settings

    url = os.environ["BENCH_DB_URL"]
    return create_app(Settings(database_url=url), Database(url))


# ------------------------------------------------------------------------------ seeding
def grid_cell(s: np.ndarray, c: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return s * GRIDS + g, c  # column, row of the grid box


def seed_city(db: Any) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from cityops.base import service as base

    codes, kinds, names, geoms = (
        [DISTRICT],
        ["district"],
        ["姑苏区"],
        [box(LON0, LAT0, LON0 + STREETS * GRIDS * DX, LAT0 + COMMUNITIES * DY)],
    )
    gcodes, ggeoms = [], []
    for s in range(STREETS):
        street = f"{DISTRICT}{s + 1:03d}"
        x0 = LON0 + s * GRIDS * DX
        codes.append(street), kinds.append("street"), names.append(f"街道{s + 1}")
        geoms.append(box(x0, LAT0, x0 + GRIDS * DX, LAT0 + COMMUNITIES * DY))
        for c in range(COMMUNITIES):
            comm = f"{street}{c + 1:03d}"
            y0 = LAT0 + c * DY
            codes.append(comm), kinds.append("community"), names.append(f"社区{s + 1}-{c + 1}")
            geoms.append(box(x0, y0, x0 + GRIDS * DX, y0 + DY))
            for g in range(GRIDS):
                gcodes.append(f"{comm}{g + 1:03d}")
                ggeoms.append(box(x0 + g * DX, y0, x0 + (g + 1) * DX, y0 + DY))
    areas = gpd.GeoDataFrame(
        {"code": codes, "kind": kinds, "name": names}, geometry=geoms, crs="EPSG:4326"
    )
    grids = gpd.GeoDataFrame(
        {"code": gcodes, "kind": ["unit_grid"] * len(gcodes)}, geometry=ggeoms, crs="EPSG:4326"
    )
    for layer, frame in (("areas", areas), ("grids", grids)):
        base.import_frame(
            db, frame, layer=layer, file="bench", fmt="bench", source_crs="EPSG:4326", key="code"
        )


def random_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """``n`` unused 10-character Crockford ids, drawn like the service draws them."""
    out: list[str] = []
    while len(out) < n:
        bits = rng.integers(0, 2**50, size=n - len(out), dtype=np.int64)
        chars = np.stack([_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(10)], axis=1)
        for s in np.ascontiguousarray(chars).view("<U10").ravel().tolist():
            if s not in taken:
                taken.add(s)
                out.append(s)
    return out


def case_frames(n: int, now: dt.datetime, chunk: int = 200_000, seed: int = 7) -> Any:
    """Yield (cases, events, reporters) DataFrames for chunks of ``n`` existing cases, built
    column-wise (no Python loop per row)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    first_pk = 1
    first_ev = 1
    minute = np.timedelta64(60, "s")
    now64 = np.datetime64(now.replace(tzinfo=None), "us")
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        pk = np.arange(first_pk, first_pk + k)
        first_pk += k
        s = rng.integers(0, STREETS, k)
        c = rng.integers(0, COMMUNITIES, k)
        g = rng.integers(0, GRIDS, k)
        col, row = grid_cell(s, c, g)
        cat = np.array(CATEGORIES)[rng.integers(0, len(CATEGORIES), k)]
        dept = np.vectorize(DEPT.get)(cat)
        # how far along the loop each case got (index into LIFE): 95 % closed, a recent
        # backlog open in every status
        st = rng.choice(6, size=k, p=[0.01, 0.01, 0.01, 0.01, 0.01, 0.95])
        age = np.where(st == 5, rng.uniform(3, 365, k), rng.uniform(0, 30, k))
        t0 = now64 - (age * 86400e6).astype("timedelta64[us]")
        street = np.char.add(DISTRICT, np.char.zfill((s + 1).astype(str), 3))
        comm = np.char.add(street, np.char.zfill((c + 1).astype(str), 3))
        grid = np.char.add(comm, np.char.zfill((g + 1).astype(str), 3))
        at = [np.where(st >= j, t0 + j * 25 * minute, np.datetime64("NaT")) for j in range(6)]
        open_ = st < 5
        due = np.where(open_, now64 + np.timedelta64(5, "D"), np.datetime64("NaT"))
        stage_names = np.array(
            ["registration", "dispatch", "handling", "handling", "verification", ""]
        )
        cases = pd.DataFrame(
            {
                "pk": pk,
                "id": random_ids(rng, k, taken),
                "version": st + 1,
                "status": np.array(STATUS_AFTER)[st],
                "source": "grid_patrol",
                "category": cat,
                "urgency": "normal",
                "title": "巡查发现问题",
                "description": "",
                "lon": LON0 + (col + rng.uniform(0.05, 0.95, k)) * DX,
                "lat": LAT0 + (row + rng.uniform(0.05, 0.95, k)) * DY,
                "address": "",
                "district": DISTRICT,
                "street": street,
                "community": comm,
                "grid_code": grid,
                "component_id": None,
                "suggested_department": dept,
                "dispatch_rule": "dispatch rule",
                "department": np.where(st >= 2, dept, None),
                "assisting": "[]",
                "reported_by": "bench",
                "reported_at": at[0],
                "registered_at": at[1],
                "dispatched_at": at[2],
                "accepted_at": at[3],
                "resolved_at": at[4],
                "closed_at": at[5],
                "ended_at": at[5],
                "stage": np.where(open_, stage_names[st], None),
                "stage_started_at": np.where(open_, t0 + st * 25 * minute, np.datetime64("NaT")),
                "due_at": due,
                "due_provisional": False,
                "handling_due_at": np.where((st == 2) | (st == 3), due, np.datetime64("NaT")),
                "extension_request": None,
                "extensions_granted": 0,
                "escalation_level": 0,
                "next_escalation_at": pd.NaT,
                "dispatch_count": (st >= 2).astype(int),
                "send_back_count": 0,
                "rework_count": 0,
                "handling_minutes": np.where(st >= 4, 120, None),
                "on_time": np.where(st >= 4, True, None),
                "merged_into": None,
                "likely_duplicates": "[]",
                "has_duplicates": False,
                "feedback_contacted": None,
                "feedback_solved": None,
                "satisfaction": None,
                "updated_at": t0 + st * 25 * minute,
            }
        )
        counts = st + 1
        case_of = np.repeat(np.arange(k), counts)
        j = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        m = len(j)
        events = pd.DataFrame(
            {
                "id": np.arange(first_ev, first_ev + m),
                "case_pk": pk[case_of],
                "seq": j + 1,
                "action": np.array(LIFE)[j],
                "from_status": np.where(j > 0, np.array(STATUS_AFTER)[np.maximum(j - 1, 0)], None),
                "to_status": np.array(STATUS_AFTER)[j],
                "actor": "bench",
                "role": "system",
                "at": t0[case_of] + j * 25 * minute,
                "note": "",
                "department": np.where(j >= 2, dept[case_of], None),
                "stage_due_at": pd.NaT,
                "data": "{}",
            }
        )
        first_ev += m
        reporters = pd.DataFrame(
            {
                "pk": pk,
                "case_pk": pk,
                "user_id": None,
                "username": "bench",
                "channel": "grid_patrol",
                "name_enc": None,
                "phone_enc": None,
                "email_enc": None,
                "notify": False,
                "merged_from": None,
                "created_at": t0,
            }
        )
        yield cases, events, reporters


def _times(col: Any, suffix: str = "") -> Any:
    """datetime64 column → 'YYYY-MM-DD HH:MM:SS.ffffff' text (vectorised), None for NaT."""
    values = col.to_numpy(dtype="datetime64[us]")
    text = np.char.add(np.char.replace(np.datetime_as_string(values, unit="us"), "T", " "), suffix)
    return np.where(np.isnat(values), None, text.astype(object))


def _for_sqlite(df: Any) -> list[tuple[Any, ...]]:
    out = df.copy()
    for name in out.columns:
        col = out[name]
        if str(col.dtype).startswith("datetime64"):
            out[name] = _times(col)
        elif col.dtype == bool:
            out[name] = col.astype(int)
    out = out.astype(object).where(out.notna(), None)
    return list(out.itertuples(index=False, name=None))


def _csv_for_pg(df: Any) -> bytes:
    import io

    out = df.copy()
    for name in out.columns:
        if str(out[name].dtype).startswith("datetime64"):
            out[name] = _times(out[name], "+00")
    buf = io.StringIO()
    out.to_csv(buf, header=False, index=False, na_rep="\\N")
    return buf.getvalue().encode()


def seed_cases(db: Any, n: int) -> float:
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    raw = db.engine.raw_connection()
    tables = ("cases", "case_events", "case_reporters")
    try:
        cur = raw.cursor()
        if db.is_sqlite:
            cur.execute("PRAGMA synchronous=OFF")
            cur.execute("BEGIN")
        for frames in case_frames(n, now):
            for table, df in zip(tables, frames, strict=True):
                cols = ", ".join(df.columns)
                if db.is_sqlite:
                    marks = ", ".join("?" * len(df.columns))
                    cur.executemany(
                        f"INSERT INTO {table} ({cols}) VALUES ({marks})", _for_sqlite(df)
                    )
                else:
                    with cur.copy(
                        f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
                    ) as copy:
                        copy.write(_csv_for_pg(df))
            if not db.is_sqlite:
                raw.commit()
            print(
                f"  seeded {int(frames[0]['pk'].iloc[-1]):,} cases "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        if db.is_sqlite:
            cur.execute("COMMIT")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("ANALYZE")
        else:
            for table, seq_col in (
                ("cases", "pk"),
                ("case_events", "id"),
                ("case_reporters", "pk"),
            ):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{seq_col}'), "
                    f"(SELECT max({seq_col}) FROM {table}))"
                )
            raw.commit()
            # VACUUM cannot run in a transaction: switch the driver connection itself
            raw.driver_connection.autocommit = True
            for table in tables:
                cur.execute(f"VACUUM ANALYZE {table}")
    finally:
        raw.close()
    return time.perf_counter() - t0


def prepare(url: str, n: int) -> None:
    from cityops.base import service as base
    from cityops.core.auth import create_user
    from cityops.core.db import Database
    from cityops.core.migrate import upgrade

    db = Database(url)
    upgrade(db)
    with db.write() as session:
        base.ensure_layers(session)
    seed_city(db)
    with db.write() as session:
        create_user(session, "seat", "bench-password", ["supervisor", "dispatcher"])
    print(f"seeding {n:,} existing cases …", flush=True)
    took = seed_cases(db, n)
    print(f"  seeded in {took:.0f} s", flush=True)
    db.dispose()


# ------------------------------------------------------------------------------ load
def new_case_body(rng: np.random.Generator) -> dict[str, Any]:
    col = int(rng.integers(0, STREETS * GRIDS))
    row = int(rng.integers(0, COMMUNITIES))
    return {
        "source": "grid_patrol",
        "category": CATEGORIES[int(rng.integers(0, len(CATEGORIES)))],
        "title": "巡查发现问题",
        "description": "现场拍照上报",
        "location": {
            "lon": LON0 + (col + float(rng.uniform(0.05, 0.95))) * DX,
            "lat": LAT0 + (row + float(rng.uniform(0.05, 0.95))) * DY,
        },
        "dispatch": True,
    }


class RawPool:
    """A lean HTTP/1.1 keep-alive client on asyncio streams (uvloop when present).

    httpx spends ~2 ms of client CPU per request: on a 2-core machine the load generator
    would compete with the server it measures. This one builds each request as bytes and
    reads the answer by Content-Length, about 20× cheaper.
    """

    def __init__(self, base: str, token: str, size: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port, self.size = host, int(port), size
        self.auth = f"Bearer {token}"
        self.idle: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
        self.opened = 0

    async def _conn(self) -> tuple[Any, Any]:
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self.idle.get()

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> int:
        payload = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: {self.auth}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            + (f"Idempotency-Key: {key}\r\n" if key else "")
            + "\r\n"
        )
        reader, writer = await self._conn()
        try:
            writer.write(head.encode() + payload)
            status = int((await reader.readline()).split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
        except Exception:
            writer.close()
            self.opened -= 1
            raise
        self.idle.put_nowait((reader, writer))
        return status

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


def _loop() -> Any:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def run_async(coro: Any) -> Any:
    loop = _loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def paced(base: str, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """Send ``rate`` creates per second; latency from each request's scheduled time."""
    rng = np.random.default_rng(11)
    n = int(rate * seconds)
    lat: list[float] = []
    errors: dict[str, int] = {}
    pool = RawPool(base, token, 512)
    t0 = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        try:
            status = await pool.post("/api/v1/cases", new_case_body(rng), uuid.uuid4().hex)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        if status == 201:
            lat.append(time.perf_counter() - scheduled)
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    pool.close()
    arr = np.array(lat) * 1000
    return {
        "requests": n,
        "ok": len(lat),
        "errors": errors,
        "achieved_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 1) if len(arr) else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 1) if len(arr) else None,
        "max_ms": round(float(arr.max()), 1) if len(arr) else None,
    }


async def saturate(base: str, token: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections sending creates back to back."""
    rng = np.random.default_rng(13)
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    pool = RawPool(base, token, clients)

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status = await pool.post("/api/v1/cases", new_case_body(rng))
            if status == 201:
                lat.append(time.perf_counter() - t)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    wall = time.perf_counter() - t0
    pool.close()
    arr = np.array(lat) * 1000
    return {
        "clients": clients,
        "ok": len(lat),
        "errors": errors,
        "per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
    }


def serve(url: str, workers: int, in_process_worker: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "BENCH_DB_URL": url,
        "CITYOPS_WORKER_IN_PROCESS": "on" if in_process_worker else "off",
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'bench'}",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_cases:app_factory",
            "--factory",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT / "bench",
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start")


def drain(url: str, timeout: float = 120, enabled: bool = True) -> None:
    """Wait until the outbox worker has caught up, so that one run's backlog does not bill
    the next."""
    from cityops.core import events
    from cityops.core.db import Database

    if not enabled:
        return
    db = Database(url)
    try:
        stop = time.monotonic() + timeout
        while time.monotonic() < stop:
            with db.read() as session:
                if events.stats(session)["pending"] < 50:
                    return
            time.sleep(1)
    finally:
        db.dispose()


def run_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    if not args.reuse:
        prepare(url, args.cases)
    in_proc = name == "sqlite" and not args.no_worker
    workers = args.workers_sqlite if name == "sqlite" else args.workers_pg
    proc, base = serve(url, workers, in_proc)
    worker = None
    if name == "postgresql" and not args.no_worker:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cityops.cli", "worker", "--db", url, "--interval", "1"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        r = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": "seat", "password": "bench-password"}
        )
        token = r.json()["access_token"]
        run_async(paced(base, token, args.rate, 3))  # warm-up (caches, connections)
        drain(url, enabled=not args.no_worker)
        low = run_async(paced(base, token, args.low_rate, args.seconds)) if args.low_rate else None
        drain(url, enabled=not args.no_worker)
        target = run_async(paced(base, token, args.rate, args.seconds))
        drain(url, enabled=not args.no_worker)
        result = {
            "backend": name,
            "server_workers": workers,
            "paced": target,
            "paced_low": low,
            "throughput": run_async(saturate(base, token, args.clients, args.seconds)),
        }
    finally:
        proc.terminate()
        proc.wait(30)
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


def pgbench(seconds: int) -> float:
    need("pgbench", "postgresql-15 (or postgresql-contrib-15)")
    url = fresh_pg_db("cityops_bench_pgbench")
    subprocess.run(["pgbench", "-i", "-q", "-s", "10", url], check=True, capture_output=True)
    res = subprocess.run(
        ["pgbench", "-T", str(seconds), "-c", "4", "-j", "2", url],
        check=True,
        capture_output=True,
        text=True,
    )
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", res.stdout)
    if not m:
        sys.exit(f"cannot read pgbench's tps:\n{res.stdout}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1_000_000, help="existing cases to seed")
    ap.add_argument("--rate", type=float, default=200, help="paced new cases per second")
    ap.add_argument("--seconds", type=float, default=30, help="length of each run")
    ap.add_argument(
        "--low-rate",
        type=float,
        default=50,
        help="a second paced run at a rate the machine sustains (0: skip)",
    )
    ap.add_argument("--clients", type=int, default=16, help="connections in the throughput run")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers-sqlite", type=int, default=1, help="uvicorn workers on SQLite")
    ap.add_argument("--workers-pg", type=int, default=2, help="uvicorn workers on PostgreSQL")
    ap.add_argument("--pgbench-seconds", type=int, default=30)
    ap.add_argument("--no-worker", action="store_true", help="run without the outbox worker")
    ap.add_argument(
        "--reuse", action="store_true", help="measure the databases of the previous run again"
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{machine()}; {dt.datetime.now():%Y-%m-%d %H:%M}; {args.cases:,} existing cases")
    results = []
    for name in args.backends.split(","):
        if name == "sqlite":
            path = OUT / "bench_cases.db"
            if not args.reuse:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        elif args.reuse:
            url = PG_ADMIN.rsplit("/", 1)[0] + "/cityops_bench_cases"
        else:
            url = fresh_pg_db("cityops_bench_cases")
        results.append(run_backend(name, url, args))
    tps = pgbench(args.pgbench_seconds) if "postgresql" in args.backends else None
    print()
    print(
        "| backend | paced rate /s | achieved /s | p50 ms | p99 ms | errors "
        "| max throughput /s (p50/p99 ms) | vs pgbench tps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["throughput"]
        ratio = f"{100 * t['per_s'] / tps:.0f} %" if tps else "—"
        for key, rate in (("paced", args.rate), ("paced_low", args.low_rate)):
            p = r.get(key)
            if not p:
                continue
            first = key == "paced"
            print(
                f"| {r['backend']} ({r['server_workers']} server proc.) | {rate:.0f} | "
                f"{p['achieved_per_s']} | {p['p50_ms']} | {p['p99_ms']} | "
                f"{sum(p['errors'].values())} | "
                + (f"{t['per_s']} ({t['p50_ms']}/{t['p99_ms']}) | {ratio} |" if first else " | |")
            )
    if tps:
        print(f"| pgbench TPC-B-like (-c 4 -j 2, scale 10) | | | | | | {tps:.0f} tps | 100 % |")
    (OUT / "bench_cases.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "results": results,
                "pgbench_tps": tps,
                "machine": machine(),
                "when": dt.datetime.now().isoformat(),
            },
            ensure_ascii=False,
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
