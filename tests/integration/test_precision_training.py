"""Per-phase loss scaling and non-finite skips inside the trainer: skipped and counted, K in a
row stop the run, last checkpoint intact; fp16/bf16 training on a GPU (precision.py alone:
tests/unit/dali_dist/test_precision.py)."""

import json

import pytest
import torch

from dali_dist.checkpoint import complete_checkpoints, load_train_state
from dali_dist.errors import TrainingDiverged
from dali_dist.precision import FP16_INIT_SCALE
from dali_dist.train import DeviceBatches, train


def _poison(monkeypatch, bad_steps):
    """Real batches of the given (0-based) iterations are NaN: D's loss and gradients break."""
    original = DeviceBatches.start

    def start(self, consumed):
        for i, x in enumerate(original(self, consumed), start=consumed):
            yield torch.full_like(x, float("nan")) if i in bad_steps else x

    monkeypatch.setattr(DeviceBatches, "start", start)


@pytest.mark.timeout(120)
def test_trainer_skips_and_counts_non_finite_steps_and_keeps_going(tmp_path, tiny_grid_cfg, monkeypatch):
    _poison(monkeypatch, {3, 4, 12})
    assert train(tiny_grid_cfg("train.steps=20"), tmp_path) == 0
    last = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert last["skipped_d_total"] == 3 and last["skipped_ge_total"] == 0
    state = load_train_state(tmp_path / "checkpoints" / "step-20")
    assert state.phases["d"]["skipped"] == 3 and state.world_size == 1
    from safetensors.torch import load_file
    for name in ("G", "D", "E"):
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / f"checkpoints/step-20/{name}.safetensors").values())


@pytest.mark.timeout(120)
def test_k_non_finite_iterations_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, tiny_grid_cfg, monkeypatch):
    _poison(monkeypatch, set(range(12, 100)))
    with pytest.raises(TrainingDiverged, match="4 iterations in a row.*by step 16.*step-10"):
        train(tiny_grid_cfg("train.steps=40", "train.max_nonfinite=4"), tmp_path)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [10]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    assert TrainingDiverged.exit_code == 1  # a failure, not bad input; Slurm does not requeue it


def test_checkpoint_every_kimg(tmp_path, tiny_grid_cfg):
    # batch 64: 0.2 kimg = 200 images, crossed at steps 4 (256), 7 (448), 10 (640), ...
    assert train(tiny_grid_cfg("train.steps=11", "train.checkpoint_kimg=0.2", "train.keep_checkpoints=10"), tmp_path) == 0
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 7, 10, 11]


def test_fp16_needs_a_gpu_and_deepspeed_refuses_fp16(tiny_grid_cfg, tmp_path):
    from dali_dist.errors import UserError

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
            train(tiny_grid_cfg("train.steps=2", "train.mixed_precision=fp16"), tmp_path)
    with pytest.raises(UserError, match="bf16 or fp32 only"):
        tiny_grid_cfg("train.strategy=zero2", "train.mixed_precision=fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision_", ["fp16", "bf16"])
def test_mixed_precision_on_gpu_trains_and_counts(tmp_path, tiny_grid_cfg, precision_):
    assert train(tiny_grid_cfg("train.steps=30", f"train.mixed_precision={precision_}"), tmp_path) == 0
    last = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert last["skipped_ge_total"] <= 16 and last["skipped_d_total"] <= 16  # at most the fp16 back-offs
    if precision_ == "fp16":
        assert 1.0 <= last["loss_scale_d"] <= FP16_INIT_SCALE
