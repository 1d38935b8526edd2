"""Under `accelerate launch` (2 CPU processes): each rank reads its TrainStream and all-reduces
once per batch, as DDP's gradient sync would, so a rank with fewer batches would hang the other.

    python -m accelerate.commands.launch --config_file launch/cpu-2proc.yaml tests/_corrupt_ranks.py SRC skip 600
"""

import itertools
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from dali_dist.cli_util import exits_cleanly
from dali_dist.data import TrainStream


@exits_cleanly
def main(source: str, policy: str, timeout_s: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=float(timeout_s)))
    rank, world = dist.get_rank(), dist.get_world_size()
    s = TrainStream(source, batch_size=8, seed=0, rank=rank, world_size=world, num_workers=1, on_corrupt=policy)
    n = 0
    for x, _ in itertools.islice(s.batches(), 2 * s.batches_per_epoch):
        t = torch.tensor([float(len(x))])
        dist.all_reduce(t)
        assert t.item() == 8 * world
        n += 1
    dist.barrier()
    print(f"rank {rank}: {n} batches, corrupt_skipped {s.corrupt_skipped}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
