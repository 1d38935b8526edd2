"""Real-data batches on the training device, from the shards or the 2D grid mixture."""

from __future__ import annotations

import torch

from .config import Config
from .errors import UserError
from .mixture import GridStream


class DeviceBatches:
    """Real-data batches on the training device, as float in [-1, 1]; counts what it took."""

    def __init__(self, cfg: Config, rank: int, world_size: int, batch_size: int, device: torch.device):
        if cfg.data.source is None:
            self.stream = GridStream(batch_size=batch_size, seed=cfg.train.seed, rank=rank, world_size=world_size)
            self.info = None
        else:
            from .data import TrainStream  # shard reading is imported only when shards are used

            self.stream = TrainStream(
                cfg.data.source, split="train", batch_size=batch_size, seed=cfg.train.seed,
                rank=rank, world_size=world_size, num_workers=cfg.data.num_workers,
                as_uint8=True, pin_memory=device.type == "cuda", on_corrupt=cfg.data.on_corrupt,
            )
            self.info = self.stream.info
            check_data_matches(cfg, self.info)
        self.device = device
        self.batches_per_epoch = self.stream.batches_per_epoch

    def start(self, consumed: int):
        from .data import to_float

        for x, _ in self.stream.batches(consumed):
            x = x.to(self.device, non_blocking=True)
            # uint8 crosses the worker pipes and the PCIe bus; convert on the device (docs/design.md, 'Shard encodings')
            yield to_float(x) if x.dtype == torch.uint8 else x


def check_data_matches(cfg: Config, info) -> None:
    """The shards must hold what the model is built for."""
    src = cfg.data.source
    if cfg.data.dataset == "grid2d":
        if info.kind != "points":
            raise UserError(f"{src}: holds {info.kind} data ({info.dataset}), but data.dataset=grid2d needs 2D points")
        return
    if info.kind != "image":
        raise UserError(f"{src}: holds 2D points, but data.dataset={cfg.data.dataset} needs images")
    if info.resolution != cfg.data.resolution or info.channels != cfg.data.channels:
        raise UserError(
            f"{src}: images are {info.resolution}px with {info.channels} channel(s), but the config says "
            f"data.resolution={cfg.data.resolution}, data.channels={cfg.data.channels}"
        )
