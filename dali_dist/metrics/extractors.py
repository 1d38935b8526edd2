"""Feature extractors for FID and the Inception score: one pluggable interface, so the metric
code is identical for the real Inception network, the project's classifier and the small
networks the tests build.

An extractor turns uint8 images ``(N, H, W, C)`` into ``(features, logits)``:

    x = ext.preprocess(u8)          # CPU work (clean-fid's resizer for Inception)
    feats, logits = ext(x.to(dev))  # float32 (N, D) and (N, K) (logits may be None)

``ext.id`` names the network and its weights (sha256 of the file) and keys cached reference
statistics, so statistics of one network are never used with another.

The Inception network (clean-fid ``mode="clean"``): the TorchScript file
``inception-2015-12-05.pt`` (the one clean-fid and StyleGAN use) from a local path; images
are repeated to 3 channels if grey, resized to 299x299 by ``cleanfid.resize.build_resizer
("clean")`` (PIL bicubic on float32 channels), and normalised as
``cleanfid.inception_torchscript.InceptionV3W`` does (``(x - 128) / 128`` into
``base.layers``). Logits for the Inception score are ``features @ base.output.weight.T``:
the 1008-way ImageNet head without its bias, as the original Inception-score code reads
the softmax weights (and StyleGAN's ``no_output_bias=True``).

Why not ``InceptionV3W`` itself: it hard-codes 2048 features (``.view((bs, 2048))``), so a
test network would need 2048 features, and every FID of 2048-d features costs a 2048x2048
``scipy.linalg.sqrtm`` (~33 s on a 2-core machine). The forward below is InceptionV3W's with
``flatten(1)``; tests check it returns exactly InceptionV3W's features on a 2048-d network.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch

from ..errors import UserError
from ..manifest import sha256_file

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_ENV = "DALI_DIST_INCEPTION_WEIGHTS"


class FeatureExtractor(Protocol):
    id: str
    """Network and weights (e.g. ``inception-clean-<sha256[:16]>``); keys reference statistics."""
    has_logits: bool

    def preprocess(self, images: np.ndarray) -> torch.Tensor: ...
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...
    def to(self, device) -> "FeatureExtractor": ...


def cleanfid_modules():
    """clean-fid's protocol pieces; a one-line error when the ``eval`` extra is missing."""
    try:
        from cleanfid.fid import frechet_distance
        from cleanfid.resize import build_resizer
    except Exception as exc:  # ImportError, or torchvision failing to load beside this torch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"FID and Inception score need clean-fid with a torchvision that loads beside torch "
            f"{torch.__version__} ({type(exc).__name__}: {first}); install the eval extra: "
            f"pip install 'dali-dist[eval]' 'torch=={torch.__version__.split('+')[0]}'"
        ) from None
    return frechet_distance, build_resizer


# ------------------------------------------------------------------------------------------
# Inception (clean-fid's TorchScript network and calling convention)

def inception_search_paths() -> list[Path]:
    """Where the weights are looked for when no --inception-weights is given."""
    paths = []
    if os.environ.get(INCEPTION_ENV):
        paths.append(Path(os.environ[INCEPTION_ENV]))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    paths.append(cache / "dali-dist" / INCEPTION_FILE)
    paths.append(Path(tempfile.gettempdir()) / INCEPTION_FILE)  # where clean-fid itself caches it
    return paths


def resolve_inception_weights(path: Optional[Path]) -> Path:
    if path is not None:
        path = Path(path)
        if path.is_dir():
            path = path / INCEPTION_FILE
        if not path.is_file():
            raise UserError(f"--inception-weights {path}: no such file; download {INCEPTION_URL} on a machine "
                            f"with network access and copy it there")
        return path
    for p in inception_search_paths():
        if p.is_file():
            return p
    where = " or ".join(str(p) for p in inception_search_paths()[:2])
    raise UserError(
        f"Inception weights not found: download {INCEPTION_URL} (about 100 MB) on a machine with network "
        f"access, then pass --inception-weights PATH, set {INCEPTION_ENV}, or copy it to {where}"
    )


class TorchScriptInception:
    """clean-fid's Inception convention for any TorchScript file with ``layers`` (and an
    optional ``output`` linear head): 299x299 float inputs in [0, 255]."""

    has_logits: bool

    def __init__(self, path: Path, device="cpu", resize_threads: Optional[int] = None):
        _, build_resizer = cleanfid_modules()
        path = Path(path)
        try:
            self.base = torch.jit.load(str(path), map_location="cpu").eval()
            self.layers = self.base.layers
        except Exception as exc:  # noqa: BLE001 - any failure means a bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{path}: not clean-fid's TorchScript Inception network ({first[:200]})") from None
        head = getattr(self.base, "output", None)
        self.head_weight = head.weight.detach().float() if head is not None and hasattr(head, "weight") else None
        self.has_logits = self.head_weight is not None
        self.id = f"inception-clean-{sha256_file(path)[:16]}"
        self.path = path
        self.resize = build_resizer("clean")
        self.threads = resize_threads or max(1, min(8, os.cpu_count() or 1))
        self.device = torch.device("cpu")
        self.to(device)

    def to(self, device):
        self.device = torch.device(device)
        self.base = self.base.to(self.device)
        self.layers = self.base.layers
        if self.head_weight is not None:
            self.head_weight = self.head_weight.to(self.device)
        return self

    def _one(self, img: np.ndarray) -> np.ndarray:
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)  # grey -> RGB, as PIL's convert("RGB") does
        return self.resize(img)  # float32 (299, 299, 3) in [0, 255]

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) -> float32 (N, 3, 299, 299) in [0, 255] (clean-fid's resizer;
        PIL releases the GIL, so threads resize in parallel)."""
        if len(images) == 0:
            return torch.zeros(0, 3, 299, 299)
        with ThreadPoolExecutor(self.threads) as pool:
            out = list(pool.map(self._one, images))
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        # InceptionV3W.forward with resize_inside=False, flatten instead of view((bs, 2048))
        assert x.shape[2] == 299 and x.shape[3] == 299, "resize to 299x299 first (preprocess)"
        feats = self.layers.forward((x - 128) / 128).flatten(1).float()
        logits = feats @ self.head_weight.T if self.head_weight is not None else None
        return feats, logits


# ------------------------------------------------------------------------------------------
# The project's classifier (MNIST-like sets; dali_dist/classifier.py)

class ClassifierExtractor:
    """Penultimate features and class logits of the project's classifier, at the data's own
    resolution (no resizing)."""

    has_logits = True

    def __init__(self, path: Path, device="cpu"):
        from ..classifier import load_classifier

        self.net, self.meta = load_classifier(path)
        self.id = f"classifier-{sha256_file(Path(path))[:16]}"
        self.path = Path(path)
        self.to(device)

    def to(self, device):
        self.device = torch.device(device)
        self.net = self.net.to(self.device).eval()
        return self

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0  # the [-1, 1] scaling of dali_dist.data

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        feats, logits = self.net(x, return_features=True)
        return feats.float(), logits.float()
