"""The FID / Inception-score pipeline against clean-fid itself, the reference-statistics
cache, the project's classifier path, and bad inputs. Feature extractors are small random
networks saved as TorchScript in InceptionV3W's calling convention and loaded through the
same code path as the real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dali_dist.checkpoint import load_export
from dali_dist.errors import UserError
from dali_dist.evaluate import EvalOptions, evaluate_checkpoint

from tests._eval_kit import (cleanfid_or_skip, image_cfg, make_checkpoint, make_shards,
                             save_tiny_inception)


pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    shards, data = make_shards(root)
    ckpt = make_checkpoint(root / "run", image_cfg(shards))
    weights = save_tiny_inception(root / "w" / "inception-2015-12-05.pt")
    return {"root": root, "shards": shards, "data": data, "ckpt": ckpt, "weights": weights}


def _opts(kit, **kw):
    return EvalOptions(inception_weights=kit["weights"], progress=False, **kw)


def test_fid_equals_clean_fids_compute_fid_on_png_folders(kit, tmp_path):
    cleanfid_or_skip()
    from cleanfid import fid as cfid

    from dali_dist.data import eval_batches
    from dali_dist.generate import generate, write_samples
    from dali_dist.metrics.extractors import TorchScriptInception

    n = 150
    ours = evaluate_checkpoint(kit["ckpt"], ["fid"], opts=_opts(kit, num_samples=n))
    # the same images as PNG folders: generated (z seeded per sample, uint8) and the train split
    exp = load_export(kit["ckpt"])
    write_samples(generate(exp, n, seed=exp.cfg.eval.seed), tmp_path / "gen", is_2d=False)
    (tmp_path / "gen" / "grid.png").unlink()
    from PIL import Image

    (tmp_path / "ref").mkdir()
    i = 0
    for x, _, _ in eval_batches(kit["shards"], split="train", batch_size=100, as_uint8=True):
        for img in x[:, 0].numpy():
            Image.fromarray(img).save(tmp_path / "ref" / f"{i:06d}.png")
            i += 1
    ext = TorchScriptInception(kit["weights"])
    theirs = cfid.compute_fid(str(tmp_path / "gen"), str(tmp_path / "ref"), mode="clean",
                              custom_feat_extractor=lambda x: ext(x)[0], device=torch.device("cpu"),
                              num_workers=0, batch_size=64, use_dataparallel=False, verbose=False)
    assert ours["fid"] == pytest.approx(theirs, rel=1e-4)
    assert ours["fid"] > 0


def test_extractor_matches_clean_fids_inceptionv3w(kit, tmp_path):
    """Our loader's features equal InceptionV3W's own forward (a 2048-d net, as it requires)."""
    cleanfid_or_skip()
    from cleanfid.inception_torchscript import InceptionV3W

    from dali_dist.metrics.extractors import TorchScriptInception

    path = save_tiny_inception(tmp_path / "inception-2015-12-05.pt", dim=2048, seed=1)
    ours = TorchScriptInception(path)
    w = InceptionV3W(str(tmp_path), download=False)
    u8 = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    x = ours.preprocess(u8)
    assert x.shape == (3, 3, 299, 299) and x.dtype == torch.float32
    feats, logits = ours(x)
    torch.testing.assert_close(feats, w(x), rtol=0, atol=0)
    torch.testing.assert_close(logits, feats @ w.base.output.weight.T)


def test_reference_stats_are_cached_beside_the_shards_keyed_and_reused(kit, tmp_path, monkeypatch):
    cleanfid_or_skip()
    import dali_dist.metrics.features as F

    a = evaluate_checkpoint(kit["ckpt"], ["fid"], opts=_opts(kit, num_samples=60))
    files = sorted((kit["shards"] / "fid_stats").glob("*.npz"))
    from dali_dist.metrics.extractors import TorchScriptInception

    ext_id = TorchScriptInception(kit["weights"]).id
    assert [f.name for f in files] == [f"mnist-train-28px-{ext_id}.npz"]
    with np.load(files[0]) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["count"] == 230 and meta["split"] == "train" and meta["extractor"] == ext_id

    def refuse(*a, **k):
        raise AssertionError("reference features recomputed despite the cache")

    monkeypatch.setattr(F, "dataset_features", refuse)
    b = evaluate_checkpoint(kit["ckpt"], ["fid"], opts=_opts(kit, num_samples=60))
    assert b["fid"] == a["fid"]
    monkeypatch.undo()
    # another extractor gets its own entry; the first one is untouched
    other = save_tiny_inception(tmp_path / "other.pt", seed=7)
    evaluate_checkpoint(kit["ckpt"], ["fid"], opts=EvalOptions(inception_weights=other, num_samples=60, progress=False))
    assert len(list((kit["shards"] / "fid_stats").glob("*.npz"))) == 2
    # a cache made from other shards (manifest differs) is recomputed, not reused
    with np.load(files[0]) as z:
        mu, sigma = z["mu"], z["sigma"]
    np.savez(files[0], mu=mu + 1, sigma=sigma, meta=np.array(json.dumps({**meta, "manifest_sha256": "x"})))
    c = evaluate_checkpoint(kit["ckpt"], ["fid"], opts=_opts(kit, num_samples=60))
    assert c["fid"] == pytest.approx(a["fid"], rel=1e-9)


def test_is_uses_the_classifier_for_grey_and_inception_logits_for_rgb(kit, monkeypatch):
    cleanfid_or_skip()
    from dali_dist.classifier import default_classifier_path, train_classifier

    path = default_classifier_path(kit["shards"])
    r = train_classifier(kit["shards"], path, epochs=1, batch_size=64, progress=False)
    assert 0 <= r["test_accuracy"] <= 1 and path.is_file()
    m = evaluate_checkpoint(kit["ckpt"], ["is", "fid"], opts=_opts(kit, num_samples=100))
    assert {"inception_score", "inception_score_std", "fid_classifier", "fid"} <= set(m)
    # the same score from the classifier's logits on the same 100 samples, computed here
    from dali_dist.classifier import load_classifier
    from dali_dist.generate import generate
    from dali_dist.metrics.inception import inception_score

    exp = load_export(kit["ckpt"])
    u8 = ((generate(exp, 100, seed=exp.cfg.eval.seed).clamp(-1, 1) + 1) * 127.5).round()  # as saved as uint8
    net, _ = load_classifier(path)
    with torch.no_grad():
        logits = net(u8 / 127.5 - 1.0, return_features=True)[1].double().numpy()
    is_mean, is_std = inception_score(logits)
    assert m["inception_score"] == pytest.approx(is_mean, rel=1e-5)
    assert m["inception_score_std"] == pytest.approx(is_std, rel=1e-4, abs=1e-7)
    assert m["fid_classifier"] > 0
    assert any(p.name.startswith("mnist-train-28px-classifier-") for p in (kit["shards"] / "fid_stats").iterdir())
    # the RGB path (Inception logits, no fid_classifier), forced onto this grey checkpoint
    from dali_dist.evaluate import EvalJob

    monkeypatch.setattr(EvalJob, "is_extractor", lambda self: "inception")
    rgb = evaluate_checkpoint(kit["ckpt"], ["is"], opts=_opts(kit, num_samples=100))
    assert "fid_classifier" not in rgb and 1 <= rgb["inception_score"] <= 10
    assert rgb["inception_score"] != m["inception_score"]


def _mmd2_unbiased_cubic(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / dim + 1)^3, written out term by term."""
    k = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda a: (a.sum() - np.trace(a)) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_kid_is_clean_fids_kernel_distance_and_repeatable():
    """With as many rows as one subset holds, every clean-fid subset is a permutation of all
    rows, so KID must equal the full unbiased MMD^2 computed independently."""
    cleanfid_or_skip()
    from dali_dist.metrics.fid import kernel_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(0.5, 1.0, size=(300, 8))
    assert kernel_distance(a, b, seed=1) == pytest.approx(_mmd2_unbiased_cubic(a, b), rel=1e-9)
    big_a, big_b = rng.normal(size=(1500, 8)), rng.normal(size=(1200, 8))
    before = np.random.get_state()[1].copy()
    v1, v2 = kernel_distance(big_a, big_b, seed=7), kernel_distance(big_a, big_b, seed=7)
    assert v1 == v2 and abs(v1) < kernel_distance(big_a, big_b + 1.0, seed=7)
    assert (np.random.get_state()[1] == before).all()  # the global generator is left as it was
    with pytest.raises(UserError, match="one size"):
        kernel_distance(a, b[:, :4], seed=0)


