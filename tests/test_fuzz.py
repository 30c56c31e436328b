"""Property-based fuzzing of every parser that reads untrusted input (RELIABILITY 11-20).

Each property states that a parser either succeeds with a value that round-trips or raises
the one exception class documented for it, never a foreign one (``KeyError``,
``ValueError``, ``UnicodeDecodeError``, ``RecursionError``...), and that unpacking a
mangled layer never writes outside its root.

Marked slow: ``make test-slow`` (and CI) runs a short profile (200 examples per property, about
50 s in all on the shared 2-core machine); ``make test`` leaves it out. Set
``IMAGESMITH_FUZZ=long`` (``make fuzz``) for a long run.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagesmith.errors import DigestFormatError, LayerError, ManifestError, ReferenceFormatError, UnpackError
from imagesmith.inputs.envmods import DEFAULT_PATH, EnvModification, EnvOp, apply_env, parse_env_list
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import ImageConfig, Index, Manifest, parse_manifest_document
from imagesmith.oci.references import Reference
from imagesmith.tar.format import read_members
from imagesmith.tar.unpack import UnpackPolicy, unpack_layer

pytestmark = pytest.mark.slow

settings.register_profile(
    "short",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = "long" if os.environ.get("IMAGESMITH_FUZZ", "").strip().lower() == "long" else "short"
fuzz = settings.get_profile(PROFILE)

HEX = "0123456789abcdef"
SHA = "sha256:" + "a" * 64


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------


def _component() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z0-9]{1,6}(?:(?:\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)


@st.composite
def valid_digest_text(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(["sha256", "sha512"]))
    length = 64 if algorithm == "sha256" else 128
    return algorithm + ":" + draw(st.text(HEX, min_size=length, max_size=length))


@st.composite
def digest_like(draw: st.DrawFn) -> str:
    """Valid digests and near misses: uppercase, wrong length, ``..``, unknown algorithms."""
    good = draw(valid_digest_text())
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return good
    if kind == 1:
        return good.upper()
    if kind == 2:
        return good[: draw(st.integers(0, len(good)))] + draw(st.text(HEX + ":./", max_size=3))
    if kind == 3:
        algo = draw(st.sampled_from(["sha384", "md5", "SHA256", "", "sha256+b64", "blake3"]))
        return algo + good[good.index(":") :]
    if kind == 4:
        return "sha256:" + draw(st.sampled_from(["../x", "../../etc/passwd", "a/b", "\0"])) + good[7:]
    return draw(st.text(max_size=140))


@st.composite
def reference_like(draw: st.DrawFn) -> str:
    """Plausible references (host, port, path, tag, digest) with random damage."""
    parts: list[str] = []
    if draw(st.booleans()):
        host = draw(
            st.sampled_from(
                [
                    "localhost",
                    "docker.io",
                    "index.docker.io",
                    "ghcr.io",
                    "Reg.Example.COM",
                    "[::1]",
                    "127.0.0.1",
                    "a-b.c",
                ]
            )
        )
        if draw(st.booleans()):
            host += ":" + str(draw(st.integers(0, 999_999)))
        parts.append(host)
    parts.extend(draw(st.lists(_component(), min_size=1, max_size=3)))
    text = "/".join(parts)
    if draw(st.booleans()):
        text += ":" + draw(st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True))
    if draw(st.booleans()):
        text += "@" + draw(digest_like())
    if draw(st.booleans()):
        # damage: insert, delete or replace a character
        pos = draw(st.integers(0, len(text)))
        junk = "".join(draw(st.lists(st.sampled_from([*":/@.-_ Aé\0\t", "://"]), max_size=2)))
        cut = draw(st.integers(0, 2))
        text = text[:pos] + junk + text[pos + cut :]
    return text


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_trees: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Text without unpaired surrogates (see test_surrogates_in_manifest_do_not_crash_to_bytes).
clean_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@st.composite
def platform_json(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "architecture": draw(st.sampled_from(["amd64", "arm64", "arm", "unknown"])),
        "os": draw(st.sampled_from(["linux", "windows", "unknown"])),
    }
    if draw(st.booleans()):
        out["variant"] = draw(st.sampled_from(["v7", "v8", "v6"]))
    return out


@st.composite
def descriptor_json(draw: st.DrawFn, media_types: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mediaType": draw(st.sampled_from(media_types)),
        "digest": draw(valid_digest_text()),
        "size": draw(st.integers(0, 2**40)),
    }
    if draw(st.booleans()):
        out["annotations"] = draw(st.dictionaries(clean_text, clean_text, min_size=1, max_size=3))
    if draw(st.booleans()):
        out["urls"] = draw(st.lists(clean_text, min_size=1, max_size=2))
    return out


@st.composite
def manifest_json(draw: st.DrawFn) -> dict[str, Any]:
    family = draw(st.sampled_from(["oci", "docker"]))
    if family == "oci":
        media, config, layer = mt.OCI_MANIFEST, mt.OCI_CONFIG, mt.OCI_LAYER_GZIP
    else:
        media, config, layer = mt.DOCKER_MANIFEST, mt.DOCKER_CONFIG, mt.DOCKER_LAYER_GZIP
    out: dict[str, Any] = {"schemaVersion": 2}
    if family == "docker" or draw(st.booleans()):
        out["mediaType"] = media
    out["config"] = draw(descriptor_json([config]))
    out["layers"] = draw(st.lists(descriptor_json([layer]), max_size=4))
    if family == "oci" and draw(st.booleans()):
        out["annotations"] = draw(st.dictionaries(clean_text, clean_text, min_size=1, max_size=3))
    return out


@st.composite
def index_json(draw: st.DrawFn) -> dict[str, Any]:
    entries = draw(st.lists(descriptor_json([mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]), max_size=4))
    for entry in entries:
        if draw(st.booleans()):
            entry["platform"] = draw(platform_json())
    out: dict[str, Any] = {"schemaVersion": 2, "manifests": entries}
    if draw(st.booleans()):
        out["mediaType"] = draw(st.sampled_from([mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST]))
    return out


@st.composite
def config_json(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 3))
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": draw(st.lists(st.from_regex(r"[A-Z_]{1,5}=[a-z/:]{0,8}", fullmatch=True), max_size=3))
        },
        "rootfs": {"type": "layers", "diff_ids": [draw(valid_digest_text()) for _ in range(n)]},
        "history": [{"created_by": "x"} for _ in range(n)],
    }


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out.extend(_paths(value, (*prefix, i)))
    return out


@st.composite
def mutated_tree(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A valid document with one to three subtrees replaced, deleted or added."""
    tree: Any = draw(valid)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(tree)))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                tree = draw(json_trees)
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_trees | json_scalars)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            key = draw(
                st.sampled_from(
                    [
                        "manifests",
                        "layers",
                        "config",
                        "mediaType",
                        "size",
                        "digest",
                        "platform",
                        "schemaVersion",
                        "rootfs",
                        "Env",
                    ]
                )
            )
            parent[key] = draw(json_trees)
        if not isinstance(tree, dict | list):
            break
    return tree


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, inserted or cut, or truncated."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if action == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del buf[pos : pos + draw(st.integers(1, 16))]
        elif action == "truncate":
            del buf[pos:]
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# references and digests (RELIABILITY 11)
# ---------------------------------------------------------------------------------------------


