"""Spack build caches both ways, with real Spack 1.2 and 0.23 (the kit in ../shared/spack).

Every image imagesmith pushes from a Spack package must be a Spack build-cache entry that
works: ``spack buildcache list`` shows it, ``spack install --cache-only`` installs it into
another install tree (so Spack relocates it) and the installed program runs. And every build
cache Spack writes must be read: layout-3 and layout-2 directories, OCI caches in a registry.

Spack reads indexes and base images over TLS only here (tests/spackkit.py, ../shared/spack/
README.md), so everything goes through the ``tls_registry`` fixture and its CA. A "clean Spack"
is the kit's Spack with one more configuration scope: an install tree and download cache of
its own (nothing installed, nothing cached) and the mirror under test as its only mirror.
The packages are the kit's (kit-hello, linking kit-lib, running kit-data, on gcc-runtime),
built for real once per machine (tests/.data) or per CI run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import ok
from conftest import need
from servers import DistributionRegistry, Podman, busybox_rootfs
from spackkit import SpackKit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELLO_OUTPUT = "kit-hello 1.0: hello from libkit 1.0 (answer 42)"
GREET_OUTPUT = "greetings from kit-data 1.0"
RUNTIME = ("gcc-runtime", "kit-data", "kit-lib", "kit-hello")  # kit-hello's runtime closure


def installed_specs(kit: SpackKit) -> dict[str, tuple[str, str, Path]]:
    """``name -> (version, hash, prefix)`` of what the kit's Spack has installed."""
    out = kit.run("find", "--format", "{name} {version} {hash} {prefix}", check=False).stdout
    rows = [line.split() for line in out.splitlines()]
    return {r[0]: (r[1], r[2], Path(r[3])) for r in rows if len(r) == 4 and r[3].startswith("/")}


class Installed:
    """A kit Spack with kit-hello installed for real, and what the tests need to know of it."""

    def __init__(self, kit: SpackKit) -> None:
        self.kit = kit
        # Every spack command costs seconds (it loads the package repository): ask once.
        found = installed_specs(kit)
        if not set(RUNTIME) <= set(found):
            kit.run("install", "kit-hello", timeout=1800)
            found = installed_specs(kit)
        self.versions = {name: found[name][0] for name in RUNTIME}
        self.hashes = {name: found[name][1] for name in RUNTIME}
        self.prefixes = {name: found[name][2] for name in RUNTIME}

    def tag(self, name: str) -> str:
        """Spack's tag of the package ``name`` in an OCI build cache."""
        return f"{name}-{self.versions[name]}-{self.hashes[name]}.spack"


@pytest.fixture(scope="module")
def kit12(spack12: SpackKit) -> Installed:
    return Installed(spack12)


@pytest.fixture(scope="module")
def kit023(spack023: SpackKit) -> Installed:
    return Installed(spack023)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import os

    saved = os.environ.get("IMAGESMITH_CACHE_DIR")
    os.environ["IMAGESMITH_CACHE_DIR"] = str(tmp_path_factory.mktemp("kit-cache"))
    yield
    if saved is None:
        os.environ.pop("IMAGESMITH_CACHE_DIR", None)
    else:
        os.environ["IMAGESMITH_CACHE_DIR"] = saved


def imagesmith(tls: DistributionRegistry, *args: str) -> str:
    """The CLI against the TLS registry (its CA trusted)."""
    return ok("--ca-cert", str(tls.ca_cert), *args)


