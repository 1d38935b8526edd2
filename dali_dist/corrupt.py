"""What the loader does with corrupt data: the ``data.on_corrupt`` policy.

``"error"``: a missing, truncated or corrupt shard, a shard whose size, sha256 or sample count
differs from the manifest, or an undecodable sample raises ``UserError`` (one line naming the
file and the problem).

``"skip"``: shards found bad before training starts are left out of the split; samples (or
shard positions) found bad while reading are replaced by valid samples of the same rank's
region, chosen from the seed. Positions never shift, so every rank still yields exactly
``batches_per_epoch`` batches and resumes exactly. One warning line per bad file; the count
of skipped samples reaches the main process alongside the batches (see ``CorruptLog``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .errors import UserError

POLICIES = ("error", "skip")


def check_policy(on_corrupt: str) -> str:
    if on_corrupt not in POLICIES:
        raise UserError(f"data: on_corrupt must be one of {', '.join(POLICIES)}, got {on_corrupt!r}")
    return on_corrupt


@dataclass(frozen=True)
class Bad:
    """Stands in for a record that could not be read or decoded (policy "skip")."""

    url: str
    ident: str  # the sample key, or "#<position in the shard>" when the key is unknown
    msg: str

    def report(self) -> tuple[str, str, str]:
        # plain tuples: they cross the DataLoader's pipes and pin_memory untouched
        return (self.url, self.ident, self.msg)


class CorruptLog:
    """Main-process tally: one warning line per bad file, each bad sample counted once."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: set = set()
        self._files: set = set()

    def add(self, url: str, ident: str, msg: str, n: int = 1) -> None:
        if (url, ident) in self._seen:
            return
        self._seen.add((url, ident))
        self.count += n
        if url not in self._files:
            self._files.add(url)
            print(f"warning: {msg} (data.on_corrupt=skip: skipped)", file=sys.stderr, flush=True)

    def add_reports(self, reports) -> None:
        for url, ident, msg in reports:
            self.add(url, ident, msg)
