"""The shard reader's tar parsing against Python's tarfile: archives hypothesis writes in the
ustar, GNU and pax formats (long names, prefixes, non-ASCII names, pax records), GNU base-256
size fields, and what tarfile skips (folders, links) skipped alike."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dali_dist.errors import UserError
from dali_dist.shard_reader import _pax_records, _tar_members

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
