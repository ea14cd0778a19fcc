"""The transactional outbox: an acknowledged transition's event is never lost and never
applied twice, through crashes between claim and acknowledgement (DESIGN §1.5)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import func, select

from cityops.core import events
from cityops.core.db import utcnow
from cityops.core.models import AppState


def _effect(session: Any, event: events.Claimed) -> None:
    """A database effect that would fail loudly if applied twice (primary key)."""
    session.add(AppState(key=f"effect:{event.uid}", value=str(event.payload["n"])))
    session.flush()


HANDLERS = {"test.effect": events.Handler(_effect)}


def _effects(db: Any) -> int:
    with db.read() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(AppState).where(AppState.key.like("effect:%"))
            )
            or 0
        )


def _pending(db: Any) -> int:
    with db.read() as s:
        return events.stats(s)["pending"]


def test_event_and_state_change_commit_or_vanish_together(db: Any) -> None:
    with db.write() as s:
        s.add(AppState(key="state", value="changed"))
        events.publish(s, "test.effect", {"n": 1})
    with pytest.raises(RuntimeError), db.write() as s:
        s.add(AppState(key="state2", value="changed"))
        events.publish(s, "test.effect", {"n": 2})
        raise RuntimeError("crash before commit")
    with db.read() as s:
        assert s.get(AppState, "state2") is None
    assert _pending(db) == 1


def test_crash_between_claim_and_ack_is_recovered_once(db: Any) -> None:
    with db.write() as s:
        for n in range(3):
            events.publish(s, "test.effect", {"n": n})
    now = utcnow()
    # worker A claims the batch and "crashes": it never processes or acknowledges
    claimed_a = events.claim(db, "worker-a", now=now)
    assert len(claimed_a) == 3
    # while A's lease runs, nobody else may take them
    assert events.claim(db, "worker-b", now=now + dt.timedelta(seconds=5)) == []
    # after the lease, worker B takes over and applies each event once
    later = now + events.LEASE + dt.timedelta(seconds=1)
    assert events.run_once(db, HANDLERS, "worker-b", now=later) == 3
    assert _effects(db) == 3 and _pending(db) == 0
    # A wakes up and tries to finish its stale claim: refused, nothing applied twice
    for ev in claimed_a:
        assert events.process(db, ev, HANDLERS["test.effect"], "worker-a") is False
    assert _effects(db) == 3
    assert events.run_once(db, HANDLERS, "worker-c", now=later) == 0


def test_failing_handler_rolls_back_and_is_retried(db: Any) -> None:
    calls = {"n": 0}

    def flaky(session: Any, event: events.Claimed) -> None:
        _effect(session, event)
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("downstream hiccup")

    with db.write() as s:
        events.publish(s, "test.effect", {"n": 1})
    handlers = {"test.effect": events.Handler(flaky)}
    now = utcnow()
    assert events.run_once(db, handlers, "w", now=now) == 0
    assert _effects(db) == 0  # the effect of the failed attempt was rolled back
    with db.read() as s:
        row = s.scalar(select(events.OutboxEvent))
        assert row.last_error and "hiccup" in row.last_error and row.done_at is None
        retry_at = row.available_at
    assert events.run_once(db, handlers, "w", now=now) == 0  # backing off
    assert events.run_once(db, handlers, "w", now=retry_at + dt.timedelta(seconds=1)) == 1
    assert _effects(db) == 1


def test_external_handler_is_resent_with_the_same_id_after_a_crash(db: Any) -> None:
    sent: list[str] = []
    with db.write() as s:
        uid = events.publish(s, "test.send", {"n": 1}).uid
    handler = events.Handler(lambda ev: sent.append(ev.uid), external=True)
    now = utcnow()
    [ev] = events.claim(db, "a", now=now)
    handler.run(ev)  # sent … and the worker dies before acknowledging
    later = now + events.LEASE + dt.timedelta(seconds=1)
    assert events.run_once(db, {"test.send": handler}, "b", now=later) == 1
    assert sent == [uid, uid]  # at least once; the receiver drops the repeat by its id
    assert _pending(db) == 0


def test_gives_up_after_max_attempts(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_ATTEMPTS", 2)

    def broken(session: Any, event: events.Claimed) -> None:
        raise ValueError("bad payload")

    with db.write() as s:
        events.publish(s, "test.effect", {"n": 1})
    t = utcnow()
    for _ in range(3):
        events.run_once(db, {"test.effect": events.Handler(broken)}, "w", now=t)
        t += dt.timedelta(hours=2)
    with db.read() as s:
        assert events.stats(s) == {"pending": 0, "done": 0, "failed": 1}


def test_concurrent_workers_share_the_queue_without_overlap(db: Any) -> None:
    with db.write() as s:
        for n in range(60):
            events.publish(s, "test.effect", {"n": n})
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(3)

    def work(name: str) -> None:
        barrier.wait()
        got[name] = [e.id for e in events.claim(db, name, limit=25)]

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    ids = [i for batch in got.values() for i in batch]
    assert len(ids) == len(set(ids)) == 60  # every event claimed by exactly one worker


def test_one_failing_event_does_not_hold_back_its_batch(db: Any) -> None:
    """A batch runs in one transaction; when one handler fails, the others still commit once
    (re-run event by event in savepoints) and only the failing one backs off."""

    def picky(session: Any, event: events.Claimed) -> None:
        _effect(session, event)
        if event.payload["n"] == 2:
            raise ValueError("bad payload")

    with db.write() as s:
        for n in range(5):
            events.publish(s, "test.effect", {"n": n})
    now = utcnow()
    handlers = {"test.effect": events.Handler(picky)}
    assert events.run_once(db, handlers, "w", now=now) == 4
    assert _effects(db) == 4 and _pending(db) == 1
    with db.read() as s:
        failed = s.scalar(select(events.OutboxEvent).where(events.OutboxEvent.done_at.is_(None)))
        assert failed.payload == {"n": 2} and "bad payload" in failed.last_error
        assert failed.available_at > now  # backing off, not retried at once


def test_a_lost_lease_rolls_the_whole_batch_back(db: Any) -> None:
    """If another worker took an event over while we processed the batch, none of the
    batch's effects commit: the other worker applies them, once."""
    with db.write() as s:
        for n in range(3):
            events.publish(s, "test.effect", {"n": n})
    now = utcnow()
    claimed = events.claim(db, "slow", now=now)
    later = now + events.LEASE + dt.timedelta(seconds=1)
    assert events.run_once(db, HANDLERS, "fast", now=later) == 3

    def seen(session: Any, event: events.Claimed) -> None:  # succeeds: only the ack can fail
        session.add(AppState(key=f"seen:{event.uid}", value="slow"))

    slow = {"test.effect": events.Handler(seen)}
    assert events._process_internal(db, claimed, slow, "slow", later) == 0
    assert _effects(db) == 3
    with db.read() as s:
        assert s.scalar(select(func.count()).where(AppState.key.like("seen:%"))) == 0