def test_kid_metric_in_the_classifier_space(kit):
    cleanfid_or_skip()
    from dali_dist.classifier import default_classifier_path, train_classifier

    path = default_classifier_path(kit["shards"])
    if not path.is_file():
        train_classifier(kit["shards"], path, epochs=1, batch_size=64, progress=False)
    m = evaluate_checkpoint(kit["ckpt"], ["kid"], opts=_opts(kit, num_samples=100))
    assert set(m) >= {"kid_classifier"} and m["kid_classifier"] > 0
    cached = [p.name for p in (kit["shards"] / "fid_stats").iterdir() if p.name.endswith("-features.npz")]
    assert cached and cached[0].startswith("mnist-train-28px-classifier-")
    again = evaluate_checkpoint(kit["ckpt"], ["kid"], opts=_opts(kit, num_samples=100))
    assert again["kid_classifier"] == m["kid_classifier"]


def test_bad_inputs_are_one_line_user_errors(kit, tmp_path, monkeypatch):
    cleanfid_or_skip()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DALI_DIST_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="Inception weights not found: download https://.*inception-2015-12-05.pt"):
        evaluate_checkpoint(kit["ckpt"], ["fid"], opts=EvalOptions(num_samples=20, progress=False))
    with pytest.raises(UserError, match="--inception-weights .*nope.pt: no such file"):
        evaluate_checkpoint(kit["ckpt"], ["fid"], opts=EvalOptions(inception_weights=tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(UserError, match="not clean-fid's TorchScript Inception"):
        evaluate_checkpoint(kit["ckpt"], ["fid"], opts=EvalOptions(inception_weights=tmp_path / "junk.pt"))
    # shards of another shape: refused before any work
    other, _ = make_shards(tmp_path / "d32", n_train=20, n_test=10, resolution=32)
    with pytest.raises(UserError, match="trained on mnist at 28px"):
        evaluate_checkpoint(kit["ckpt"], ["fid"], opts=_opts(kit, data=str(other)))
