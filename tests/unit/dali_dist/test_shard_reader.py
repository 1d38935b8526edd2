"""The shard reader's tar parsing against Python's tarfile: archives hypothesis writes in the
ustar, GNU and pax formats (long names, prefixes, non-ASCII names, pax records), GNU base-256
size fields, and what tarfile skips (folders, links) skipped alike. Then the layer above:
keys by WebDataset's rule, samples grouped by key, skip-ahead that reads none of the skipped
data, truncated and non-tar input, the manifest checks, and placeholders for a shard that ends
early."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dali_dist.corrupt import Bad
from dali_dist.errors import UserError
from dali_dist.shard_reader import (_pax_records, _samples, _split_name, _tar_members, check_shard,
                                     iter_shard_samples, shard_part)

SEGMENT = st.text(alphabet="abcxyz019_.-éü", min_size=1, max_size=60).filter(lambda s: s not in (".", ".."))
NAMES = st.lists(SEGMENT, min_size=1, max_size=5).map("/".join)
MEMBERS = st.lists(st.tuples(NAMES, st.binary(max_size=3000), st.sampled_from(["file", "dir", "symlink"])),
                   min_size=0, max_size=6)
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def _archive(members, fmt) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for name, data, kind in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                ti.type = tarfile.DIRTYPE if kind == "dir" else tarfile.SYMTYPE
                ti.linkname = "target" if kind == "symlink" else ""
                tf.addfile(ti)
    return buf.getvalue()


def _by_tarfile(raw: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8") as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]


def _by_ours(raw: bytes, seekable: bool = True) -> list[tuple[str, bytes]]:
    f = io.BytesIO(raw)
    if not seekable:
        f.seekable = lambda: False  # a pipe or an http stream: skipping reads instead of seeking
    return list(_tar_members(f, "mem.tar"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=MEMBERS, fmt=st.sampled_from(sorted(FORMATS)), seekable=st.booleans())
def test_members_match_tarfile(members, fmt, seekable):
    try:
        raw = _archive(members, FORMATS[fmt])
    except ValueError:  # ustar cannot hold this name: nothing to compare
        assume(False)
    assert _by_ours(raw, seekable) == _by_tarfile(raw)


def _set_size_field(raw: bytes, field: bytes, at: int = 0) -> bytes:
    """The size field of the header at byte ``at`` replaced (checksum recomputed), as another
    tar writer may set it."""
    hdr = bytearray(raw[at:at + 512])
    hdr[124:136] = field
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return raw[:at] + bytes(hdr) + raw[at + 512:]


PAYLOAD = bytes(range(256)) * 8


@pytest.mark.parametrize("size", [0, 1, 511, 512, 2000])
def test_gnu_base256_size_field(size):
    raw = _archive([("a.bin", PAYLOAD[:size], "file")], tarfile.GNU_FORMAT)
    patched = _set_size_field(raw, b"\x80" + size.to_bytes(11, "big"))
    assert _by_ours(patched) == _by_tarfile(patched) == [("a.bin", PAYLOAD[:size])]


def _pax(key: str, value: str) -> bytes:
    """One pax record; its leading length counts itself."""
    body = f" {key}={value}\n"
    n = next(n for n in range(len(body), len(body) + 10) if len(str(n)) + len(body) == n)
    return f"{n}{body}".encode()


def test_pax_records_are_cut_by_length_not_by_line():
    value = "dir/with\nnewline.png"
    assert _pax_records(_pax("path", value) + _pax("mtime", "1.5"), "x") == {"path": value, "mtime": "1.5"}
    with pytest.raises(UserError, match="bad pax record"):
        _pax_records(b"99 path=short\n", "x")


def test_a_pax_size_overrides_the_ustar_field():
    """pax carries sizes the 12-byte field cannot (over 8 GiB): the reader must take it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("big.bin")
        ti.size, ti.pax_headers = 1000, {"size": "1000"}
        tf.addfile(ti, io.BytesIO(PAYLOAD[:1000]))
    raw = buf.getvalue()
    pax_len = int(tarfile.TarInfo.frombuf(raw[:512], "utf-8", "surrogateescape").size)
    member_at = 512 + (pax_len + 511) // 512 * 512
    patched = _set_size_field(raw, b"%011o\0" % 0, at=member_at)  # the ustar field says 0
    assert _by_ours(patched) == _by_tarfile(patched) == [("big.bin", PAYLOAD[:1000])]


# ------------------------------------------------------------------ samples, skip-ahead, checks

@pytest.mark.parametrize("name", ["a/b.c.png", "0001.cls", "x/.hidden.png", "train/00000042.xy.npy", "k.PNG"])
def test_keys_and_extensions_follow_webdatasets_rule(name):
    from webdataset.tariterators import base_plus_ext

    assert _split_name(name) == base_plus_ext(name)


def test_a_name_without_a_dot_in_its_basename_is_a_key_without_extension():
    assert _split_name("dir.x/name") == ("dir.x/name", "") and _split_name("plain") == ("plain", "")


