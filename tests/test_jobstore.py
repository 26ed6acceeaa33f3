"""The job and upload store's claims on a real SQLite file: a job is claimed
by one holder at a time, taken over only once its lease ran out or its
holder's process is gone, and finished jobs expire."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.db import Database
from registry.jobstore import CANCELLED, RUNNING, SUCCEEDED, JobStore, holder_is_dead, make_holder
from registry.records import utc_now


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(Database(tmp_path / "jobs.db"))


def new_job(store: JobStore, job_id: str) -> None:
    store.create_job(job_id, "app", "default", "http://example.com/x.tar.gz",
                     {"version": None, "allow_overwrite": False, "sha256": None, "sealed_url": "x"}, "alice")


def dead_holder() -> str:
    """The holder name of a process of this host that has exited."""
    child = subprocess.run([sys.executable, "-c", "from registry.jobstore import make_holder; print(make_holder())"],
                           capture_output=True, text=True, check=True)
    return child.stdout.strip()


def test_a_job_is_claimed_once_while_its_lease_holds(store: JobStore) -> None:
    new_job(store, "j_1")
    first = store.claim_job("host:1:a", 60)
    assert first is not None and first.state == RUNNING and first.attempts == 1
    assert store.claim_job("host:2:b", 60) is None
    assert store.heartbeat_job("j_1", "host:1:a", 60, 10, 100)
    assert not store.heartbeat_job("j_1", "host:2:b", 60, 10, 100)


def test_an_expired_lease_or_a_dead_holder_gives_the_job_away(store: JobStore) -> None:
    new_job(store, "j_1")
    assert store.claim_job("elsewhere:1:a", 0.01) is not None
    time.sleep(0.05)
    again = store.claim_job("elsewhere:2:b", 60)
    assert again is not None and again.attempts == 2 and again.bytes_received == 0
    assert not store.finish_job("j_1", "elsewhere:1:a", SUCCEEDED, {}, 1, 1)  # the old holder lost it
    new_job(store, "j_2")
    dead = dead_holder()
    assert holder_is_dead(dead) and not holder_is_dead(make_holder())
    assert store.claim_job(dead, 3600) is not None
    taken = store.claim_job(make_holder(), 60)
    assert taken is not None and taken.id == "j_2"


def test_cancel_stops_the_holder_and_finished_jobs_expire(store: JobStore) -> None:
    new_job(store, "j_1")
    assert store.claim_job("h:1:a", 60) is not None
    cancelled = store.cancel_job("app", "default", "j_1")
    assert cancelled is not None and cancelled.state == CANCELLED
    assert not store.heartbeat_job("j_1", "h:1:a", 60, 1, 2)
    assert store.cancel_job("other", "default", "j_1") is None
    assert store.expire_jobs("2000-01-01 00:00:00.000000") == 0
    assert store.expire_jobs(utc_now()) == 1
    assert store.get_job("app", "default", "j_1") is None


def test_upload_write_lease(store: JobStore) -> None:
    store.create_upload("u" * 32, "app", "default", 100, {}, "alice", {}, time.time() + 60)
    assert store.lock_upload("u" * 32, "h:1:a", 60) is not None
    assert store.lock_upload("u" * 32, "h:2:b", 60) is None
    saved = store.save_progress("u" * 32, "h:1:a", 10, {"segments": [[0, 10]]}, time.time() + 60, release=True)
    assert saved is not None and saved.offset == 10 and saved.holder is None
    assert store.lock_upload("u" * 32, "h:2:b", 60) is not None