@fuzz
@given(st.one_of(reference_like(), st.text(max_size=80)))
@example("docker.io/library/ubuntu:23.04")
@example("localhost:5000/a/b@sha256:" + "0" * 64)
@example("a@sha256:../x")
@example("registry-1.docker.io/x")
def test_reference_parse_round_trips_or_raises_reference_error(text: str) -> None:
    """RELIABILITY 11: Reference.parse returns a value that prints back to itself, or raises
    ReferenceFormatError; nothing else."""
    try:
        ref = Reference.parse(text)
    except ReferenceFormatError:
        return
    assert Reference.parse(str(ref)) == ref
    assert ref.tag is not None or ref.digest is not None


@fuzz
@given(st.one_of(digest_like(), st.text(max_size=140)))
@example("sha256:../x")
@example("SHA256:" + "A" * 64)
@example("sha256:" + "a" * 63)
@example("md5:" + "a" * 32)
def test_digest_parse_round_trips_or_raises_digest_error(text: str) -> None:
    """RELIABILITY 11: Digest.parse accepts exactly algorithm:lowercase-hex of the right length."""
    try:
        digest = Digest.parse(text)
    except DigestFormatError:
        return
    assert Digest.parse(str(digest)) == digest
    assert str(digest) == text
    assert "/" not in digest.encoded and ".." not in digest.encoded