@pytest.fixture(scope="module")
def glibc_base(
    tls_registry: DistributionRegistry, kit12: Installed, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A base image for the kit's programs: busybox plus the host's C library (what ldd says
    kit-hello needs outside Spack), on the TLS registry, where Spack 1.2 fetches base images."""
    need(Path("/bin/busybox").is_file(), "/bin/busybox missing")
    root = busybox_rootfs(tmp_path_factory.mktemp("glibc-base") / "rootfs")
    binary = kit12.prefixes["kit-hello"] / "bin" / "kit-hello"
    listed = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for line in listed.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/") and not path.startswith(str(kit12.kit.directory)):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(path).resolve(), target)
            target.chmod(0o755)
    reference = f"{tls_registry.host}/base/glibc:1"
    imagesmith(tls_registry, "import", str(root), "--tag", reference)
    return reference


class SpackScope:
    """The kit's Spack seen through one more configuration scope, with ``mirrors`` as its only
    mirrors. ``clean`` (the default) also gives it an install tree of its own (a shorter path
    than the kit's, so Spack relocates binaries too) and a download cache of its own: a Spack
    that has installed nothing. Without it, the kit's installs are there to push."""

    def __init__(
        self,
        installed: Installed,
        root: Path,
        tls: DistributionRegistry,
        *,
        clean: bool = True,
        **mirrors: str,
    ) -> None:
        self.kit = installed.kit
        self.tree = root / "t"
        self.scope = root / "scope"
        self.scope.mkdir(parents=True)
        self.ca = str(tls.ca_cert)
        if clean:
            (self.scope / "config.yaml").write_text(
                f"config:\n  install_tree:\n    root: {self.tree}\n  source_cache: {root / 'downloads'}\n"
            )
        body = "".join(f"  {name}:\n    url: {url}\n    signed: false\n" for name, url in mirrors.items())
        (self.scope / "mirrors.yaml").write_text("mirrors::\n" + (body or "  {}\n"))

    def run(self, *args: str, timeout: float = 900) -> str:
        """``spack -C SCOPE ARGS`` (trusting the test CA); its standard output."""
        env = {"SSL_CERT_FILE": self.ca}
        return self.kit.run("-C", str(self.scope), *args, env=env, timeout=timeout).stdout

    def listed(self) -> set[str]:
        """``name/hash`` of every spec ``spack buildcache list -aL`` shows (``HASH NAME@VER``)."""
        out = self.run("buildcache", "list", "-aL")
        rows = [line.split() for line in out.splitlines() if line and not line.startswith("--")]
        return {f"{row[1].split('@')[0]}/{row[0]}" for row in rows if len(row) >= 2 and len(row[0]) == 32}

    def install_and_run(self, installed: Installed) -> Path:
        """``spack install --cache-only`` kit-hello by hash; check both programs run from the
        new tree, relocated; return kit-hello's new prefix."""
        out = self.run("install", "--cache-only", "--no-check-signature", f"/{installed.hashes['kit-hello']}")
        # Spack names each prefix it installed ("[+] /prefix"); Spack's projections end in the hash.
        done = [Path(line.split()[1]) for line in out.splitlines() if line.startswith("[+] /")]
        found = {name: next(p for p in done if p.name.endswith(h)) for name, h in installed.hashes.items()}
        prefix, lib, data = (found[name] for name in ("kit-hello", "kit-lib", "kit-data"))
        assert all(p.is_relative_to(self.tree) for p in found.values())
        ran = subprocess.run([prefix / "bin" / "kit-hello"], capture_output=True, text=True, check=True)
        assert ran.stdout.strip() == HELLO_OUTPUT
        greet = subprocess.run([data / "bin" / "kit-greet"], capture_output=True, text=True, check=True)
        assert greet.stdout.strip() == GREET_OUTPUT
        # Relocated: the binary's RUNPATH and the pkg-config file name the new prefixes only.
        old_lib = str(installed.prefixes["kit-lib"]).encode()
        binary = (prefix / "bin" / "kit-hello").read_bytes()
        assert str(lib).encode() in binary and old_lib not in binary
        pc = (lib / "lib" / "pkgconfig" / "kit.pc").read_text()
        assert str(lib) in pc and old_lib.decode() not in pc
        return prefix


def mirror(tls: DistributionRegistry, repo: str) -> str:
    return f"oci://{tls.host}/{repo}"


def manifest_of(tls: DistributionRegistry, repo: str, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of ``repo:tag``, read as Spack reads them."""
    import requests

    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    verify = str(tls.ca_cert)
    manifest = requests.get(f"{tls.url}/v2/{repo}/manifests/{tag}", headers=accept, verify=verify, timeout=30)
    manifest.raise_for_status()
    doc = manifest.json()
    config = requests.get(f"{tls.url}/v2/{repo}/blobs/{doc['config']['digest']}", verify=verify, timeout=30)
    config.raise_for_status()
    return doc, config.json()


def push_each(tls: DistributionRegistry, base: str, repo: str, *packages: str) -> list[dict[str, Any]]:
    out = imagesmith(
        tls, "build", "--each", "--base-image", base, "--repo", f"{tls.host}/{repo}", "--json", *packages
    )
    results: list[dict[str, Any]] = json.loads(out)
    return results


# ------------------------------------------------------------------------------ Spack 1.2


def test_imagesmith_pushes_spack_12_installs_and_the_image_runs(
    kit12: Installed, tls_registry: DistributionRegistry, glibc_base: str, podman: Podman, tmp_path: Path
) -> None:
    """Install prefixes -> images -> index -> a clean Spack lists, installs (relocated), runs."""
    tls = tls_registry
    prefixes = [str(kit12.prefixes[name]) for name in RUNTIME]
    results = push_each(tls, glibc_base, "from-prefixes-12", *prefixes)
    assert [r["tag"] for r in results] == [kit12.tag(n) for n in RUNTIME]  # dependencies first
    assert all(r["spack"] and not r["notes"] for r in results)
    out = json.loads(imagesmith(tls, "index", "update", f"{tls.host}/from-prefixes-12", "--json"))
    assert out["spack"]["packages"] == 4
    listed = json.loads(
        imagesmith(
            tls, "index", "list", "--index-tag", "index.spack", f"{tls.host}/from-prefixes-12", "--json"
        )
    )
    assert sorted(e["tag"] for e in listed["entries"]) == sorted(kit12.tag(n) for n in RUNTIME)

    spack = SpackScope(kit12, tmp_path, tls, images=mirror(tls, "from-prefixes-12"))
    assert {f"{n}/{kit12.hashes[n]}" for n in RUNTIME} <= spack.listed()
    spack.install_and_run(kit12)

    # And the image runs as a container.
    podman.add_insecure_registry(tls.host)
    ran = podman.podman(
        "run",
        "--rm",
        f"{tls.host}/from-prefixes-12:{kit12.tag('kit-hello')}",
        "sh",
        "-c",
        "kit-hello && kit-greet",
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [HELLO_OUTPUT, GREET_OUTPUT]


def test_a_generated_makefile_builds_spack_12_prefixes_and_the_image_runs(
    kit12: Installed, tls_registry: DistributionRegistry, glibc_base: str, podman: Podman, tmp_path: Path
) -> None:
    """A Makefile over install prefixes: each rule gives its build every prefix the image needs
    (Spack finds dependencies by hash among the packages given), so `make` builds the stack."""
    tls = tls_registry
    repo = f"{tls.host}/makefile-12"
    prefixes = [str(kit12.prefixes[name]) for name in RUNTIME]
    imagesmith(
        tls,
        "makefile",
        "--base-image",
        glibc_base,
        "--repo",
        repo,
        "-o",
        str(tmp_path / "Makefile"),
        prefixes[-1],
        *prefixes[:-1],
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    run = subprocess.run(
        ["make", "-j", "2", f"IMAGESMITH={shlex.quote(sys.executable)} -m imagesmith", "index"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"make failed:\n{run.stdout}\n{run.stderr}"
    stamps = {
        p.name: json.loads(p.read_text()) for p in (tmp_path / ".imagesmith" / "stamps").glob("*.pushed")
    }
    assert {r["tag"] for r in stamps.values()} == {kit12.tag(n) for n in RUNTIME}
    podman.add_insecure_registry(tls.host)
    ran = podman.podman(
        "run", "--rm", f"{repo}:{kit12.tag('kit-hello')}", "sh", "-c", "kit-hello && kit-greet"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [HELLO_OUTPUT, GREET_OUTPUT]


@pytest.fixture(scope="module")
def spack12_pushed(
    kit12: Installed,
    tls_registry: DistributionRegistry,
    glibc_base: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Spack 1.2 pushes kit-hello: to a layout-3 directory and to an OCI cache (on the glibc
    base), and updates both indexes."""
    tls = tls_registry
    root = tmp_path_factory.mktemp("spack12-push")
    fs = root / "fscache"
    spack = SpackScope(kit12, root / "pusher", tls, clean=False, spack12=mirror(tls, "spack-pushed-12"))
    hello = f"/{kit12.hashes['kit-hello']}"
    spack.run("buildcache", "push", "--unsigned", str(fs), hello)
    spack.run("buildcache", "update-index", str(fs))
    spack.run("buildcache", "push", "--unsigned", "--base-image", glibc_base, "spack12", hello)
    spack.run("buildcache", "update-index", "spack12")
    return {"fs": fs, "repo": "spack-pushed-12"}


def test_spack_12_layout_3_cache_tarballs_become_the_layers(
    kit12: Installed,
    tls_registry: DistributionRegistry,
    glibc_base: str,
    spack12_pushed: dict[str, Any],
    tmp_path: Path,
) -> None:
    tls = tls_registry
    fs: Path = spack12_pushed["fs"]
    assert (fs / "v3" / "layout.json").is_file()
    results = push_each(tls, glibc_base, "from-layout3-12", str(fs))
    by_tag = {r["tag"]: r for r in results}
    assert set(by_tag) >= {kit12.tag(n) for n in RUNTIME}  # and the pushed build dependencies
    for name in RUNTIME:
        manifest = next((fs / "v3" / "manifests" / "spec" / name).glob("*.spec.manifest.json"))
        records = json.loads(manifest.read_text())["data"]
        (tarball,) = [r for r in records if r["mediaType"].startswith("application/vnd.spack.install")]
        # The layer is Spack's tarball: its digest is Spack's checksum, and so is the one Spack
        # itself pushed to its OCI cache (one blob for both).
        assert by_tag[kit12.tag(name)]["layers"][-1]["digest"] == f"sha256:{tarball['checksum']}"
        spack_manifest, spack_config = manifest_of(tls, spack12_pushed["repo"], kit12.tag(name))
        assert spack_manifest["layers"][-1]["digest"] == f"sha256:{tarball['checksum']}"
        _ours, our_config = manifest_of(tls, "from-layout3-12", kit12.tag(name))
        assert our_config["rootfs"]["diff_ids"][-1] == spack_config["rootfs"]["diff_ids"][-1]
        assert our_config["spec"] == spack_config["spec"]  # identical tag and spec
        # An image made from the install prefix carries its spec.json as read: the same spec.
        installed = json.loads((kit12.prefixes[name] / ".spack" / "spec.json").read_text())
        assert installed["spec"] == spack_config["spec"]
    imagesmith(tls, "index", "update", f"{tls.host}/from-layout3-12")
    spack = SpackScope(kit12, tmp_path, tls, images=mirror(tls, "from-layout3-12"))
    assert {f"{n}/{kit12.hashes[n]}" for n in RUNTIME} <= spack.listed()
    spack.install_and_run(kit12)


def test_spack_12_oci_cache_onto_another_base_without_a_download(
    kit12: Installed,
    tls_registry: DistributionRegistry,
    glibc_base: str,
    spack12_pushed: dict[str, Any],
    tmp_path: Path,
) -> None:
    from imagesmith.inputs.load import load_packages
    from imagesmith.pipeline.run import build_each
    from imagesmith.progress import ProgressEvent
    from imagesmith.registry.client import RegistryPool
    from imagesmith.registry.transport import RegistryOptions

    tls = tls_registry
    source = f"oci://{tls.host}/{spack12_pushed['repo']}:{kit12.tag('kit-hello')}"
    events: list[ProgressEvent] = []
    with RegistryPool(RegistryOptions(ca_cert=tls.ca_cert)) as pool:
        packages = load_packages([source], pool=pool)
        assert [p.name for p in packages][-1] == "kit-hello" and len(packages) == 4
        # One image per package: Spack installs every dependency from its own tag.
        results = build_each(
            glibc_base, packages, repo=f"{tls.host}/moved-12", pool=pool, progress=events.append
        )
    kinds = [e.kind for e in events]
    assert "blob-fetched" not in kinds and "layer-built" not in kinds
    assert kinds.count("blob-mounted") >= 4  # every package layer (and the base's), once
    assert sorted(r.tag for r in results) == sorted(kit12.tag(n) for n in RUNTIME)
    assert all(r.spack for r in results)
    imagesmith(tls, "index", "update", f"{tls.host}/moved-12")
    spack = SpackScope(kit12, tmp_path, tls, images=mirror(tls, "moved-12"))
    assert f"kit-hello/{kit12.hashes['kit-hello']}" in spack.listed()
    spack.install_and_run(kit12)


def test_spack_12_pushed_first_then_imagesmith_into_the_same_repository(
    kit12: Installed,
    tls_registry: DistributionRegistry,
    glibc_base: str,
    spack12_pushed: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Spack's images are there first; imagesmith's images of the same packages (from the
    layout-3 cache) find every package layer already there, and the repository stays a build
    cache Spack installs from, with imagesmith's index.spack."""
    from imagesmith.inputs.load import load_packages
    from imagesmith.pipeline.run import build_each
    from imagesmith.progress import ProgressEvent
    from imagesmith.registry.client import RegistryPool
    from imagesmith.registry.transport import RegistryOptions

    tls = tls_registry
    repo = spack12_pushed["repo"]
    events: list[ProgressEvent] = []
    with RegistryPool(RegistryOptions(ca_cert=tls.ca_cert)) as pool:
        packages = load_packages([str(spack12_pushed["fs"])], pool=pool)
        results = build_each(
            glibc_base, packages, repo=f"{tls.host}/{repo}", pool=pool, progress=events.append
        )
    uploaded = {e.subject for e in events if e.kind == "blob-uploaded"}
    layers = {str(r.packages[-1].layer.digest) for r in results}
    assert layers and not layers & uploaded  # one blob per package, Spack's
    imagesmith(tls, "index", "update", f"{tls.host}/{repo}")  # Spack's index.spack is replaced
    spack = SpackScope(kit12, tmp_path, tls, images=mirror(tls, repo))
    assert {f"{n}/{kit12.hashes[n]}" for n in RUNTIME} <= spack.listed()
    spack.install_and_run(kit12)


def test_spack_12_and_imagesmith_share_a_repository_both_ways(
    kit12: Installed, tls_registry: DistributionRegistry, glibc_base: str, tmp_path: Path
) -> None:
    """imagesmith pushes kit-hello's dependencies, Spack pushes kit-hello on top of them and
    rebuilds the index over imagesmith's images; imagesmith's index is Spack's, record for
    record; a clean Spack installs from it."""
    tls = tls_registry
    repo = "shared-12"
    deps = [str(kit12.prefixes[name]) for name in ("gcc-runtime", "kit-data", "kit-lib")]
    ours = {r["tag"]: r for r in push_each(tls, glibc_base, repo, *deps)}
    imagesmith(tls, "index", "update", f"{tls.host}/{repo}")
    ours_db = json.loads(spack_database(tls, repo))
    spack = SpackScope(kit12, tmp_path / "pusher", tls, clean=False, shared=mirror(tls, repo))
    spack.run(
        "buildcache",
        "push",
        "--unsigned",
        "--base-image",
        glibc_base,
        "shared",
        f"/{kit12.hashes['kit-hello']}",
    )
    manifest, _config = manifest_of(tls, repo, kit12.tag("kit-hello"))
    layers = [layer["digest"] for layer in manifest["layers"]]
    for tag, result in ours.items():
        assert result["layers"][-1]["digest"] in layers, tag  # Spack took imagesmith's layers
    spack.run("buildcache", "update-index", "shared")
    spack_db = json.loads(spack_database(tls, repo))["database"]
    imagesmith(tls, "index", "update", f"{tls.host}/{repo}")  # replaces Spack's: it is Spack's
    again = json.loads(spack_database(tls, repo))["database"]
    assert again["version"] == spack_db["version"] == "8"
    assert again["installs"] == spack_db["installs"]  # the same database Spack writes
    assert set(ours_db["database"]["installs"]) < set(again["installs"])
    clean = SpackScope(kit12, tmp_path / "clean", tls, shared=mirror(tls, repo))
    clean.install_and_run(kit12)


def spack_database(tls: DistributionRegistry, repo: str) -> bytes:
    """The bytes of the database under ``repo:index.spack``, read as Spack reads them."""
    import requests

    got = requests.get(
        f"{tls.url}/v2/{repo}/manifests/index.spack",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        verify=str(tls.ca_cert),
        timeout=30,
    )
    got.raise_for_status()
    layer = got.json()["layers"][0]["digest"]
    blob = requests.get(f"{tls.url}/v2/{repo}/blobs/{layer}", verify=str(tls.ca_cert), timeout=30)
    blob.raise_for_status()
    return blob.content


# ------------------------------------------------------------------------------ Spack 0.23


def test_spack_023_both_ways(
    kit023: Installed, kit12: Installed, tls_registry: DistributionRegistry, glibc_base: str, tmp_path: Path
) -> None:
    """0.23's layout-2 cache and install prefixes -> images -> a version-7 index, which a clean
    0.23 installs from (relocated) and 1.2 lists."""
    tls = tls_registry
    fs = tmp_path / "fscache"
    pusher = SpackScope(kit023, tmp_path / "pusher", tls, clean=False)
    pusher.run("buildcache", "push", "--unsigned", str(fs), f"/{kit023.hashes['kit-hello']}")
    assert (fs / "build_cache").is_dir()
    from_cache = {r["tag"]: r for r in push_each(tls, glibc_base, "from-layout2-023", str(fs))}
    for name in RUNTIME:
        spec_file = next((fs / "build_cache").glob(f"*-{name}-*-{kit023.hashes[name]}.spec.json"))
        checksum = json.loads(spec_file.read_text())["binary_cache_checksum"]["hash"]
        assert from_cache[kit023.tag(name)]["layers"][-1]["digest"] == f"sha256:{checksum}"
    out = json.loads(imagesmith(tls, "index", "update", f"{tls.host}/from-layout2-023", "--json"))
    assert out["spack"]["packages"] == 4
    assert json.loads(spack_database(tls, "from-layout2-023"))["database"]["version"] == "7"

    prefixes = [str(kit023.prefixes[name]) for name in RUNTIME]
    push_each(tls, glibc_base, "from-prefixes-023", *prefixes)
    imagesmith(tls, "index", "update", f"{tls.host}/from-prefixes-023")
    # Both repositories are build caches 0.23 reads; it installs (relocated) from the images
    # imagesmith made of its prefixes (their relocation record is imagesmith's). The images of
    # its tarballs hold its own bytes, installed the same way by 1.2 in the layout-3 test.
    listed = SpackScope(kit023, tmp_path / "lister", tls, images=mirror(tls, "from-layout2-023")).listed()
    assert {f"{n}/{kit023.hashes[n]}" for n in RUNTIME} <= listed
    clean = SpackScope(kit023, tmp_path / "clean", tls, images=mirror(tls, "from-prefixes-023"))
    assert {f"{n}/{kit023.hashes[n]}" for n in RUNTIME} <= clean.listed()
    clean.install_and_run(kit023)
    # Spack 1.2 reads a version-7 index too.
    newer = SpackScope(kit12, tmp_path / "newer", tls, images=mirror(tls, "from-prefixes-023"))
    assert f"kit-hello/{kit023.hashes['kit-hello']}" in newer.listed()
