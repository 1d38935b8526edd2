"""The inference commands through the CLI (encode, reconstruct, interpolate) and the probe and
k-NN metrics through the evaluation job, on prepared shards; the API itself is
tests/unit/dali_dist/test_inference.py."""

import pytest

from tests.unit.dali_dist.test_inference import export


@pytest.mark.timeout(180)
def test_cli_encode_reconstruct_interpolate_on_shards(tmp_path):
    import numpy as np

    from tests._archives import make_mnist
    from tests.conftest import run_cli

    make_mnist(tmp_path / "raw", n_train=20, n_test=9)
    assert run_cli("prep", "mnist", "--source", str(tmp_path / "raw"), "--out", str(tmp_path / "sh"), "--quiet").returncode == 0
    ck = export(tmp_path)
    r = run_cli("encode", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "z.npz"), "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "z.npz")
    assert z["codes"].shape == (9, 6) and z["sigmas"].shape == (9, 6) and z["labels"].shape == (9,) and len(z["keys"]) == 9
    r = run_cli("reconstruct", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--num", "5", "--out", str(tmp_path / "rec"))
    assert r.returncode == 0, r.stderr
    rec = np.load(tmp_path / "rec" / "reconstructions.npz")
    assert rec["originals"].shape == rec["reconstructions"].shape == (5, 28, 28, 1)
    assert (tmp_path / "rec" / "grid.png").is_file()
    r = run_cli("interpolate", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--pairs", "2", "--steps", "3", "--out", str(tmp_path / "int"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "int" / "interpolations.npz")["paths"].shape == (2, 3, 28, 28, 1)
    r = run_cli("encode", "--checkpoint", str(export(tmp_path, "gan")), "--data", str(tmp_path / "sh"), "--out", str(tmp_path / "g.npz"))
    assert r.returncode == 2 and "has no encoder" in r.stderr


@pytest.mark.timeout(180)
def test_probe_and_knn_metrics_through_the_evaluation_job(tmp_path):
    import json

    import numpy as np

    from dali_dist.metrics.latent import knn_accuracy, linear_probe_accuracy
    from tests._archives import make_mnist
    from tests.conftest import run_cli

    make_mnist(tmp_path / "raw", n_train=30, n_test=12)
    assert run_cli("prep", "mnist", "--source", str(tmp_path / "raw"), "--out", str(tmp_path / "sh"), "--quiet").returncode == 0
    ck = export(tmp_path)
    r = run_cli("evaluate", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--metrics", "probe,knn",
                "--out", str(tmp_path / "m.json"), "--no-track")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    # the same numbers from codes computed independently through the inference API
    for split in ("train", "test"):
        assert run_cli("encode", "--checkpoint", str(ck), "--data", str(tmp_path / "sh"), "--split", split,
                       "--out", str(tmp_path / f"{split}.npz")).returncode == 0
    tr, te = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    assert m["probe_accuracy"] == pytest.approx(linear_probe_accuracy(tr["codes"], tr["labels"], te["codes"], te["labels"]))
    assert m["knn_accuracy"] == pytest.approx(knn_accuracy(tr["codes"], tr["labels"], te["codes"], te["labels"], k=5))
    r = run_cli("evaluate", "--checkpoint", str(export(tmp_path, "gan")), "--data", str(tmp_path / "sh"), "--metrics", "probe", "--no-track")
    assert r.returncode == 2 and "needs an encoder" in r.stderr