# ---------------------------------------------------------------------------------------------
# manifests, indexes, configs (RELIABILITY 12-14)
# ---------------------------------------------------------------------------------------------


def _parse_manifest_or_manifest_error(data: bytes, content_type: str | None) -> Manifest | Index | None:
    try:
        return parse_manifest_document(data, content_type)
    except ManifestError:
        return None


CONTENT_TYPES = st.none() | st.sampled_from(
    [
        mt.OCI_MANIFEST,
        mt.OCI_INDEX,
        mt.DOCKER_MANIFEST,
        mt.DOCKER_MANIFEST_LIST,
        "application/json",
        "text/html; charset=utf-8",
        "",
    ]
)


@fuzz
@given(st.binary(max_size=300), CONTENT_TYPES)
@example(b"1" * 5000, None)  # int longer than Python's 4300-digit limit: ValueError
@example(b"[" * 100_000, None)  # nesting deeper than the recursion limit: RecursionError
@example(b'{"schemaVersion":2,"layers":[],"config":{"size":' + b"1" * 5000 + b"}}", None)
@example(b"\xff\xfe{}", None)
def test_manifest_parse_arbitrary_bytes_raises_only_manifest_error(
    data: bytes, content_type: str | None
) -> None:
    """RELIABILITY 12: arbitrary bytes give a Manifest/Index or ManifestError, nothing else."""
    _parse_manifest_or_manifest_error(data, content_type)


@fuzz
@given(
    st.one_of(manifest_json(), index_json(), mutated_tree(manifest_json()), mutated_tree(index_json())),
    CONTENT_TYPES,
)
def test_manifest_parse_mutated_documents_and_round_trip(doc: Any, content_type: str | None) -> None:
    """RELIABILITY 12-14: mutated manifests/indexes raise only ManifestError; whatever parses
    re-serialises (to_bytes) and parses back equal."""
    data = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    parsed = _parse_manifest_or_manifest_error(data, content_type)
    if parsed is None:
        return
    again = parse_manifest_document(parsed.to_bytes())
    assert again.to_bytes() == parsed.to_bytes()
    # Empty annotations and empty optional strings are dropped by to_bytes, so equality holds
    # from the first re-serialisation on (see test_manifest_round_trip_is_exact).
    assert parse_manifest_document(again.to_bytes()) == again
    if isinstance(parsed, Manifest) and isinstance(again, Manifest):
        assert (again.config.digest, len(again.layers)) == (parsed.config.digest, len(parsed.layers))


@fuzz
@given(
    st.one_of(manifest_json(), index_json(), config_json()).flatmap(
        lambda doc: mutated_bytes(json.dumps(doc).encode())
    )
)
def test_manifest_and_config_parse_byte_mutations(data: bytes) -> None:
    """RELIABILITY 12-14: byte-level damage (flips, cuts, insertions) raises only ManifestError."""
    _parse_manifest_or_manifest_error(data, None)
    try:
        ImageConfig.parse(data)
    except ManifestError:
        pass


