"""metrics/ranks.py in one process: the local device, contiguous shares that cover the items
exactly once in rank order, and collectives that are identities for one rank. (Gathering
across real processes: tests/integration/test_evaluate_multiprocess.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_dist.metrics.ranks import Ranks


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_one_process_is_rank_zero_on_the_asked_device():
    r = Ranks("cpu")
    assert (r.rank, r.world, r.is_main, r.device) == (0, 1, True, torch.device("cpu"))
    assert Ranks().device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_world_size_one_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Ranks("cpu").world == 1


def _as_rank(rank, world):
    r = Ranks("cpu")
    r.rank, r.world = rank, world
    return r


@pytest.mark.parametrize("n", [0, 1, 5, 10, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_cover_every_item_once_in_rank_order(n, world):
    shares = [_as_rank(r, world).share(n) for r in range(world)]
    assert [i for s in shares for i in s] == list(range(n))  # concatenated in rank order: 0..n-1
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [r.is_main for r in (_as_rank(k, world) for k in range(world))] == [True] + [False] * (world - 1)


def test_single_process_collectives_are_identities():
    r = Ranks("cpu")
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert r.gather_rows(rows) is rows
    obj = {"a": [1, 2]}
    assert r.broadcast(obj) is obj
    r.barrier()  # no process group: returns at once


def test_close_tears_down_the_process_group_of_several_ranks_only(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        Ranks("cpu").close()  # one process: a group someone else set up is left alone
        assert dist.is_initialized()
        _as_rank(0, 2).close()  # as a rank of two: its own group, torn down
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
