"""Shared fixtures: real registries (plain, TLS, Basic, Bearer), podman, a busybox rootfs.

Missing system tools skip the test locally, and fail it when ``CI`` is ``true``/``1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import (
    DistributionRegistry,
    Podman,
    TokenIssuer,
    busybox_rootfs,
    install_hint,
    overlay_available,
    tool_available,
)
from spackkit import SpackKit, kit_available, kit_directory, kit_hint

# The CLI's progress lines (stderr, also without a terminal) are left out of the tests' output,
# which check stderr for the one line an error makes; test_interrupt.py turns them back on.
os.environ.setdefault("IMAGESMITH_PROGRESS", "none")

BASIC_USERS = {"alice": "s3cret-alice"}
TOKEN_USERS = {"bob": "s3cret-bob"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def need(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) the current test unless ``condition`` holds."""
    if not condition:
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def requires(condition: bool, reason: str) -> pytest.MarkDecorator:
    """A marker that skips a test locally when ``condition`` is false, but runs it in CI (where
    it then fails), so a missing capability on the CI machine never passes silently."""
    return pytest.mark.skipif(not condition and not in_ci(), reason=reason)


def need_tool(name: str) -> None:
    """Require system executable ``name`` (e.g. docker-registry, podman, skopeo, umoci, docker)."""
    need(tool_available(name), f"{name} not found on PATH: {install_hint(name)}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real servers/tools (registry, podman)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    _hermetic_host_settings()


def _hermetic_host_settings() -> None:
    """No registries.conf, drop-ins or certs.d of the machine (a Fedora host's search
    registries would make short names ambiguous): tests that want some write their own."""
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="imagesmith-hostconf-"))
    root.chmod(0o755)  # as /etc/containers is: tests that drop to user nobody read it too
    atexit.register(shutil.rmtree, root, True)
    (root / "registries.conf").write_text("")
    (root / "registries.conf.d").mkdir()
    (root / "certs.d").mkdir()
    os.environ.setdefault("CONTAINERS_REGISTRIES_CONF", str(root / "registries.conf"))
    os.environ.setdefault("IMAGESMITH_REGISTRIES_CONF_DIR", str(root / "registries.conf.d"))
    os.environ.setdefault("IMAGESMITH_CERTS_DIR", str(root / "certs.d"))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """Plain http, no auth."""
    need_tool("docker-registry")
    with DistributionRegistry(workdir=tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """https with a throwaway CA (``tls_registry.ca_cert``), no auth."""
    need_tool("docker-registry")
    with DistributionRegistry(tls=True, workdir=tmp_path_factory.mktemp("tls-registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """Plain http with Basic auth; users in ``BASIC_USERS`` (alice)."""
    need_tool("docker-registry")
    need_tool("htpasswd")
    workdir = tmp_path_factory.mktemp("basic-registry")
    with DistributionRegistry(htpasswd_users=BASIC_USERS, workdir=workdir) as reg:
        yield reg


@pytest.fixture(scope="session")
def token_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenIssuer]:
    """Docker token issuer; users in ``TOKEN_USERS`` (bob). Call ``.reset()`` before
    asserting on ``.requests`` since it is shared by the session."""
    with TokenIssuer(TOKEN_USERS, workdir=tmp_path_factory.mktemp("token-issuer")) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer
) -> Iterator[DistributionRegistry]:
    """Plain http with Bearer auth from ``token_issuer``."""
    need_tool("docker-registry")
    workdir = tmp_path_factory.mktemp("token-registry")
    with DistributionRegistry(token_issuer=token_issuer, workdir=workdir) as reg:
        yield reg


@pytest.fixture(scope="session")
def podman(registry: DistributionRegistry) -> Iterator[Podman]:
    """Isolated podman with its API service running (``podman.docker_host``); ``registry``
    is trusted over http, others via ``podman.add_insecure_registry(host)``."""
    need_tool("podman")
    need_tool("runc")
    # Not under pytest's tmp dir: its socket path must stay short (108 bytes).
    with Podman() as p:
        p.add_insecure_registry(registry.host)
        p.start_service()
        yield p


# Memory-backed storage for podman_overlay when overlayfs mounts there: storing the layers of
# hundreds of images, and removing them at the end, is then bound by CPU, not by the disk.
SHM = Path("/dev/shm")


@pytest.fixture(scope="session")
def podman_overlay(registry: DistributionRegistry) -> Iterator[Podman]:
    """Like ``podman`` (without the API service), with the overlay storage driver: layers are
    stacked by the kernel's overlayfs as production runtimes stack them, instead of vfs's full
    copy of every layer (which makes deep images slow to run). Its storage is in /dev/shm when
    overlayfs works there (the 200 images of test_spack_stack.py are a few hundred MB)."""
    need_tool("podman")
    need_tool("runc")
    need(overlay_available(), "overlayfs cannot be mounted here (podman's overlay driver needs it, as root)")
    shm = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) and overlay_available(SHM) else None
    with Podman(storage_driver="overlay", parent=shm) as p:
        p.add_insecure_registry(registry.host)
        yield p


@pytest.fixture(scope="session")
def busybox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal busybox root filesystem directory (see ``servers.busybox_rootfs``)."""
    need(Path("/bin/busybox").is_file(), f"/bin/busybox missing: {install_hint('busybox')}")
    return busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def base(registry: DistributionRegistry, busybox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox base image imported into the plain registry (through the CLI)."""
    from cli_support import ok

    ref = f"{registry.host}/base/busybox:1"
    os.environ.setdefault("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    ok("--insecure-registry", registry.host, "import", str(busybox_dir), "--tag", ref)
    return ref


# Debian's busybox-static:arm64, fetched by the Makefile target of that name (see docs/testing.md).
BUSYBOX_ARM64_TARGET = "tests/.data/busybox-arm64/busybox"
BUSYBOX_ARM64 = Path(__file__).resolve().parent.parent / BUSYBOX_ARM64_TARGET


@pytest.fixture(scope="session")
def busybox_arm64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``busybox_dir`` layout around the linux/arm64 busybox: the second platform of the
    multi-platform base. It is never run here, only imported, so no emulator is needed."""
    need(
        BUSYBOX_ARM64.is_file(),
        f"{BUSYBOX_ARM64} missing: run `make {BUSYBOX_ARM64_TARGET}` (as root on Debian: "
        "dpkg --add-architecture arm64, apt-get download busybox-static:arm64)",
    )
    return busybox_rootfs(tmp_path_factory.mktemp("busybox-arm64") / "rootfs", BUSYBOX_ARM64)


def _multiarch_base(
    registry: DistributionRegistry,
    rootfs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    repository: str,
    media_format: str,
) -> str:
    """Import one busybox per platform as ``REPO:1-ARCH``, then merge them into ``REPO:1``."""
    from cli_support import ok

    os.environ.setdefault("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    flags = ("--insecure-registry", registry.host)
    parts = []
    for platform, root in rootfs.items():
        part = f"{registry.host}/{repository}:1-{platform.split('/')[1]}"
        ok(*flags, "import", str(root), "--tag", part, "--platform", platform, "--format", media_format)
        parts.append(part)
    target = f"{registry.host}/{repository}:1"
    ok(*flags, "merge", *parts, "--tag", target)
    return target


@pytest.fixture(scope="session")
def multiarch_base(
    registry: DistributionRegistry,
    busybox_dir: Path,
    busybox_arm64_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """``{registry.host}/base/busybox-multi:1``: an OCI image index of busybox for linux/amd64
    and linux/arm64/v8 (in that order), made with ``imagesmith import --platform`` (tags
    ``:1-amd64``, ``:1-arm64`` of the same repository) and ``imagesmith merge``."""
    rootfs = {"linux/amd64": busybox_dir, "linux/arm64/v8": busybox_arm64_dir}
    return _multiarch_base(registry, rootfs, tmp_path_factory, "base/busybox-multi", "oci")


@pytest.fixture(scope="session")
def multiarch_base_docker(
    registry: DistributionRegistry,
    busybox_dir: Path,
    busybox_arm64_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """``{registry.host}/base/busybox-multi-docker:1``: the same as ``multiarch_base`` in Docker
    v2 media types (``import --format docker``), so the index is a Docker manifest list."""
    rootfs = {"linux/amd64": busybox_dir, "linux/arm64/v8": busybox_arm64_dir}
    return _multiarch_base(registry, rootfs, tmp_path_factory, "base/busybox-multi-docker", "docker")


def _spack(version: str, tmp_path_factory: pytest.TempPathFactory) -> SpackKit:
    need(kit_available(), kit_hint())
    return SpackKit(kit_directory(version, tmp_path_factory.getbasetemp()), version)


@pytest.fixture(scope="session")
def spack12(tmp_path_factory: pytest.TempPathFactory) -> SpackKit:
    """Real Spack 1.2 from the shared kit (``tests/spackkit.py``), set up once per session."""
    return _spack("1.2", tmp_path_factory)


@pytest.fixture(scope="session")
def spack023(tmp_path_factory: pytest.TempPathFactory) -> SpackKit:
    """Real Spack 0.23 from the shared kit, set up once per session."""
    return _spack("0.23", tmp_path_factory)
