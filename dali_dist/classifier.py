"""The project's classifier for Inception-style metrics on MNIST-like (1-channel) sets.

The paper scores MNIST with a pre-trained classifier (Table 1, after Li et al. 2017) rather
than ImageNet Inception; this module trains one on the training split of the shards and
reports its test accuracy. Its logits give ``inception_score`` and its penultimate features
give ``fid_classifier`` (never reported as ``fid``).

    dali-dist train-classifier --data data/fmnist                 # -> data/fmnist/classifier/classifier-28px.safetensors
    dali-dist train-classifier --data data/fmnist --out clf.safetensors --epochs 5
    python -m dali_dist.classifier --data data/fmnist             # the same

The file is safetensors with the architecture, data provenance (manifest sha256) and test
accuracy in its metadata. ``dali-dist evaluate --metrics is`` uses ``--classifier PATH`` or the
default path beside the shards, training it there on first use.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
import typer
from torch import nn

from .cli_util import exits_cleanly
from .errors import UserError

FORMAT = "dali-dist-classifier"


class SmallCNN(nn.Module):
    """Two conv blocks, a 128-unit feature layer (the ``fid_classifier`` features), logits."""

    def __init__(self, channels: int = 1, resolution: int = 28, num_classes: int = 10,
                 widths: tuple[int, int] = (32, 64), feature_dim: int = 128):
        super().__init__()
        c1, c2 = widths
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, c1, 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2),
        )
        side = resolution // 4
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, feature_dim), nn.ReLU(True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(self.trunk(x))
        logits = self.head(self.dropout(f))
        return (f, logits) if return_features else logits


def default_classifier_path(source) -> Path:
    """``<shards>/classifier/classifier-<res>px.safetensors`` beside local shards."""
    from .data import describe

    info = describe(source)
    base = _cache_root(info, "classifier")
    return base / f"classifier-{info.resolution}px.safetensors"


def _cache_root(info, what: str) -> Path:
    """A folder beside the shards (or a user cache for remote/read-only shards)."""
    if info.root and os.access(info.root, os.W_OK):
        return Path(info.root) / what
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dali-dist"
    return cache / what / (info.manifest_sha256 or "unknown")[:16]


def _load_split(source, split: str, batch_size: int = 1000):
    from .data import eval_batches

    xs, ys = [], []
    for x, y, _ in eval_batches(source, split=split, batch_size=batch_size, as_uint8=True):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise UserError(f"{source}: split {split!r} is empty")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def accuracy(net: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, device, batch_size: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x_u8), batch_size):
        xb = x_u8[i:i + batch_size].to(device).float() / 127.5 - 1
        correct += (net(xb).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / len(x_u8)


def train_classifier(source, out: Path, *, epochs: int = 3, seed: int = 0, batch_size: int = 128,
                     lr: float = 1e-3, device: str = "cpu", progress: bool = True) -> dict:
    """Train on ``source``'s train split, test on its test split, save to ``out`` (atomically)."""
    from tqdm import tqdm

    from .data import describe

    info = describe(source)
    if info.kind != "image":
        raise UserError(f"{source}: a classifier needs image shards, not {info.kind}")
    for split in ("train", "test"):
        if split not in info.splits:
            raise UserError(f"{source}: no {split!r} split (has {', '.join(sorted(info.splits))})")
    x, y = _load_split(source, "train")
    if (y < 0).any():
        raise UserError(f"{source}: the train split has unlabelled samples; a classifier needs class labels")
    num_classes = int(info.num_classes or int(y.max()) + 1)
    x_test, y_test = _load_split(source, "test")

    torch.manual_seed(seed)
    net = SmallCNN(info.channels, info.resolution, num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    t0 = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc="train-classifier", disable=not progress, dynamic_ncols=True)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb = x[idx].to(device).float() / 127.5 - 1
            loss = nn.functional.cross_entropy(net(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    test_acc = accuracy(net, x_test, y_test, device)
    meta = {
        "format": FORMAT, "version": "1", "dataset": info.dataset, "resolution": str(info.resolution),
        "channels": str(info.channels), "num_classes": str(num_classes), "widths": "[32, 64]",
        "feature_dim": "128", "test_accuracy": f"{test_acc:.6f}", "train_count": str(len(x)),
        "test_count": str(len(x_test)), "manifest_sha256": info.manifest_sha256 or "",
        "epochs": str(epochs), "seed": str(seed), "train_seconds": f"{time.perf_counter() - t0:.1f}",
    }
    from safetensors.torch import save_file

    from .atomic import atomic_path
    from .outputs import MARK, mark

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp),
                  metadata={**meta, MARK: mark("train-classifier")})
    return {"path": str(out), "test_accuracy": test_acc, "dataset": info.dataset,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def load_classifier(path: Path) -> tuple[nn.Module, dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no classifier file (train one: dali-dist train-classifier --data DIR --out {path})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any failure means a bad file
        raise UserError(f"{path}: unreadable classifier ({exc})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a dali-dist classifier (no {FORMAT!r} metadata)")
    net = SmallCNN(int(meta["channels"]), int(meta["resolution"]), int(meta["num_classes"]),
                   tuple(json.loads(meta["widths"])), int(meta["feature_dim"]))
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the classifier ({str(exc).splitlines()[0]})") from None
    return net.eval().requires_grad_(False), meta


def train_classifier_command(
    data: Path = typer.Option(..., "--data", help="Shard directory made by `dali-dist prep` (with labels)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Default: <data>/classifier/classifier-<res>px.safetensors."),
    epochs: int = typer.Option(3, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    device: str = typer.Option("cuda" if torch.cuda.is_available() else "cpu", "--device"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out that dali-dist did not write."),
) -> None:
    """Train the classifier used for the Inception score and fid_classifier on MNIST-like sets."""
    from .outputs import check_file

    out = check_file(out or default_classifier_path(data), overwrite=overwrite)
    result = train_classifier(data, out, epochs=epochs, seed=seed, batch_size=batch_size, device=device)
    typer.echo(json.dumps(result, indent=2))


def main() -> None:
    exits_cleanly(typer.run)(train_classifier_command)


if __name__ == "__main__":
    main()
