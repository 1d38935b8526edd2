"""Property-based tests (hypothesis) over archive bytes: random and mutated CIFAR-10 tarballs,
CelebA zips, MNIST idx gzips, image folders and tar shards, fed to `dali-dist prep ...`,
`prep verify` and the loader. Whatever the bytes: exit 0 with output that verifies, or exit 2
with one `error:` line; no traceback; nothing written outside the target; an earlier output
beside it left byte-for-byte as it was.

Compressed inputs are mutated both as stored and inside the compression (re-compressed), so
the parsers behind the decompressor see damage too. `DALI_HYPOTHESIS=explore` runs more."""

from __future__ import annotations

import gzip
import io
import itertools
import os
import shutil
import tarfile
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dali_dist.cli_util import exits_cleanly
from dali_dist.data import TrainStream, eval_batches
from dali_dist.errors import UserError
from data_prep.cli import prep_app

from tests import _archives as A


settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("explore", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("DALI_HYPOTHESIS", "ci"))
pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore:This DataLoader will create")]


# ------------------------------------------------------------------------------------------ mutations

mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                        min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("random"), st.binary(max_size=3000)),
)


def mutate(data: bytes, m) -> bytes:
    kind = m[0]
    if kind == "truncate":
        return data[: int(len(data) * m[1])]
    if kind == "flip":
        b = bytearray(data)
        for at, v in m[1]:
            if b:
                b[int(at * len(b))] = v
        return bytes(b)
    if kind == "insert":
        k = int(len(data) * m[1])
        return data[:k] + m[2] + data[k:]
    return m[1]


# ------------------------------------------------------------------------------------------ harness


def prep(*args) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            exits_cleanly(prep_app)([*map(str, args), "--quiet"])
            code = 0
        except SystemExit as e:
            code = e.code or 0
    return code, err.getvalue()


def snapshot(root: Path, skip: Path | None = None) -> dict:
    return {p: (p.read_bytes() if p.is_file() and not p.is_symlink() else None) for p in sorted(root.rglob("*"))
            if skip is None or not p.is_relative_to(skip)}


class Workdir:
    """base/l1/l2/{dl, out, prev}: members named ../x or ../../x land inside base, which is watched."""

    def __init__(self, good_prev: Path | None):
        self._tmp = tempfile.TemporaryDirectory()
        self.base = Path(self._tmp.name)
        self.dir = self.base / "l1" / "l2"
        self.dl = self.dir / "dl"
        self.dl.mkdir(parents=True)
        self.out = self.dir / "out"
        self.prev = self.dir / "prev"
        if good_prev is not None:
            shutil.copytree(good_prev, self.prev)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._tmp.cleanup()


def check_prep(w: Workdir, command: str, source: Path, *extra):
    """The property, for one prep command on one (possibly damaged) source."""
    before = snapshot(w.base, skip=w.out)
    code, err = prep(command, "--source", source, "--out", w.out, "--workers", "1", *extra)
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    else:
        vcode, verr = prep("verify", w.out)
        assert vcode == 0, verr
    assert snapshot(w.base, skip=w.out) == before  # source, earlier output, everything else: untouched
    assert not Path("/abs").exists()
    if w.prev.exists():  # the same bad source pointed at an earlier, good output
        before = snapshot(w.prev)
        code2, err = prep(command, "--source", source, "--out", w.prev, "--workers", "1", *extra)
        assert code2 in (0, 2) and "Traceback" not in err, err
        after = snapshot(w.prev)
        if code2 == 0:  # unchanged bytes from another path: shards kept, the manifest names the new path
            after.pop(w.prev / "manifest.json"), before.pop(w.prev / "manifest.json")
            assert prep("verify", w.prev)[0] == 0
        assert after == before
    return code


_GOODS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _goods_dir(tmp_path_factory):
    _GOODS["root"] = tmp_path_factory.mktemp("goods")
    yield
    _GOODS.clear()


