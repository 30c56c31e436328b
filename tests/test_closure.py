"""The runtime-closure check: real ELF files compiled here, on a Debian-like base made from
this machine's own libraries (tests/elfkit.py), written to OCI layouts or a real registry."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import elfkit
import pytest
from cli_support import cli, ok
from conftest import BUSYBOX_ARM64, need
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import DistributionRegistry, Podman

from imagesmith import load_packages
from imagesmith.oci.digests import Digest
from imagesmith.oci.mediatypes import OCI
from imagesmith.oci.model import Platform
from imagesmith.pipeline.closure import (
    ClosureError,
    FileIndex,
    LayerSummariser,
    LayerSummary,
    default_directories,
    summarize_layer,
)
from imagesmith.pipeline.elf import (
    ElfFormatError,
    ElfInfo,
    elf_identity,
    expected_machine,
    machine_name,
    read_elf,
)
from imagesmith.pipeline.results import BuildOptions
from imagesmith.pipeline.run import build
from imagesmith.progress import ProgressEvent
from imagesmith.store.cache import BlobCache
from imagesmith.tar.entries import directory_entries, tarball_entries
from imagesmith.tar.layer import adopt_tarball, build_layer, with_file
from imagesmith.tar.writer import TarEntry


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    reason = elfkit.available()
    need(reason is None, reason or "")
    root = tmp_path_factory.mktemp("elfkit")
    rootfs = elfkit.debian_rootfs(root / "rootfs")
    packages = elfkit.compile_stack(root / "stack")
    cache = root / "cache"
    ok("--cache-dir", str(cache), "import", str(rootfs), "--output", f"oci:{root / 'base'}:debian")
    return {**packages, "base": root / "base", "root": root, "rootfs": rootfs}


def _base(kit: dict[str, Path]) -> str:
    return f"oci:{kit['base']}:debian"


def _build(
    kit: dict[str, Path], tmp_path: Path, *files: Path, **options: Any
) -> tuple[Any, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    result = build(
        _base(kit),
        load_packages(list(files)),
        output=f"oci:{tmp_path / 'out'}:t",
        options=BuildOptions(**options),
        cache=BlobCache(tmp_path / "cache"),
        progress=events.append,
    )
    return result, events


def _package(path: Path, name: str, content: str, depends: tuple[str, ...] = (), **extra: object) -> Path:
    doc = {
        "name": name,
        "version": "1.0",
        "prefix": f"/opt/stack/{name}-1.0",
        "content": content,
        "depends": list(depends),
        **extra,
    }
    path.write_text(json.dumps(doc))
    return path


def test_the_debian_stack_passes(kit: dict[str, Path], tmp_path: Path) -> None:
    report = _build(kit, tmp_path, kit["hello"])[0].closure
    assert report is not None and report.ok, [f.line() for f in report.findings]
    # hello, hellocc (RPATH $ORIGIN/../lib), libhelper.so and libgreet.so.1.0
    assert report.checked == 4 and report.packages == 2
    assert "no problem" in report.summary()


def test_a_library_in_no_layer_is_named_with_every_directory_tried(
    kit: dict[str, Path], tmp_path: Path
) -> None:
    report = _build(kit, tmp_path, kit["broken"])[0].closure
    assert [(f.kind, f.binary, f.package, f.name) for f in report.findings] == [
        ("missing-library", "/opt/stack/broken-1.0/bin/broken", "broken-1.0", "libnothere.so.1")
    ]
    tried = [d for d, _ in report.findings[0].tried]
    # ld.so.conf (with its include) first, then the defaults; no duplicate.
    assert tried[:3] == ["/usr/local/lib", "/usr/local/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"]
    assert tried[-2:] == ["/lib", "/usr/lib"] and len(tried) == len(set(tried))
    line = report.findings[0].line()
    assert "libnothere.so.1" in line and "broken-1.0" in line and "/usr/local/lib" in line


def test_check_error_fails_naming_the_library_and_writes_nothing(
    kit: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ClosureError, match=r"needs libnothere\.so\.1: not found.*nothing was written"):
        _build(kit, tmp_path, kit["broken"], check="error")
    assert not (tmp_path / "out").exists()


def test_ld_library_path_of_the_merged_environment_is_searched(kit: dict[str, Path], tmp_path: Path) -> None:
    content = tmp_path / "provider"
    (content / "private").mkdir(parents=True)
    shutil.copyfile(kit["root"] / "stack/src/libnothere.so", content / "private/libnothere.so.1")
    provider = _package(
        tmp_path / "provider.json",
        "provider",
        "provider",
        env={"prepend_path": {"LD_LIBRARY_PATH": "{prefix}/private"}},
    )
    top = _package(tmp_path / "top.json", "top", str(kit["root"] / "stack/broken"), ("provider.json",))
    report = _build(kit, tmp_path, provider, top)[0].closure
    assert report.ok, [f.line() for f in report.findings]


def test_symlinks_resolve_inside_the_image_never_on_the_host(kit: dict[str, Path], tmp_path: Path) -> None:
    # libselinux.so.1 exists on this machine but not in the image: a link to it, resolved on
    # the host, would be found.
    content = tmp_path / "linker"
    (content / "lib").mkdir(parents=True)
    (content / "lib/libnothere.so.1").symlink_to("/usr/lib/x86_64-linux-gnu/libselinux.so.1")
    (content / "lib/libgreet.so.1").symlink_to("../../../../../../../../usr/lib/x86_64-linux-gnu/libz.so.1")
    package = _package(tmp_path / "linker.json", "linker", "linker")
    top = _package(
        tmp_path / "top.json",
        "top",
        str(kit["root"] / "stack/broken"),
        ("linker.json",),
        env={"set": {"LD_LIBRARY_PATH": "/opt/stack/linker-1.0/lib"}},
    )
    report = _build(kit, tmp_path, package, top)[0].closure
    assert [f.name for f in report.findings] == ["libnothere.so.1"]


def test_wrong_machine_and_missing_interpreter_are_reported(kit: dict[str, Path], tmp_path: Path) -> None:
    need(BUSYBOX_ARM64.is_file(), f"{BUSYBOX_ARM64} missing: make {BUSYBOX_ARM64}")
    content = tmp_path / "mixed/bin"
    content.mkdir(parents=True)
    shutil.copyfile(BUSYBOX_ARM64, content / "busybox-arm64")
    shutil.copyfile(kit["root"] / "stack/hello/bin/hellocc", content / "needs-musl")
    # Point the interpreter at a musl loader the image does not have (same length path).
    data = (content / "needs-musl").read_bytes()
    old = b"/lib64/ld-linux-x86-64.so.2\0"
    new = b"/lib/ld-musl-x86_64.so.1\0".ljust(len(old), b"\0")
    (content / "needs-musl").write_bytes(data.replace(old, new, 1))
    package = _package(tmp_path / "mixed.json", "mixed", "mixed")
    report = _build(kit, tmp_path, package)[0].closure
    kinds = {(f.kind, f.binary) for f in report.findings}
    assert ("wrong-machine", "/opt/stack/mixed-1.0/bin/busybox-arm64") in kinds
    assert ("missing-interpreter", "/opt/stack/mixed-1.0/bin/needs-musl") in kinds
    machine = next(f for f in report.findings if f.kind == "wrong-machine")
    assert "EM_AARCH64 (64-bit, little endian)" in machine.line() and "linux/amd64" in machine.line()


def test_a_lying_elf_file_is_a_finding_never_a_traceback(kit: dict[str, Path], tmp_path: Path) -> None:
    content = tmp_path / "bad/lib"
    content.mkdir(parents=True)
    good = (kit["root"] / "stack/libgreet/lib/libgreet.so.1.0").read_bytes()
    (content / "libtruncated.so").write_bytes(good[:700])
    lying = bytearray(good)
    lying[0x20:0x28] = (len(good) * 4).to_bytes(8, "little")  # e_phoff far past the end
    (content / "liblying.so").write_bytes(bytes(lying))
    package = _package(tmp_path / "bad.json", "bad", "bad")
    report = _build(kit, tmp_path, package)[0].closure
    assert {f.kind for f in report.findings} == {"unreadable-elf"}
    lines = sorted(f.line() for f in report.findings)
    assert len(lines) == 2 and all("truncated or corrupt" in line for line in lines), lines
    assert all("\n" not in line and "Traceback" not in line for line in lines)


def test_layers_are_read_once_then_from_their_records(kit: dict[str, Path], tmp_path: Path) -> None:
    first = _build(kit, tmp_path, kit["hello"])[1]
    second = _build(kit, tmp_path, kit["hello"])[1]
    checked = [
        {e.subject: e.detail for e in events if e.kind == "layer-checked"} for events in (first, second)
    ]
    # The base is read once; the packages' layers were summarised while they were built.
    (base,) = set(checked[0]) - {"libgreet-1.0", "hello-1.0"}
    assert checked == [
        {base: "read", "libgreet-1.0": "from its record", "hello-1.0": "from its record"},
        {base: "from its record", "libgreet-1.0": "from its record", "hello-1.0": "from its record"},
    ]


def test_the_same_image_checked_again_takes_the_report_from_its_record(
    kit: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _build(kit, tmp_path, kit["broken"])[0].closure
    assert not first.ok
    stacked: list[int] = []
    real_apply = FileIndex.apply

    def counting_apply(self: FileIndex, summary: LayerSummary) -> list[tuple[str, ElfInfo | str]]:
        stacked.append(1)
        return real_apply(self, summary)

    monkeypatch.setattr(FileIndex, "apply", counting_apply)
    again = _build(kit, tmp_path, kit["broken"])[0].closure
    assert again == first and not stacked  # findings and all, nothing stacked
    # Anything the report depends on checks again: the environment...
    fixed = _build(kit, tmp_path, kit["broken"], env=("LD_LIBRARY_PATH=/opt/stack/hello-1.0/lib",))[0]
    assert stacked and fixed.closure.findings[0].tried[0] == ("/opt/stack/hello-1.0/lib", "LD_LIBRARY_PATH")
    # ...and a damaged record is checked again, never trusted.
    cache = BlobCache(tmp_path / "cache")
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "cache/records").glob("*.json")]
    reports = [key for key in keys if "/report/" in key]
    assert len(reports) == 2, keys  # one per environment
    for key in reports:
        cache.put_record(key, {"platform": "linux/amd64", "checked": "many"})
    stacked.clear()
    assert _build(kit, tmp_path, kit["broken"])[0].closure == first and stacked


def _tricky_tree(kit: dict[str, Path], root: Path) -> Path:
    """Every kind of member the summary distinguishes, real ELF files among them."""
    stack = kit["root"] / "stack"
    shutil.copytree(stack / "hello", root / "tree", symlinks=True)
    tree = root / "tree"
    shutil.copytree(stack / "libgreet/lib", tree / "greet", symlinks=True)
    good = (stack / "libgreet/lib/libgreet.so.1.0").read_bytes()
    (tree / "lib/libtruncated.so").write_bytes(good[:700])
    far = bytearray(good)
    far[0x20:0x28] = (2**64 - 64).to_bytes(8, "little")  # e_phoff past any file: EINVAL or overflow
    (tree / "lib/libfar.so").write_bytes(bytes(far))
    (tree / "etc/ld.so.conf.d").mkdir(parents=True)
    (tree / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (tree / "etc/ld.so.conf.d/stack.conf").write_text("/opt/stack/lib\n")
    (tree / "lib/libdata.so.txt").write_text("not ELF, but library-like\n")
    os.link(tree / "greet/libgreet.so.1.0", tree / "lib/libgreet-hardlink.so")
    (tree / "lib/libabs.so").symlink_to("/usr/lib/x86_64-linux-gnu/libz.so.1")
    return tree


def test_a_layer_is_summarised_as_it_is_written_exactly_as_read_back(
    kit: dict[str, Path], tmp_path: Path
) -> None:
    tree = _tricky_tree(kit, tmp_path)
    cache = BlobCache(tmp_path / "cache")
    media = OCI
    tarball = tmp_path / "tree.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname=".")
        whiteout = tarfile.TarInfo("lib/.wh.libgone.so")
        tar.addfile(whiteout, io.BytesIO(b""))
        tar.addfile(tarfile.TarInfo("share/.wh..wh..opq"), io.BytesIO(b""))

    def read_back(digest: Digest) -> LayerSummary:
        with cache.open(digest) as stream:
            return summarize_layer(stream, str(digest), inspect_elves=True)

    summaries = []
    for entries in (
        directory_entries(tree),  # at the root: the loader's configuration is /etc/ld.so.conf
        with_file(directory_entries(tree), "etc/ld.so.conf", b"/generated\n"),
    ):
        seen = LayerSummariser()
        blob = build_layer(entries, cache, media_types=media, observer=seen)
        summaries.append(seen.summary())
        assert seen.summary() == read_back(blob.digest) and not seen.incomplete
    with tarball_entries(tarball, "", allow_whiteouts=True, tmpdir=tmp_path) as tar_entries:
        seen = LayerSummariser()
        blob = build_layer(tar_entries, cache, media_types=media, observer=seen)
        assert seen.summary() == read_back(blob.digest)
    summaries.append(seen.summary())
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(tree, arcname="opt/tree")
    seen = LayerSummariser()
    adopted = adopt_tarball(plain, "opt/tree", media, observer=seen)
    with open(plain, "rb") as f:
        assert seen.summary() == summarize_layer(f, "plain", inspect_elves=True)
    summaries.append(seen.summary())

    for summary, top in zip(summaries, ("", "", "", "opt/tree/"), strict=True):
        kinds = {entry[0] for entry in summary.entries}
        assert {"d", "l", "h", "f"} | ({"t"} if not top else set()) <= kinds, kinds
        infos = dict(summary.elves)
        assert isinstance(infos[f"{top}bin/hello"], ElfInfo)
        assert "truncated or corrupt" in str(infos[f"{top}lib/libtruncated.so"])
        assert "truncated or corrupt" in str(infos[f"{top}lib/libfar.so"])
    assert {"w", "o"} <= {entry[0] for entry in summaries[2].entries}
    assert ("t", "etc/ld.so.conf", "/generated\n") in summaries[1].entries
    # The record is kept under the layer's digest, where the check looks first.
    seen.remember(cache, adopted.digest)
    assert cache.get_record(f"closure/v1/elves/{adopted.digest}") == seen.summary().to_json()


def test_a_source_that_cannot_be_read_again_leaves_no_record(kit: dict[str, Path], tmp_path: Path) -> None:
    tree = _tricky_tree(kit, tmp_path)
    cache = BlobCache(tmp_path / "cache")

    class Vanishing(LayerSummariser):
        def entry(self, entry: TarEntry, head: bytes) -> None:
            if entry.name == "opt/tree/bin/hello":
                os.unlink(tree / "bin/hello")  # gone once the writer has copied it
            super().entry(entry, head)

    seen = Vanishing()
    blob = build_layer(directory_entries(tree, "opt/tree"), cache, media_types=OCI, observer=seen)
    assert seen.incomplete
    seen.remember(cache, blob.digest)
    assert cache.get_record(f"closure/v1/elves/{blob.digest}") is None


def test_check_off_does_not_look(kit: dict[str, Path], tmp_path: Path) -> None:
    result, events = _build(kit, tmp_path, kit["broken"], check="off")
    assert result.closure is None
    assert not [e for e in events if e.kind == "layer-checked"]


# --- the file index: a runtime's view of stacked layers -----------------------------------------


def _summary(*entries: tuple[object, ...]) -> LayerSummary:
    return LayerSummary(tuple(entries))


def test_members_land_through_merged_usr_links_and_whiteouts_hide_lower_files() -> None:
    index = FileIndex()
    index.apply(_summary(("l", "lib", "usr/lib"), ("d", "usr/lib"), ("f", "usr/lib/libz.so.1", None)))
    index.apply(_summary(("f", "lib/libnew.so.1", None)))  # lands in usr/lib through the link
    assert index.file("/lib/libnew.so.1") == ("usr/lib/libnew.so.1", None)
    index.apply(_summary(("f", "lib/libz.so.1", None), ("w", "lib/libz.so.1")))  # own files survive
    assert index.file("/usr/lib/libz.so.1") is not None
    index.apply(_summary(("w", "lib/libz.so.1")))
    assert index.file("/usr/lib/libz.so.1") is None
    index.apply(_summary(("o", "usr/lib")))
    assert index.file("/lib/libnew.so.1") is None


def test_symlink_resolution_is_chroot_style_and_bounded() -> None:
    index = FileIndex(links={"escape": "../../../../etc", "abs": "/usr", "a": "b", "b": "a"})
    assert index.resolve("/escape/passwd") == "etc/passwd"
    assert index.resolve("abs/lib/x") == "usr/lib/x"
    assert index.resolve("/a/x") is None


_PARTS = st.sampled_from(["a", "b", "lib", "usr", "..", ".", ".x", ""])


@settings(max_examples=300, deadline=None)
@given(
    links=st.dictionaries(
        st.lists(_PARTS.filter(lambda p: p not in ("", ".", "..")), min_size=1, max_size=3).map("/".join),
        st.lists(_PARTS, min_size=1, max_size=4).map("/".join).map(lambda t: t or "."),
        max_size=5,
    ),
    path=st.lists(_PARTS, min_size=1, max_size=5).map("/".join),
    follow_last=st.booleans(),
)
def test_the_fast_path_of_resolve_agrees_with_the_general_walk(
    links: dict[str, str], path: str, follow_last: bool
) -> None:
    index = FileIndex(links=links)
    # A leading "./" never takes the fast path and names the same path.
    assert index.resolve(path, follow_last=follow_last) == index.resolve("./" + path, follow_last=follow_last)


def test_default_directories_follow_the_platform() -> None:
    arm64 = default_directories(Platform("linux", "arm64"))
    assert arm64[:2] == ("/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
    assert "/lib64" not in default_directories(Platform("linux", "386"))
    musl = default_directories(Platform("linux", "amd64"), musl=True)
    assert musl == ("/lib", "/usr/local/lib", "/usr/lib")


# --- ELF reading: truncated, corrupt and random input ------------------------------------------


def test_platform_machine_numbers_are_the_gabis() -> None:
    from elftools.elf.enums import ENUM_E_MACHINE

    names = {"amd64": "EM_X86_64", "arm64": "EM_AARCH64", "386": "EM_386", "arm": "EM_ARM"}
    names |= {"ppc64le": "EM_PPC64", "ppc64": "EM_PPC64", "s390x": "EM_S390", "riscv64": "EM_RISCV"}
    names |= {"mips64le": "EM_MIPS"}
    for arch, name in names.items():
        expected = expected_machine(Platform("linux", arch))
        assert expected is not None and expected.machine == ENUM_E_MACHINE[name], arch
        assert machine_name(expected.machine) == name


def test_elf_identity_reads_twenty_bytes() -> None:
    head = Path("/bin/busybox").read_bytes()[:20] if Path("/bin/busybox").is_file() else b""
    need(bool(head), "/bin/busybox missing")
    identity = elf_identity(head)
    assert identity is not None and identity.elf_class == 64
    assert elf_identity(b"\x7fELF") is None and elf_identity(b"#!/bin/sh\n" * 3) is None


_SAMPLE = Path("/usr/lib/x86_64-linux-gnu/libz.so.1").resolve()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_read_elf_on_mutated_files_returns_or_raises_one_clear_error(data: st.DataObject) -> None:
    import io

    need(_SAMPLE.is_file(), f"{_SAMPLE} missing")
    original = _SAMPLE.read_bytes()[:65536] + b"\0" * 16
    blob = bytearray(original)
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)))
    for _ in range(data.draw(st.integers(min_value=0, max_value=12))):
        position = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
        blob[position] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        info = read_elf(io.BytesIO(bytes(blob[:cut])), "/fuzz.so")
    except ElfFormatError as exc:
        message = str(exc)
        assert message.startswith("/fuzz.so") and "\n" not in message
    else:
        assert isinstance(info.needed, tuple)


# --- end to end: the CLI, a real registry and podman -------------------------------------------


@pytest.mark.integration
def test_cli_check_error_pushes_nothing_and_the_passing_stack_runs(
    kit: dict[str, Path], registry: DistributionRegistry, podman: Podman, tmp_path: Path
) -> None:
    flags = ("--insecure-registry", registry.host, "--cache-dir", str(tmp_path / "cache"))
    base = f"{registry.host}/base/debian:12"
    ok(*flags, "copy", _base(kit), base)
    code, out, err = cli(
        *flags,
        "build",
        "--base-image",
        base,
        "--repo",
        f"{registry.host}/closure/broken",
        "--check=error",
        str(kit["broken"]),
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "needs libnothere.so.1" in err and "nothing was written" in err, err
    # Not one blob, not one manifest: the repository does not even exist in the registry.
    stored = registry.data_dir / "docker/registry/v2/repositories/closure"
    assert not stored.exists(), list(stored.rglob("*"))

    out = ok(
        *flags,
        "build",
        "--base-image",
        base,
        "--tag",
        f"{registry.host}/closure/hello:1",
        "--json",
        str(kit["hello"]),
    )
    closure = json.loads(out)["closure"]
    assert closure["ok"] and closure["checked"] == 4
    # Pushed to the base's own registry, the base layer was streamed for the check, not stored.
    base_layer = json.loads(ok(*flags, "inspect", "--json", base))["layers"][0]["digest"]
    assert not (tmp_path / "cache/blobs/sha256" / base_layer.split(":")[1]).exists()
    ran = podman.podman("run", "--rm", f"{registry.host}/closure/hello:1", "/opt/stack/hello-1.0/bin/hello")
    assert ran.returncode == 0 and "hello hello from libgreet (42)" in ran.stdout, ran.stderr
    ran = podman.podman("run", "--rm", f"{registry.host}/closure/hello:1", "/opt/stack/hello-1.0/bin/hellocc")
    assert ran.returncode == 0 and "hellocc with helper" in ran.stdout, ran.stderr


@pytest.mark.integration
def test_cli_warns_by_default_and_lists_findings_as_json(kit: dict[str, Path], tmp_path: Path) -> None:
    args = (
        "--cache-dir",
        str(tmp_path / "cache"),
        "build",
        "--base-image",
        _base(kit),
        "--output",
        f"oci:{tmp_path / 'out'}:t",
        str(kit["broken"]),
    )
    code, out, err = cli(*args)
    assert code == 0 and "warning: /opt/stack/broken-1.0/bin/broken (broken-1.0) needs libnothere.so.1" in err
    code, out, _ = cli(*args, "--json")
    findings = json.loads(out)["closure"]["findings"]
    assert [f["name"] for f in findings] == ["libnothere.so.1"]
    assert findings[0]["tried"][0]["via"] == "ld.so.conf"


def test_the_loader_agrees_the_broken_program_cannot_run(kit: dict[str, Path]) -> None:
    # The broken program really fails in the base (so the check's verdict is the loader's).
    need(shutil.which("chroot") is not None, "chroot missing")
    rootfs = kit["rootfs"]
    target = rootfs / "opt/broken"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kit["root"] / "stack/broken/bin/broken", target / "broken")
    (target / "broken").chmod(0o755)
    try:
        proc = subprocess.run(
            ["chroot", str(rootfs), "/opt/broken/broken"], capture_output=True, text=True, check=False
        )
    finally:
        shutil.rmtree(target.parent)
    assert proc.returncode != 0 and "libnothere.so.1" in proc.stderr


def test_each_checks_every_image_before_writing_any(kit: dict[str, Path], tmp_path: Path) -> None:
    common = ("--cache-dir", str(tmp_path / "cache"), "build", "--base-image", _base(kit), "--each")
    layout = ("--output", f"oci:{tmp_path / 'out'}")
    code, _, err = cli(*common, *layout, "--check=error", str(kit["broken"]))
    assert code == 2 and "broken-1.0" in err and "libnothere.so.1" in err
    assert not (tmp_path / "out").exists()
    out = ok(*common, *layout, "--json", str(kit["hello"]))
    assert [r["closure"]["ok"] for r in json.loads(out)] == [True, True]


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_spack_stack_on_the_debian_base(
    kit: dict[str, Path], spack12: Any, registry: DistributionRegistry, podman: Podman, tmp_path: Path
) -> None:
    """Spack's kit-hello (RUNPATH to kit-lib and gcc-runtime) built for real: on the plain base
    the check finds what a Fortran program would hit (gcc-runtime's libgfortran.so.5 has no
    RUNPATH to the libquadmath.so.0 beside it); with Debian's libquadmath0 in the base it passes,
    and the image runs."""
    spack12.run("install", "kit-hello")
    prefixes = [
        Path(spack12.run("location", "-i", name).stdout.strip())
        for name in ("gcc-runtime", "kit-lib", "kit-data", "kit-hello")
    ]
    report = _build(kit, tmp_path / "plain", *prefixes)[0].closure
    assert [(Path(f.binary).name, f.package.split("-")[0], f.name) for f in report.findings] == [
        ("libgfortran.so.5", "gcc", "libquadmath.so.0")
    ], [f.line() for f in report.findings]
    rootfs = tmp_path / "rootfs"
    shutil.copytree(kit["rootfs"], rootfs, symlinks=True)
    quadmath = Path("/usr/lib/x86_64-linux-gnu/libquadmath.so.0")
    need(quadmath.exists(), f"{quadmath} missing: apt-get install libquadmath0")
    shutil.copyfile(quadmath.resolve(), rootfs / "usr/lib/x86_64-linux-gnu/libquadmath.so.0")
    flags = ("--insecure-registry", registry.host, "--cache-dir", str(tmp_path / "cache"))
    base = f"{registry.host}/closure/debian-quadmath:12"
    ok(*flags, "import", str(rootfs), "--tag", base)
    target = f"{registry.host}/closure/kit-hello:1"
    out = ok(
        *flags, "build", "--base-image", base, "--tag", target, "--check=error", "--json", *map(str, prefixes)
    )
    closure = json.loads(out)["closure"]
    assert closure["ok"] and closure["packages"] == 4, closure
    ran = podman.podman("run", "--rm", target, str(prefixes[-1] / "bin/kit-hello"))
    assert ran.returncode == 0 and "hello from libkit 1.0 (answer 42)" in ran.stdout, ran.stderr
