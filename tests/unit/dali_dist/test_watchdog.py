"""watchdog.py on torch's in-memory key-value store (the same interface as the launcher's
TCPStore): a stalled rank posts where it waits and names exactly the ranks that never posted;
a rank that keeps beating never posts; progress withdraws the note; a store that is gone is
said so. Timeouts of about a second keep each case under two seconds."""

from __future__ import annotations

import socket
import time

import pytest
from torch.distributed import HashStore

from dali_dist.watchdog import PREFIX, RankWatchdog

TIMEOUT_S = 1.0  # stall after 0.5 s, poll every 0.2 s


def _wait_for(cond, within=5.0):
    deadline = time.monotonic() + within
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


@pytest.fixture
def watchdogs():
    made = []

    def make(*args, **kw):
        wd = RankWatchdog(*args, **kw)
        made.append(wd)
        return wd

    yield make
    for wd in made:
        wd.close()


def _stalled(wd: RankWatchdog, step: int) -> None:
    """As if the training loop had last beaten at ``step`` long ago."""
    wd.step, wd.last_beat = step, time.monotonic() - 10


def test_a_stalled_rank_names_exactly_the_ranks_that_never_posted(watchdogs, capsys):
    store = HashStore()
    store.set(f"{PREFIX}1", "step 7 on node-b")  # rank 1 is waiting too: alive
    wd = watchdogs(rank=0, world_size=4, timeout_s=TIMEOUT_S, store=store)
    _stalled(wd, 7)
    assert _wait_for(lambda: wd.report is not None)
    assert wd.report.startswith("rank(s) 2, 3 stopped answering: rank 0 waited ")
    assert "at step 7" in wd.report and "(train.dist_timeout_s=1)" in wd.report
    assert store.get(f"{PREFIX}0").decode() == f"step 7 on {socket.gethostname()}"
    assert capsys.readouterr().err.strip().splitlines() == [f"watchdog: {wd.report}"]


def test_every_rank_posted_means_stuck_not_dead(watchdogs):
    store = HashStore()
    for r in (1, 2):
        store.set(f"{PREFIX}{r}", "step 3 on x")
    wd = watchdogs(rank=0, world_size=3, timeout_s=TIMEOUT_S, store=store)
    _stalled(wd, 3)
    assert _wait_for(lambda: wd.report is not None)
    assert wd.report.startswith("every rank is alive but stuck for ")
    assert wd.report.endswith("near step 3: the ranks disagree about which collective comes next")


def test_a_rank_that_keeps_beating_never_posts(watchdogs):
    store = HashStore()
    wd = watchdogs(rank=1, world_size=2, timeout_s=TIMEOUT_S, store=store)
    end = time.monotonic() + 1.2  # over twice the stall time, beating every 50 ms
    step = 0
    while time.monotonic() < end:
        step += 1
        wd.beat(step)
        time.sleep(0.05)
    assert wd.report is None and not store.check([f"{PREFIX}1"])
    assert wd.step == step


def test_progress_after_a_stall_withdraws_the_note(watchdogs):
    store = HashStore()
    store.set(f"{PREFIX}1", "step 5 on y")
    wd = watchdogs(rank=0, world_size=2, timeout_s=TIMEOUT_S, store=store)
    _stalled(wd, 5)
    assert _wait_for(lambda: store.check([f"{PREFIX}0"]))
    assert _wait_for(lambda: wd.report is not None)
    wd.beat(6)  # it was slow, not dead (say, writing a checkpoint)
    assert _wait_for(lambda: not store.check([f"{PREFIX}0"]))


class _GoneStore:
    def set(self, key, value):
        raise ConnectionResetError("the agent went away")

    def check(self, keys):
        raise AssertionError("not reached")

    def delete_key(self, key):
        raise ConnectionResetError


def test_a_store_that_is_gone_is_said_so_without_crashing(watchdogs):
    wd = watchdogs(rank=2, world_size=3, timeout_s=TIMEOUT_S, store=_GoneStore())
    _stalled(wd, 11)
    assert _wait_for(lambda: wd.report is not None)
    assert wd.report == ("rank 2: no progress for 0 s at step 11, and the rendezvous store does not answer "
                         "(ConnectionResetError): the launcher or node 0 is gone")
    assert wd._thread.is_alive()  # the thread goes on watching


def test_one_process_or_no_store_starts_no_thread():
    assert RankWatchdog(0, 1, TIMEOUT_S, HashStore())._thread is None
    assert RankWatchdog(0, 2, TIMEOUT_S, store=None)._thread is None
    wd = RankWatchdog.for_process_group(0, 4, TIMEOUT_S)  # no process group in this test
    assert wd.store is None and wd._thread is None


def test_close_stops_the_thread(watchdogs):
    wd = watchdogs(rank=0, world_size=2, timeout_s=TIMEOUT_S, store=HashStore())
    assert wd._thread.is_alive() and wd._thread.daemon
    wd.close()
    wd._thread.join(timeout=2)
    assert not wd._thread.is_alive()