def goods_() -> dict:
    """Good sources of every format and a good prep output of each (built once per module)."""
    if "cifar" in _GOODS:
        return _GOODS
    root = _GOODS["root"]
    g = _GOODS
    g["cifar"] = A.make_cifar(root / "cifar", A.cifar_arrays(per_batch=2, n_test=2)).read_bytes()
    g["cifar_tar"] = gzip.decompress(g["cifar"])
    images = A.celeba_images(3)
    A.make_celeba(root / "celeba", images)
    g["celeba"] = (root / "celeba" / "img_align_celeba.zip").read_bytes()
    import zipfile

    buf = io.BytesIO()  # the real CelebA zip is deflated: damage then reaches zlib
    with zipfile.ZipFile(io.BytesIO(g["celeba"])) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for zi in src.infolist():
            dst.writestr(zi.filename, src.read(zi), compress_type=zipfile.ZIP_DEFLATED)
    g["celeba_deflated"] = buf.getvalue()
    g["celeba_partition"] = (root / "celeba" / "list_eval_partition.txt").read_text()
    A.make_mnist(root / "mnist", n_train=12, n_test=5, gz=True)
    g["mnist_dir"] = root / "mnist"
    g["mnist_gz"] = (root / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()
    g["mnist_idx"] = gzip.decompress(g["mnist_gz"])
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(A.cifar_expected(A.cifar_arrays(per_batch=1, n_test=1))["train"][0][0]).save(buf, format="PNG")
    g["png"] = buf.getvalue()
    g["jpeg"] = images["000001.jpg"]
    code, err = prep("mnist", "--source", root / "mnist", "--out", root / "shards", "--shard-size", "4", "--workers", "1")
    assert code == 0, err
    g["shards"] = root / "shards"  # train 12 in 3 shards, test 5 in 2
    for name, cmd, src in (("cifar", "cifar10", root / "cifar" / "cifar-10-python.tar.gz"),
                           ("celeba", "celeba", root / "celeba" / "img_align_celeba.zip"),
                           ("mnist", "mnist", root / "mnist")):
        code, err = prep(cmd, "--source", src, "--out", root / f"out-{name}", "--workers", "1")
        assert code == 0, err
        g[f"out_{name}"] = root / f"out-{name}"
    return g


# ------------------------------------------------------------------------------------------ prep


@given(m=mutations, inner=st.booleans())
@example(m=("flip", [(0.40234375, 12)]), inner=False)  # found by this test: a zlib.error escaped as a traceback
def test_cifar_tarball_bytes(m, inner):
    goods = goods_()
    data = gzip.compress(mutate(goods["cifar_tar"], m), mtime=0) if inner else mutate(goods["cifar"], m)
    with Workdir(goods["out_cifar"]) as w:
        src = w.dl / "cifar-10-python.tar.gz"
        src.write_bytes(data)
        check_prep(w, "cifar10", src)


MEMBER_NAMES = ["../x", "../../x", "../../../x", "/abs/x", "a/../../x", "cifar-10-batches-py/../../../x", "./ok",
                "c:/x", "..\\..\\x", "cifar-10-batches-py/data_batch_1", "", "a" * 300]
MEMBER_TYPES = [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE]


names = st.one_of(st.sampled_from(MEMBER_NAMES), st.text(st.characters(blacklist_categories=("Cs",),
                                                                     blacklist_characters="\x00"), max_size=30))


@given(st.lists(st.tuples(names, st.sampled_from(MEMBER_TYPES),
                          st.sampled_from(["/etc/passwd", "../../x", "x", ""]), st.binary(max_size=50)),
                min_size=1, max_size=3))
def test_cifar_tarball_with_hostile_members(members):
    goods = goods_()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(goods["cifar_tar"])) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for mem in src.getmembers():
            dst.addfile(mem, src.extractfile(mem) if mem.isfile() else None)
        for name, typ, link, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type = typ
            if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = link
                dst.addfile(ti)
            elif typ == tarfile.REGTYPE:
                ti.size = len(payload)
                dst.addfile(ti, io.BytesIO(payload))
            else:
                dst.addfile(ti)
    with Workdir(goods["out_cifar"]) as w:
        src = w.dl / "cifar-10-python.tar.gz"
        src.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
        check_prep(w, "cifar10", src)


@given(m=mutations, deflated=st.booleans())
@example(m=("flip", [(0.3409300644900073, 0)]), deflated=True)  # found by this test: zlib.error in a member
def test_celeba_zip_bytes(m, deflated):
    goods = goods_()
    with Workdir(goods["out_celeba"]) as w:
        src = w.dl / "img_align_celeba.zip"
        src.write_bytes(mutate(goods["celeba_deflated" if deflated else "celeba"], m))
        (w.dl / "list_eval_partition.txt").write_text(goods["celeba_partition"])
        check_prep(w, "celeba", src)