@fuzz
@given(st.one_of(config_json(), mutated_tree(config_json()), json_trees))
@example({"rootfs": {"diff_ids": [1]}})
@example({"rootfs": {"diff_ids": []}, "config": {"Env": ["NOEQUALS"]}})
def test_config_parse_mutated_documents_and_round_trip(doc: Any) -> None:
    """RELIABILITY 14: ImageConfig.parse raises only ManifestError (Env without '=', bad
    diff_ids...); a parsed config re-serialises and parses back equal, and its accessors work."""
    data = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        config = ImageConfig.parse(data)
    except ManifestError:
        return
    again = ImageConfig.parse(config.to_bytes())
    assert again == config
    assert len(config.diff_ids) == len(again.diff_ids)
    parse_env_list(config.env)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"'
        + SHA.encode()
        + b'","size":1},"layers":[],"annotations":{"k":"\\ud800"}}',
    ],
)
def test_surrogates_in_manifest_do_not_crash_to_bytes(doc: bytes) -> None:
    """RELIABILITY 12: a lone surrogate is refused when parsed, not a crash when re-serialised."""
    with pytest.raises(ManifestError, match="surrogate"):
        parse_manifest_document(doc)


_EMPTY_FIELD_DOCS = [
    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"'
    + SHA.encode()
    + b'","size":1},"layers":[],"annotations":{}}',
    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"'
    + SHA.encode()
    + b'","size":1},"layers":[],"artifactType":""}',
    b'{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"'
    + SHA.encode()
    + b'","size":1,"platform":{"os":"linux","architecture":"amd64","variant":""}}]}',
]


@pytest.mark.parametrize("doc", _EMPTY_FIELD_DOCS)
def test_manifest_round_trip_is_exact(doc: bytes) -> None:
    """RELIABILITY 12: parse(to_bytes(m)) == m; empty optional fields normalise to absent."""
    parsed = parse_manifest_document(doc)
    assert parse_manifest_document(parsed.to_bytes()) == parsed


# ---------------------------------------------------------------------------------------------
# tar reading and unpacking (RELIABILITY 16-20)
# ---------------------------------------------------------------------------------------------

NAME_PARTS = st.sampled_from(
    ["a", "b", "etc", "..", ".", "", "x\0y", ".wh.a", ".wh..wh..opq", ".wh.b", "link", "dir", "n" * 300, "é"]
)
member_names = st.lists(NAME_PARTS, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/abs", "../x", "a/../../x", "/", "link/x", "link/../../x", "SENTINEL/pwned"]
)
link_targets = st.sampled_from(
    [
        "..",
        "../..",
        "/",
        "/etc",
        "SENTINEL",
        "SENTINEL/file",
        "../sentinel",
        "../../sentinel/file",
        "a",
        "link",
        "link/..",
        "a/../../..",
        "b/c",
        "",
    ]
)


