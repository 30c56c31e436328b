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
    tool_available,
)

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
