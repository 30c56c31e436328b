import hashlib
import io

import pytest

from imagesmith.errors import DigestFormatError, IntegrityError
from imagesmith.oci.digests import Digest, Hasher, VerifyingReader


def test_parse_roundtrip() -> None:
    text = "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert str(Digest.parse(text)) == text
    assert Digest.of(b"x") == Digest.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "sha256",
        "sha256:",
        "sha256:../etc/passwd",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha1:" + "a" * 40,
        ":" + "a" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "g" * 64,
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(DigestFormatError):
        Digest.parse(text)


def test_hasher_counts() -> None:
    h = Hasher()
    h.update(b"ab")
    h.update(memoryview(b"c"))
    assert h.size == 3 and h.digest == Digest.of(b"abc")


def _drain(reader: VerifyingReader) -> bytes:
    out = b""
    while chunk := reader.read(2):
        out += chunk
    return out


def test_verifying_reader_ok() -> None:
    data = b"hello world"
    assert _drain(VerifyingReader(io.BytesIO(data), Digest.of(data), len(data), "blob")) == data


def test_verifying_reader_mismatch() -> None:
    with pytest.raises(IntegrityError, match="does not match"):
        _drain(VerifyingReader(io.BytesIO(b"hellO"), Digest.of(b"hello"), 5, "blob x"))


def test_verifying_reader_short() -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        _drain(VerifyingReader(io.BytesIO(b"hell"), Digest.of(b"hello"), 5, "blob"))


def test_verifying_reader_stops_one_past_size() -> None:
    raw = io.BytesIO(b"hello" + b"x" * 10_000)
    reader = VerifyingReader(raw, Digest.of(b"hello"), 5, "blob")
    with pytest.raises(IntegrityError, match="longer"):
        while reader.read(1 << 20):
            pass
    assert raw.tell() == 6