@st.composite
def small_tar(draw: st.DrawFn, sentinel: str) -> bytes:
    """A valid small tar of files, dirs, symlinks, hardlinks and whiteouts with hostile names."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf,
        mode="w",
        format=draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])),
    ) as tar:
        for _ in range(draw(st.integers(1, 6))):
            name = draw(member_names).replace("SENTINEL", sentinel.lstrip("/"))
            info = tarfile.TarInfo(name)
            kind = draw(
                st.sampled_from(
                    [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
                )
            )
            info.type = kind
            info.mode = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o777]))
            data = b""
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = draw(link_targets).replace("SENTINEL", sentinel)
            elif kind == tarfile.REGTYPE:
                data = draw(st.binary(max_size=40))
                info.size = len(data)
            try:
                tar.addfile(info, io.BytesIO(data) if data else None)
            except (ValueError, UnicodeError):  # tarfile cannot write this name in this format
                continue
    return buf.getvalue()


def _snapshot(path: Path) -> dict[str, tuple[int, bytes | str | None]]:
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            content: bytes | str | None = None
            if p.is_symlink():
                content = os.readlink(p)
            elif p.is_file():
                content = p.read_bytes()
            out[str(p.relative_to(path))] = (st_.st_mode, content)
    return out


_FUZZ_BASE: Path | None = None


def _fuzz_base() -> Path:
    """One directory per session, so the sentinel path (drawn into symlink targets) is stable
    between examples, as hypothesis requires."""
    global _FUZZ_BASE
    if _FUZZ_BASE is None:
        _FUZZ_BASE = Path(tempfile.mkdtemp(prefix="imagesmith-fuzz-"))
        atexit.register(shutil.rmtree, _FUZZ_BASE, True)
    return _FUZZ_BASE


def _check_unpack(make_layer: Callable[[str], bytes]) -> None:
    base = _fuzz_base()
    sentinel = base / "sentinel"
    root = base / "root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(sentinel, ignore_errors=True)
    sentinel.mkdir()
    (sentinel / "file").write_bytes(b"untouched")
    before = _snapshot(base)
    layer = make_layer(str(sentinel))
    try:
        unpack_layer(io.BytesIO(layer), root, policy=UnpackPolicy(preserve_owners=False))
    except UnpackError:
        pass
    after = _snapshot(base)
    outside = {k: v for k, v in after.items() if k != "root" and not k.startswith("root/")}
    assert outside == before, "unpack wrote outside its root"


@fuzz
@given(st.data())
def test_unpack_hostile_tar_stays_inside_root(data: st.DataObject) -> None:
    """RELIABILITY 16-19: hostile member names, symlink tricks and whiteouts raise only
    UnpackError and never touch anything beside the root."""
    _check_unpack(lambda sentinel: data.draw(small_tar(sentinel)))


@fuzz
@given(st.data())
def test_unpack_mutated_tar_stays_inside_root(data: st.DataObject) -> None:
    """RELIABILITY 16-20: byte-level damage to a hostile tar (flips, cuts, insertions,
    truncation) raises only UnpackError and never writes outside the root."""
    _check_unpack(lambda sentinel: data.draw(small_tar(sentinel).flatmap(mutated_bytes)))


@fuzz
@given(st.data())
def test_unpack_mutated_gzip_layer_raises_only_unpack_error(data: st.DataObject) -> None:
    """RELIABILITY 20: truncated gzip, trailing garbage and corrupt deflate data give UnpackError."""
    import gzip

    _check_unpack(
        lambda sentinel: data.draw(
            small_tar(sentinel).map(lambda b: gzip.compress(b, mtime=0)).flatmap(mutated_bytes)
        )
    )


@fuzz
@given(
    st.one_of(
        st.binary(max_size=2048),
        small_tar("/nonexistent").flatmap(mutated_bytes),
    )
)
@example(b"")
@example(b"\0" * 512)
def test_read_members_raises_only_layer_error(data: bytes) -> None:
    """RELIABILITY 20: tarwriter.read_members on random or damaged tar bytes raises only
    LayerError."""
    try:
        for member in read_members(io.BytesIO(data), "fuzz.tar"):
            assert member.size >= 0
    except LayerError:
        pass


# ---------------------------------------------------------------------------------------------
# environment merging
# ---------------------------------------------------------------------------------------------

path_entries = st.sampled_from(["/bin", "/usr/bin", "/opt/x/bin", "/sbin", "", "/a:/b", "/bin:/bin"])


PATH_OPS: st.SearchStrategy[EnvOp] = st.sampled_from(["prepend_path", "append_path", "remove_path"])


@st.composite
def env_mods(draw: st.DrawFn) -> list[EnvModification]:
    mods = [EnvModification(draw(PATH_OPS), "PATH", draw(path_entries))]
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:
            name = draw(st.sampled_from(["MANPATH", "FOO"]))
            op = draw(st.sampled_from(get_args(EnvOp)))
            value = None if op == "unset" else draw(path_entries)
            mods.append(EnvModification(op, name, value))
        else:
            mods.append(EnvModification(draw(PATH_OPS), "PATH", draw(path_entries)))
    return draw(st.permutations(mods))


@fuzz
@given(
    st.lists(
        st.sampled_from(["PATH=/bin:/bin:/usr/bin", "PATH=", "FOO=1", "MANPATH=/m", "PATH=/x"]), max_size=3
    ),
    env_mods(),
)
def test_apply_env_never_duplicates_path_entries(base: list[str], mods: list[EnvModification]) -> None:
    """apply_env: once PATH is edited by a path operation, no entry appears twice."""
    env = parse_env_list(apply_env(base, mods))
    assert "PATH" in parse_env_list(base) or next(iter(env)) == "PATH"
    entries = [e for e in env.get("PATH", DEFAULT_PATH).split(":") if e]
    assert len(entries) == len(set(entries)), env["PATH"]