def _shard(n=5, payload=2000) -> tuple[bytes, list[dict]]:
    """n samples of (png, cls) members, and the samples as tarfile-free dicts."""
    members, samples = [], []
    for i in range(n):
        key = f"{i:06d}"
        png = bytes([i]) * payload
        members += [(f"{key}.png", png, "file"), (f"{key}.cls", str(i % 3).encode(), "file")]
        samples.append({"__key__": key, "png": png, "cls": str(i % 3).encode()})
    return _archive(members, tarfile.USTAR_FORMAT), samples


class _Counting(io.BytesIO):
    read_bytes = 0

    def read(self, n=-1):
        b = super().read(n)
        self.read_bytes += len(b)
        return b


def test_samples_group_members_by_key():
    raw, samples = _shard()
    assert list(_samples(io.BytesIO(raw), "s.tar")) == samples


@pytest.mark.parametrize("skip", [0, 1, 3, 5, 7])
def test_skip_ahead_gives_the_tail_and_reads_none_of_the_skipped_data(skip):
    raw, samples = _shard(n=5, payload=4000)
    f = _Counting(raw)
    assert list(_samples(f, "s.tar", skip_keys=skip)) == samples[skip:]
    skipped_payload = min(skip, 5) * 4096  # each png member: 4000 bytes in 8 blocks
    assert f.read_bytes <= len(raw) - skipped_payload


def _on_disk(tmp_path, raw: bytes, name="shard-000000.tar"):
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


@pytest.mark.parametrize("skip", [0, 3])
def test_a_shard_cut_inside_a_member_is_one_user_error(tmp_path, skip):
    """Also when the cut falls in data the reader only seeks past (a local file knows its size)."""
    raw, _ = _shard(n=5, payload=4000)
    per_sample = 512 + 4096 + 512 + 512  # png header and 8 data blocks, cls header and 1 block
    url = _on_disk(tmp_path, raw[:2 * per_sample + 512 + 1000])  # inside the 3rd sample's png
    with pytest.raises(UserError, match=r"truncated or corrupt tar \(000002.png goes past the end of the file\)"):
        list(iter_shard_samples(url, skip_keys=skip))


def test_a_header_with_a_wrong_checksum_is_not_a_tar(tmp_path):
    raw, _ = _shard(n=1)
    hdr = bytearray(raw[:512])
    hdr[257:263] = bytes(6)  # no ustar magic: the checksum is what is left to check
    hdr[0:1] = b"Z"  # the name changed after the checksum was written
    with pytest.raises(UserError, match=r"s.tar: not a tar file \(bad header checksum\)"):
        list(_tar_members(io.BytesIO(bytes(hdr) + raw[512:]), "s.tar"))
    with pytest.raises(UserError, match=r"not a tar file \(bad header field"):
        list(_tar_members(io.BytesIO(b"x" * 512), "s.tar"))  # not even a number where the checksum goes


def test_check_shard_names_what_differs_from_the_manifest(tmp_path):
    import hashlib

    raw, _ = _shard(n=3, payload=10)
    url = _on_disk(tmp_path, raw)
    sha, size = hashlib.sha256(raw).hexdigest(), len(raw)
    assert check_shard(url, "image", 3, sha, size) is None
    assert check_shard(url, "image", 4, sha, size) == f"{url}: holds 3 samples, the manifest says 4"
    assert check_shard(url, "image", 3, "0" * 64, size) == f"{url}: sha256 differs from the manifest (corrupt or replaced shard)"
    assert check_shard(url, "image", 3, sha, size + 1) == (f"{url}: {size} bytes, the manifest says {size + 1} "
                                                            "(truncated or replaced shard)")
    assert check_shard(url, "image", 3, "0" * 64, size, full=False) is None  # the size alone
    assert check_shard(str(tmp_path / "gone.tar"), "image", 3).startswith(f"{tmp_path / 'gone.tar'}: missing shard (")


def test_a_shard_that_ends_early_keeps_every_later_position_with_placeholders(tmp_path):
    raw, samples = _shard(n=4, payload=10)
    two = 2 * 2 * 1024  # two samples: two members of one header and one data block each
    url = _on_disk(tmp_path, raw[:two])
    with pytest.raises(UserError, match=r"ends after 2 samples, 4 were counted \(truncated shard\?\)"):
        list(shard_part(url, "image", 4, None, skip=0, limit=4, lenient=False))
    got = list(shard_part(url, "image", 4, None, skip=0, limit=4, lenient=True))
    assert [k for k, _, _ in got[:2]] == ["000000", "000001"] and [y for _, _, y in got] == [0, 1, -1, -1]
    assert got[0][1] == ("png", samples[0]["png"])
    bad = [rec[1] for rec in got[2:]]
    assert all(isinstance(b, Bad) for b in bad) and [b.ident for b in bad] == ["#2", "#3"]
    assert all("ends after 2 samples, 4 were counted" in b.msg for b in bad)
