"""Bad input to `dali-dist prep` (in-process, through prep_app): one line `error: <file>:
<problem>`, exit code 2, no traceback, and nothing that looks like a finished shard directory
(the same through a separate process: tests/integration/test_prep_cli.py)."""

from __future__ import annotations

import io
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dali_dist.cli_util import exits_cleanly
from data_prep.cli import prep_app

from tests import _archives as A
from tests import _corrupt as C


pytestmark = pytest.mark.timeout(60)


def prep(capsys, *args) -> str:
    """Run `dali-dist prep ARGS` in-process; expect exit 2 and return the one stderr line."""
    with pytest.raises(SystemExit) as e:
        exits_cleanly(prep_app)([*map(str, args), *(["--quiet"] if args[0] != "verify" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    err = [line for line in err if not line.startswith("problem:")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def no_finished_output(out: Path):
    assert not (out / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ CIFAR-10


def test_cifar_missing(tmp_path, capsys):
    msg = prep(capsys, "cifar10", "--source", tmp_path / "nope.tar.gz", "--out", tmp_path / "out")
    assert "nope.tar.gz" in msg and "no such file" in msg


def test_cifar_truncated_archive(tmp_path, capsys):
    path = A.make_cifar(tmp_path / "dl", A.cifar_arrays(per_batch=50))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    msg = prep(capsys, "cifar10", "--source", path, "--out", tmp_path / "out")
    assert msg.startswith(f"error: {path}: truncated or corrupt archive (")
    no_finished_output(tmp_path / "out")


def test_cifar_wrong_format(tmp_path, capsys):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_text("this is not an archive\n" * 50)
    msg = prep(capsys, "cifar10", "--source", path, "--out", tmp_path / "out")
    assert str(path) in msg and "tar" in msg


def test_cifar_archive_without_batches(tmp_path, capsys):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ti = tarfile.TarInfo("something/else.txt")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
    msg = prep(capsys, "cifar10", "--source", path, "--out", tmp_path / "out")
    assert str(path) in msg and "data_batch_1" in msg


@pytest.mark.parametrize("name,kind", [("../evil.txt", "file"), ("/abs/evil.txt", "file"),
                                       ("cifar-10-batches-py/link", "sym"), ("cifar-10-batches-py/hard", "hard")])
def test_cifar_member_escaping(tmp_path, capsys, name, kind):
    ti = tarfile.TarInfo(name)
    data = b"x"
    if kind == "sym":
        ti.type, ti.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    elif kind == "hard":
        ti.type, ti.linkname, data = tarfile.LNKTYPE, "../../etc/passwd", None
    else:
        ti.size = 1
    path = A.make_cifar(tmp_path / "dl", A.cifar_arrays(per_batch=1, n_test=1), extra_members=[(ti, data)])
    msg = prep(capsys, "cifar10", "--source", path, "--out", tmp_path / "out")
    why = ("would escape the output folder" if kind == "file"
           else "is a link (refused: it could point outside the output folder)")
    assert msg == f"error: {path}: member '{name}' {why}"
    no_finished_output(tmp_path / "out")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/dali-dist-pwned",))


@pytest.mark.parametrize("payload", ["evil", "list", "shape"])
def test_cifar_bad_pickles(tmp_path, capsys, payload):
    folder = A.make_cifar(tmp_path / "dl", A.cifar_arrays(per_batch=2, n_test=2), as_archive=False)
    if payload == "evil":
        blob = pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2)
    elif payload == "list":
        blob = pickle.dumps([1, 2, 3], protocol=2)
    else:
        blob = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    (folder / "data_batch_3").write_bytes(blob)
    msg = prep(capsys, "cifar10", "--source", folder, "--out", tmp_path / "out")
    assert "data_batch_3" in msg
    assert not Path("/tmp/dali-dist-pwned").exists()


@pytest.mark.parametrize("labels, expect", [
    (["3", "4"], "found strings"),
    ([b"3", b"4"], "found bytes"),
    ([0.0, 1.5], "found floats"),
    ([float("nan"), 0], "found floats"),
    (np.array([0.5, 1.0]), "found floats"),
    ([True, False], "found booleans"),
    ([10 ** 30, 0], "found objects"),
    ([0, 10], "labels must be 0-9, found 0..10"),
    ([-1, 0], "labels must be 0-9, found -1..0"),
    ([0], "1 labels for 2 images"),
    ([0, 1, 2], "3 labels for 2 images"),
    ([[0], [1, 2]], "'labels' is not an array or a flat list"),
    (None, "no flat list of labels for 2 images"),
])
def test_cifar_bad_labels(tmp_path, capsys, labels, expect):
    folder = A.make_cifar(tmp_path / "dl", A.cifar_arrays(per_batch=2, n_test=2), as_archive=False)
    blob = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2)
    (folder / "data_batch_3").write_bytes(blob)
    msg = prep(capsys, "cifar10", "--source", folder, "--out", tmp_path / "out")
    assert "data_batch_3" in msg and expect in msg, msg
    no_finished_output(tmp_path / "out")


# ------------------------------------------------------------------------------------------ CelebA


def test_celeba_without_partition(tmp_path, capsys):
    src = A.make_celeba(tmp_path / "dl", A.celeba_images(2), as_zip=False, partition=False)
    msg = prep(capsys, "celeba", "--source", src, "--out", tmp_path / "out")
    assert str(src) in msg and "list_eval_partition.txt" in msg


def test_celeba_bad_partition_line(tmp_path, capsys):
    src = A.make_celeba(tmp_path / "dl", A.celeba_images(2))
    (tmp_path / "dl" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg seven\n")
    msg = prep(capsys, "celeba", "--source", src, "--out", tmp_path / "out")
    assert "list_eval_partition.txt" in msg and "line 2" in msg


def test_celeba_truncated_zip(tmp_path, capsys):
    src = A.make_celeba(tmp_path / "dl", A.celeba_images(3))
    src.write_bytes(src.read_bytes()[:-300])
    msg = prep(capsys, "celeba", "--source", src, "--out", tmp_path / "out")
    assert str(src) in msg and "zip" in msg


@pytest.mark.parametrize("name,link", [("../../evil.jpg", False), ("/evil.jpg", False), ("img_align_celeba/l.jpg", True)])
def test_celeba_zip_member_escaping(tmp_path, capsys, name, link):
    src = A.make_celeba(tmp_path / "dl", A.celeba_images(2))
    with zipfile.ZipFile(src, "a") as zf:
        zi = zipfile.ZipInfo(name)
        if link:
            zi.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(zi, b"/etc/passwd" if link else b"x")
    msg = prep(capsys, "celeba", "--source", src, "--out", tmp_path / "out")
    assert str(src) in msg and name in msg


# ------------------------------------------------------------------------------------------ MNIST


def test_mnist_missing_file(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl")
    (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out")
    assert "t10k-labels-idx1-ubyte" in msg


def test_mnist_wrong_magic(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl", gz=False)
    p = tmp_path / "dl" / "train-images-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1]) + p.read_bytes()[4:])  # a labels-like magic
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out")
    assert str(p) in msg and "magic" in msg


def test_mnist_labels_file_swapped(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl", gz=False)
    d = tmp_path / "dl"
    (d / "train-labels-idx1-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes())
    msg = prep(capsys, "mnist", "--source", d, "--out", tmp_path / "out")
    assert "train-labels-idx1-ubyte" in msg and "magic" in msg


def test_mnist_truncated_idx(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl", gz=False)
    p = tmp_path / "dl" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out")
    assert str(p) in msg and "truncated" in msg


def test_mnist_truncated_gzip(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl", gz=True, n_train=200)
    p = tmp_path / "dl" / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-500])
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out")
    assert str(p) in msg


def test_mnist_count_mismatch(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl", gz=False, n_train=6)
    (tmp_path / "dl" / "train-labels-idx1-ubyte").write_bytes(A.idx_bytes(np.zeros(5, np.uint8)))
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out")
    assert "train-labels-idx1-ubyte" in msg and "5 labels for 6 images" in msg


def test_bad_encoding_option(tmp_path, capsys):
    A.make_mnist(tmp_path / "dl")
    msg = prep(capsys, "mnist", "--source", tmp_path / "dl", "--out", tmp_path / "out", "--encoding", "jpeg")
    assert "--encoding" in msg


# ------------------------------------------------------------------------------------------ folder, verify


def test_folder_link_outside(tmp_path, capsys):
    root = tmp_path / "imgs"
    root.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "ok.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "outside.png")
    (root / "sneaky.png").symlink_to(tmp_path / "outside.png")
    msg = prep(capsys, "folder", "--source", root, "--out", tmp_path / "out")
    assert "sneaky.png" in msg and "outside" in msg


def test_folder_empty(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    msg = prep(capsys, "folder", "--source", tmp_path / "imgs", "--out", tmp_path / "out")
    assert "no images" in msg


def test_folder_corrupt_images_threshold(tmp_path, capsys):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        (root / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    msg = prep(capsys, "folder", "--source", root, "--out", tmp_path / "out", "--max-corrupt", "2", "--workers", "1")
    assert "3 corrupt" in msg
    no_finished_output(tmp_path / "out")


def test_verify_without_manifest(tmp_path, capsys):
    msg = prep(capsys, "verify", tmp_path)
    assert "manifest.json" in msg


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory):
    """40 train / 20 test MNIST-like images in PNG shards of 20."""
    return A.mnist_shards(tmp_path_factory.mktemp("verify"), 40, 20, shard_size=20, encoding="png")


@pytest.fixture
def shards(clean_shards, tmp_path):
    return C.copy(clean_shards, tmp_path / "png")


@pytest.mark.parametrize("field", list(C.HUGE_SIZES))
def test_verify_member_claiming_a_huge_size(shards, capsys, field):
    """The shard's sha256 matches the manifest; one member's header claims more bytes than the
    file holds (up to 10**20, GNU base-256): nothing that size is read or allocated."""
    C.claim_size(shards, "train", 0, 2, C.HUGE_SIZES[field])
    msg = prep(capsys, "verify", shards, "--quiet")
    assert "train/shard-000000.tar" in msg and "truncated or corrupt tar" in msg, msg


@pytest.mark.parametrize("field, value, expect", [
    ("resolution", 32, "is 28x28, expected 32x32"),
    ("channels", 3, "has 1 channel(s), the manifest says 3"),
    ("encoding", "raw", "is .png, the manifest says raw"),
    ("num_classes", 1, "outside the manifest's 1 classes"),
    ("num_classes", None, "the manifest says the data has no labels"),
])
def test_verify_decodes_against_the_manifest(shards, capsys, field, value, expect):
    """Shards that match their sizes, checksums and counts, and a manifest that describes them
    wrongly: verify decodes the samples and names the first shard that differs."""
    import json

    m = C.manifest(shards)
    m[field] = value
    (shards / "manifest.json").write_text(json.dumps(m))
    msg = prep(capsys, "verify", shards, "--quiet")
    assert "shard-000000.tar: sample" in msg and expect in msg, msg


# ------------------------------------------------------------------------------------------ ownership of --out


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _user_files(out: Path) -> None:
    (out / "train").mkdir(parents=True)
    (out / "train" / "mine.tar").write_bytes(b"user data")
    (out / "train" / "shard-000000.tar").write_bytes(b"a user's file at prep's name")
    (out / ".notes.tmp.1").write_text("keep me")
    (out / "manifest.json").write_text("[1, 2, 3]")  # JSON, but not prep's manifest


def test_prep_refuses_a_folder_holding_files_it_did_not_write(tmp_path, capsys):
    src = tmp_path / "dl"
    A.make_mnist(src, n_train=30, n_test=10, gz=False)
    out = tmp_path / "out"
    _user_files(out)
    before = _snapshot(tmp_path)
    msg = prep(capsys, "mnist", "--source", src, "--out", out)
    assert str(out) in msg and "did not write" in msg and "--force" in msg
    assert _snapshot(tmp_path) == before


def test_prep_force_replaces_only_its_own_names_and_says_which(tmp_path, capsys):
    src = tmp_path / "dl"
    A.make_mnist(src, n_train=30, n_test=10, gz=False)
    out = tmp_path / "out"
    _user_files(out)
    with pytest.raises(SystemExit) as e:
        exits_cleanly(prep_app)(["mnist", "--source", str(src), "--out", str(out), "--force", "--quiet"])
    assert e.value.code in (0, None)
    err = capsys.readouterr().err
    assert "replacing" in err and "train/shard-000000.tar" in err and "manifest.json" in err
    assert (out / "train" / "mine.tar").read_bytes() == b"user data"
    assert (out / ".notes.tmp.1").read_text() == "keep me"
    assert (out / "train" / "shard-000000.tar").read_bytes() != b"a user's file at prep's name"
    import json

    assert json.loads((out / "manifest.json").read_text())["dataset"] == "mnist"


def test_prep_reruns_beside_its_own_output_and_the_evaluation_caches(tmp_path, capsys):
    src = tmp_path / "dl"
    A.make_mnist(src, n_train=30, n_test=10, gz=False)
    out = tmp_path / "out"
    args = ["mnist", "--source", str(src), "--out", str(out), "--quiet"]
    for _ in range(2):
        with pytest.raises(SystemExit) as e:
            exits_cleanly(prep_app)(args)
        assert e.value.code in (0, None)
        (out / "fid_stats").mkdir(exist_ok=True)
        (out / "fid_stats" / "x.npz").write_bytes(b"cache")
        (out / "classifier").mkdir(exist_ok=True)
    assert (out / "fid_stats" / "x.npz").read_bytes() == b"cache"
