"""Name the rank that stopped answering, before the process-group timeout ends the job.

When one rank hangs (a stuck file system read, a stopped or swapped-out process, a dead
node), every other rank waits inside a collective until ``train.dist_timeout_s`` and then
fails with a backend message that does not say who was missing. Here each rank runs a small
thread: once its own training loop has made no progress for half the timeout, it writes
"rank r is waiting at step s" into the process group's key-value store (hosted by the
launcher's agent, so it outlives any one rank) and, a little later, reads which ranks
have written nothing. Those are the silent ones; the report goes to stderr at once and
becomes the error message when the collective finally times out.

A rank that is merely slow (the main process writing a checkpoint while the others wait)
also posts, so it is never blamed. Cost in the loop: two attribute stores per step.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Optional

PREFIX = "dali_dist/waiting/"


class RankWatchdog:
    def __init__(self, rank: int, world_size: int, timeout_s: float, store=None):
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.store = store
        self.step = 0
        self.last_beat = time.monotonic()
        self.report: Optional[str] = None
        self._stop = threading.Event()
        self._thread = None
        if world_size > 1 and store is not None:
            self._thread = threading.Thread(target=self._watch, name="dali-rank-watchdog", daemon=True)
            self._thread.start()

    @classmethod
    def for_process_group(cls, rank: int, world_size: int, timeout_s: float) -> "RankWatchdog":
        store = None
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                store = dist.distributed_c10d._get_default_store()
        return cls(rank, world_size, timeout_s, store)

    def beat(self, step: int) -> None:
        self.step, self.last_beat = step, time.monotonic()

    def close(self) -> None:
        self._stop.set()

    def _key(self, rank: int) -> str:
        return f"{PREFIX}{rank}"

    def _watch(self) -> None:
        stall_after = self.timeout_s * 0.5
        gather_for = self.timeout_s * 0.3
        posted_at_beat = None
        while not self._stop.wait(min(2.0, max(0.2, self.timeout_s / 20))):
            if posted_at_beat is not None and posted_at_beat != self.last_beat:
                # progress again (it was a slow rank, not a dead one): withdraw the note
                posted_at_beat = None
                try:
                    self.store.delete_key(self._key(self.rank))
                except Exception:  # noqa: BLE001
                    pass
            if time.monotonic() - self.last_beat < stall_after or posted_at_beat == self.last_beat:
                continue
            posted_at_beat = self.last_beat
            try:
                self.store.set(self._key(self.rank), f"step {self.step} on {socket.gethostname()}")
                deadline = time.monotonic() + gather_for
                silent = list(range(self.world_size))
                while silent and time.monotonic() < deadline and not self._stop.is_set():
                    silent = [r for r in range(self.world_size) if not self.store.check([self._key(r)])]
                    time.sleep(0.5)
            except Exception as exc:  # noqa: BLE001 - the store itself is gone: say so, do not crash
                self.report = f"rank {self.rank}: no progress for {stall_after:.0f} s at step {self.step}, and the " \
                              f"rendezvous store does not answer ({type(exc).__name__}): the launcher or node 0 is gone"
            else:
                waited = time.monotonic() - self.last_beat
                if silent:
                    self.report = (f"rank(s) {', '.join(map(str, silent))} stopped answering: rank {self.rank} "
                                   f"waited {waited:.0f} s at step {self.step} and those ranks never reported "
                                   f"(train.dist_timeout_s={self.timeout_s:g})")
                else:
                    self.report = (f"every rank is alive but stuck for {waited:.0f} s near step {self.step}: "
                                   "the ranks disagree about which collective comes next")
            print(f"watchdog: {self.report}", file=sys.stderr, flush=True)