@given(st.text(max_size=120))
def test_celeba_partition_text(text):
    goods = goods_()
    with Workdir(None) as w:
        src = w.dl / "img_align_celeba.zip"
        src.write_bytes(goods["celeba"])
        (w.dl / "list_eval_partition.txt").write_text(text)
        check_prep(w, "celeba", src)


idx_headers = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                        st.integers(0, 255))


@given(m=mutations, layer=st.sampled_from(["gz", "idx", "header"]), header=idx_headers)
@example(m=("truncate", 1.0), layer="header", header=(2**22, 2**21, 2**21, 3))  # 2^64 wrapped to 0 in np.prod
def test_mnist_idx_bytes(m, layer, header):
    goods = goods_()
    if layer == "gz":
        data = mutate(goods["mnist_gz"], m)
    elif layer == "idx":
        data = gzip.compress(mutate(goods["mnist_idx"], m), mtime=0)
    else:  # absurd sizes: random dimensions (and ndim) behind the right magic number
        n, h, wd, ndim = header
        idx = bytes([0, 0, 8, ndim % 5]) + b"".join(int(d).to_bytes(4, "big") for d in (n, h, wd))
        data = gzip.compress(idx + (b"" if n * h * wd == 2**64 else goods["mnist_idx"][16:]), mtime=0)
    with Workdir(goods["out_mnist"]) as w:
        src = w.dl / "mnist"
        shutil.copytree(goods["mnist_dir"], src)
        (src / "train-images-idx3-ubyte.gz").write_bytes(data)
        check_prep(w, "mnist", src)


@given(st.lists(st.tuples(st.sampled_from(["png", "jpeg"]), mutations, st.sampled_from([".png", ".jpg", ".gif", ".bmp"])),
                min_size=1, max_size=3))
def test_image_folder_bytes(files):
    goods = goods_()
    with Workdir(None) as w:
        src = w.dl / "photos"
        src.mkdir()
        (src / "good.png").write_bytes(goods["png"])
        for i, (fmt, m, ext) in enumerate(files):
            (src / f"f{i}{ext}").write_bytes(mutate(goods[fmt], m))
        check_prep(w, "folder", src, "--resolution", "8", "--max-corrupt", "1")


# ------------------------------------------------------------------------------------------ shards


@given(m=mutations, which=st.integers(0, 2))
def test_shard_bytes_for_verify_and_the_loader(m, which):
    goods = goods_()
    """A damaged shard: verify says so in one line, the loader raises one UserError line
    ("error") or still yields exactly batches_per_epoch full batches ("skip"); neither writes."""
    with Workdir(None) as w:
        data = w.dir / "shards"
        shutil.copytree(goods["shards"], data)
        for shard in (data / "train" / f"shard-{which:06d}.tar", data / "test" / "shard-000000.tar"):
            shard.write_bytes(mutate(shard.read_bytes(), m))
        code, err = prep("verify", data)
        assert code in (0, 2) and "Traceback" not in err
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("error: "), err
        before = snapshot(w.base)
        for policy in ("error", "skip"):
            try:
                for x, y, k in eval_batches(data, split="test", batch_size=2, on_corrupt=policy):
                    assert x.shape[1:] == (1, 28, 28) and len(y) == len(k) == len(x)
            except UserError as exc:
                assert "\n" not in str(exc) and policy == "error" or "every shard" in str(exc), exc
        # a bare pattern (no manifest): the loader counts, probes and decodes the damaged tars itself
        bare = w.dir / "bare"
        shutil.copytree(data / "train", bare)
        for workers in (0, 2):
            try:
                s = TrainStream(str(bare / "shard-{000000..000002}.tar"), batch_size=2, seed=0, num_workers=workers,
                                on_corrupt="skip")
            except UserError as exc:
                assert "\n" not in str(exc), exc
                continue
            got = list(itertools.islice(s.batches(), s.batches_per_epoch + 1))
            assert len(got) == s.batches_per_epoch + 1 and all(x.shape == (2, 1, 28, 28) for x, _ in got)
        del bare
        shutil.rmtree(w.dir / "bare")
        assert snapshot(w.base) == before
