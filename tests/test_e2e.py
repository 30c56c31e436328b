"""End to end through the CLI: import a busybox base, build the example stack, run it.

Everything here is real: the CNCF distribution registry, podman (through the docker CLI and
the docker SDK against its Docker-compatible API), skopeo and umoci as independent readers.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_support import EXAMPLES, HELLO, build_argv, cli, ok, on
from conftest import BASIC_USERS, TOKEN_USERS, need_tool
from servers import DEBIAN_PATH, DistributionRegistry, Podman, TokenIssuer, docker_sdk_run

from imagesmith.oci import mediatypes as mt
from imagesmith.oci.model import Platform

pytestmark = pytest.mark.integration

__all__ = ["EXAMPLES", "HELLO", "cli", "ok"]  # re-exported: other test files import them from here


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def build_stack(registry: DistributionRegistry, base: str) -> dict[str, object]:
    """``imagesmith build --repo HOST/stack --json hello.json`` (the registry option last)."""
    argv = ("build", "--base-image", base, "--repo", f"{registry.host}/stack", "--json", HELLO)
    result: dict[str, object] = json.loads(ok(*argv, "--insecure-registry", registry.host))
    return result


@pytest.fixture(scope="session")
def stack(registry: DistributionRegistry, base: str) -> dict[str, object]:
    return build_stack(registry, base)


def test_build_prints_reference_tag_and_digest(
    stack: dict[str, object], registry: DistributionRegistry
) -> None:
    tag = str(stack["tag"])
    # Not Spack's *.spack: Spack reads every such tag as one of its packages.
    # A one-platform image's default tag ends with its platform (per-platform builds of one
    # package on several machines never share a tag).
    slug = str(Platform.host()).replace("/", "-")
    assert tag.startswith("hello-2.12-") and tag.endswith(f".{slug}")
    hash_part = tag[len("hello-2.12-") : -len(slug) - 1]
    assert len(hash_part) == 32 and set(hash_part) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert stack["reference"] == f"{registry.host}/stack:{tag}"
    assert str(stack["digest"]).startswith("sha256:")
    layers = stack["layers"]
    assert isinstance(layers, list)
    assert [layer["package"] for layer in layers] == ["libgreet", "hello"]
    assert tag in registry.tags("stack")


def test_rebuild_gives_same_tag_and_digest(
    stack: dict[str, object],
    registry: DistributionRegistry,
    base: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh cache: nothing is reused, yet every byte comes out the same.
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "fresh-cache"))
    again = build_stack(registry, base)
    assert (again["tag"], again["digest"]) == (stack["tag"], stack["digest"])


def test_docker_run_cli(stack: dict[str, object], podman: Podman) -> None:
    need_tool("docker")
    ref = str(stack["reference"])
    ran = podman.docker("run", "--rm", ref, "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello, world, from hello 2.12")
    ran = podman.docker("run", "--rm", ref, "sh", "-c", "echo $PATH; echo $MANPATH; echo $HELLO_HOME")
    assert ran.returncode == 0, ran.stderr
    path, manpath, home = ran.stdout.splitlines()
    entries = path.split(":")
    assert entries[:2] == ["/opt/stack/hello-2.12/bin", "/opt/stack/libgreet-1.0/bin"]
    assert entries[2:] == DEBIAN_PATH.split(":")
    assert len(entries) == len(set(entries))
    assert manpath == "/opt/stack/hello-2.12/share/man"
    assert home == "/opt/stack/hello-2.12"


def test_docker_run_sdk(stack: dict[str, object], podman: Podman) -> None:
    out = docker_sdk_run(
        podman.docker_host,
        str(stack["reference"]),
        ["sh", "-c", "hello && pkg-config --version 2>/dev/null; echo $PKG_CONFIG_PATH"],
    )
    text = out.decode()
    assert "Hello, world, from hello 2.12" in text
    assert "/opt/stack/libgreet-1.0/lib/pkgconfig" in text


def test_skopeo_inspect(stack: dict[str, object]) -> None:
    need_tool("skopeo")
    ref = str(stack["reference"])
    raw = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = json.loads(raw)
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert len(manifest["layers"]) == 3
    annotations = manifest["annotations"]
    assert annotations["org.opencontainers.image.base.name"].endswith("/base/busybox:1")
    assert annotations["org.opencontainers.image.base.digest"].startswith("sha256:")
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{ref}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(config["rootfs"]["diff_ids"]) == 3
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 3
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["PATH"].startswith("/opt/stack/hello-2.12/bin:")


def test_umoci_unpack(stack: dict[str, object], tmp_path: Path) -> None:
    need_tool("skopeo")
    need_tool("umoci")
    layout = tmp_path / "layout"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{stack['reference']}", f"oci:{layout}:img"],
        check=True,
        capture_output=True,
    )
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:img", str(bundle)], check=True, capture_output=True
    )
    rootfs = bundle / "rootfs"
    hello = rootfs / "opt/stack/hello-2.12/bin/hello"
    assert hello.is_file() and os.access(hello, os.X_OK)
    assert (rootfs / "opt/stack/libgreet-1.0/share/libgreet/greeting.txt").read_text() == "Hello, world\n"
    assert (rootfs / "bin/busybox").is_file()
    runtime = json.loads((bundle / "config.json").read_text())
    assert any(e.startswith("PATH=/opt/stack/hello-2.12/bin:") for e in runtime["process"]["env"])


def test_inspect_json_and_text(stack: dict[str, object], registry: DistributionRegistry) -> None:
    ref = str(stack["reference"])
    data = json.loads(ok("inspect", ref, "--json", "--insecure-registry", registry.host))
    assert data["digest"] == stack["digest"]
    assert len(data["layers"]) == 3
    assert data["config"]["Env"][0].startswith("PATH=/opt/stack/hello-2.12/bin")
    text = ok("--insecure-registry", registry.host, "inspect", ref)
    assert "imagesmith: add hello@2.12" in text and str(stack["digest"]) in text
    raw = ok("--insecure-registry", registry.host, "inspect", "--raw", ref)
    assert json.loads(raw)["mediaType"] == mt.OCI_MANIFEST


def test_profile_script_and_options(registry: DistributionRegistry, base: str, podman: Podman) -> None:
    ref = f"{registry.host}/stack:profiled"
    options = ("--profile-script", "--env", "GREETING=hi there", "--workdir", "/opt")
    image = ("--label", "org.example.team=hpc", "--entrypoint", '["/bin/sh", "-c"]', "--cmd", "hello")
    ok(
        "build",
        "--base-image",
        base,
        "--tag",
        ref,
        *options,
        *image,
        HELLO,
        "--insecure-registry",
        registry.host,
    )
    # A login shell resets PATH in /etc/profile, then sources the profile script.
    ran = podman.docker("run", "--rm", "--entrypoint", "sh", ref, "-l", "-c", "echo $PATH; pwd")
    assert ran.returncode == 0, ran.stderr
    path, cwd = ran.stdout.splitlines()
    assert path.startswith("/opt/stack/hello-2.12/bin:/opt/stack/libgreet-1.0/bin")
    assert cwd == "/opt"
    ran = podman.docker("run", "--rm", ref)  # entrypoint sh -c + cmd hello
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello, world")
    data = json.loads(ok("inspect", ref, "--json", "--insecure-registry", registry.host))
    assert len(data["layers"]) == 4
    assert "GREETING=hi there" in data["config"]["Env"]
    labels = data["config"]["Labels"]
    assert labels["org.example.team"] == "hpc"
    assert labels["org.opencontainers.image.title"] == "hello"
    assert labels["org.opencontainers.image.version"] == "2.12"
    assert len(labels["io.imagesmith.package.hash"]) == 32


def test_docker_v2_base_stays_docker(
    registry: DistributionRegistry, busybox_dir: Path, podman: Podman
) -> None:
    base = f"{registry.host}/base/busybox-docker:1"
    ok("--insecure-registry", registry.host, "import", "--format", "docker", str(busybox_dir), "--tag", base)
    ref = f"{registry.host}/stack:docker-family"
    ok("--insecure-registry", registry.host, "build", "--base-image", base, "--tag", ref, HELLO)
    data = json.loads(ok("--insecure-registry", registry.host, "inspect", "--raw", ref))
    assert data["mediaType"] == mt.DOCKER_MANIFEST
    assert data["config"]["mediaType"] == mt.DOCKER_CONFIG
    assert {layer["mediaType"] for layer in data["layers"]} == {mt.DOCKER_LAYER_GZIP}
    assert "annotations" not in data
    ran = podman.docker("run", "--rm", ref, "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr
    code, _, err = cli(*build_argv(registry.host, base, "--tag", ref, "--compression", "zstd", HELLO))
    assert code == 2 and "zstd" in err


def test_base_layers_are_mounted_not_downloaded(
    registry: DistributionRegistry, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))
    out = ok("--debug", *build_argv(registry.host, base, "--tag", f"{registry.host}/elsewhere/app:1", HELLO))
    assert "Pushed" in out
    code, _, log = cli(
        "--debug", *build_argv(registry.host, base, "--tag", f"{registry.host}/another/app:1", HELLO)
    )
    assert code == 0
    assert "mount=" in log or "mount" in log
    base_layer = json.loads(ok("--insecure-registry", registry.host, "inspect", "--raw", base))["layers"][0]
    # Never a GET of the base layer blob.
    assert f"GET {registry.url}/v2/base/busybox/blobs/{base_layer['digest']}" not in log
    assert not (tmp_path / "cache" / "blobs" / "sha256" / base_layer["digest"].split(":")[1]).exists()


def test_platform_mismatch_lists_what_exists(registry: DistributionRegistry, busybox_dir: Path) -> None:
    base = f"{registry.host}/base/busybox-arm64:1"
    ok(*on(registry.host, "import", "--platform", "linux/arm64", str(busybox_dir), "--tag", base))
    code, _, err = cli(
        *build_argv(
            registry.host, base, "--tag", f"{registry.host}/stack:x", "--platform", "linux/amd64", HELLO
        )
    )
    assert code == 1
    assert "linux/arm64" in err and "--platform" in err
    ok(
        *build_argv(
            registry.host, base, "--tag", f"{registry.host}/stack:arm64", "--platform", "linux/arm64", HELLO
        )
    )


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["build", "--base-image", "Bad Ref", "--repo", "x/y", HELLO], 2, "invalid reference"),
        (["build", "--base-image", "{host}/nope/missing:1", "--repo", "{host}/x", HELLO], 3, "not found"),
        (
            ["build", "--base-image", "{host}/base/busybox:1", "--repo", "{host}/x", "missing.json"],
            2,
            "missing.json",
        ),
        (["build", "--base-image", "127.0.0.1:1/x:1", "--repo", "{host}/x", HELLO], 3, "127.0.0.1:1"),
        (["build", "--base-image", "{host}/base/busybox:1", "--repo", "{host}/x:tag", HELLO], 2, "--tag"),
        (
            ["build", "--base-image", "{host}/base/busybox:1", "--repo", "{host}/x", "--env", "NOEQ", HELLO],
            2,
            "NOEQ",
        ),
        (["inspect", "{host}/base/busybox:nope"], 3, "not found"),
        (["import", "/nonexistent/rootfs", "--tag", "{host}/x:1"], 2, "/nonexistent/rootfs"),
    ],
)
def test_errors_are_one_clear_line(
    registry: DistributionRegistry, base: str, args: list[str], code: int, fragment: str
) -> None:
    argv = [a.replace("{host}", registry.host) for a in args]
    got, out, err = cli("--insecure-registry", registry.host, "--insecure-registry", "127.0.0.1:1", *argv)
    assert got == code, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagesmith: error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err


def test_https_registry_with_ca(
    tls_registry: DistributionRegistry, base: str, registry: DistributionRegistry
) -> None:
    assert tls_registry.ca_cert is not None
    target = f"{tls_registry.host}/stack:tls"
    env = {"IMAGESMITH_INSECURE_REGISTRY": registry.host}
    # Without the CA the certificate is refused, with a hint.
    code, _, err = cli("build", "--base-image", base, "--tag", target, HELLO, env=env)
    assert code == 3 and "--ca-cert" in err
    # The CA from the environment, the base copied across registries through the cache.
    ok(
        "build",
        "--base-image",
        base,
        "--tag",
        target,
        HELLO,
        env={**env, "IMAGESMITH_CA_CERT": str(tls_registry.ca_cert)},
    )
    ok("--ca-cert", str(tls_registry.ca_cert), "inspect", target)


def _docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    import base64

    config = tmp_path / "docker-config"
    config.mkdir()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return config


def test_basic_auth_registry(
    basic_registry: DistributionRegistry, base: str, registry: DistributionRegistry, tmp_path: Path
) -> None:
    user, password = next(iter(BASIC_USERS.items()))
    config = _docker_config(tmp_path, basic_registry.host, user, password)
    hosts = f"{registry.host},{basic_registry.host}"
    target = f"{basic_registry.host}/stack:basic"
    env = {"DOCKER_CONFIG": str(config), "IMAGESMITH_INSECURE_REGISTRY": hosts}
    code, out, err = cli("--debug", "build", "--base-image", base, "--tag", target, HELLO, env=env)
    assert code == 0, err
    assert password not in err and password not in out
    (tmp_path / "bad").mkdir()
    bad = _docker_config(tmp_path / "bad", basic_registry.host, user, "wrong-password")
    code, _, err = cli(
        "inspect", target, env={"DOCKER_CONFIG": str(bad), "IMAGESMITH_INSECURE_REGISTRY": hosts}
    )
    assert code == 3 and basic_registry.host in err
    assert "wrong-password" not in err


def test_token_auth_registry(
    token_registry: DistributionRegistry,
    token_issuer: TokenIssuer,
    base: str,
    registry: DistributionRegistry,
    tmp_path: Path,
) -> None:
    user, password = next(iter(TOKEN_USERS.items()))
    config = _docker_config(tmp_path, token_registry.host, user, password)
    hosts = f"{registry.host},{token_registry.host}"
    target = f"{token_registry.host}/stack:token"
    before = token_issuer.request_count
    env = {"DOCKER_CONFIG": str(config), "IMAGESMITH_INSECURE_REGISTRY": hosts}
    code, out, err = cli("--debug", "build", "--base-image", base, "--tag", target, HELLO, env=env)
    assert code == 0, err
    assert password not in err and password not in out
    # One token for the push scope covers every blob and the manifest.
    assert token_issuer.request_count - before <= 2
    # Anonymous users may pull but not push.
    empty = tmp_path / "empty"
    empty.mkdir()
    anon = {
        "DOCKER_CONFIG": str(empty),
        "IMAGESMITH_INSECURE_REGISTRY": hosts,
        "REGISTRY_AUTH_FILE": str(empty / "none.json"),
    }
    ok("inspect", target, env=anon)
    code, _, err = cli(
        "build", "--base-image", base, "--tag", f"{token_registry.host}/stack:anon", HELLO, env=anon
    )
    assert code == 3, err


def test_python_api_matches_cli(registry: DistributionRegistry, base: str, stack: dict[str, object]) -> None:
    import imagesmith

    packages = imagesmith.load_packages([HELLO])
    assert [p.name for p in packages] == ["libgreet", "hello"]
    events: list[imagesmith.ProgressEvent] = []
    result = imagesmith.build(
        base,
        packages,
        repo=f"{registry.host}/stack",
        registry=imagesmith.RegistryOptions(insecure=frozenset({registry.host})),
        progress=events.append,
    )
    assert (result.tag, result.digest) == (stack["tag"], stack["digest"])
    kinds = {e.kind for e in events}
    # The CLI built the same stack with the same cache before: the layers are reused, not re-read.
    assert "manifest-pushed" in kinds and "layer-reused" in kinds and "layer-built" not in kinds


def test_python_m_and_version() -> None:
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "imagesmith", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("imagesmith ")
    console = shutil.which("imagesmith") or str(Path(sys.executable).parent / "imagesmith")
    ran = subprocess.run([console, "build", "--help"], capture_output=True, text=True, check=True)
    assert "--base-image" in ran.stdout


def _push_index(
    registry: DistributionRegistry, repo: str, tag: str, family: str, platforms: dict[str, str]
) -> None:
    """Assemble an index (OCI) or manifest list (Docker) from pushed single-platform images."""
    from imagesmith import RegistryClient, RegistryOptions
    from imagesmith.oci.model import Descriptor, Index

    client = RegistryClient(registry.host, RegistryOptions(insecure=frozenset({registry.host})))
    entries = []
    for platform, source_tag in platforms.items():
        response = client.get_manifest(repo, source_tag)
        entries.append(
            Descriptor(
                response.media_type, response.digest, len(response.data), platform=Platform.parse(platform)
            )
        )
    if family == "oci":
        # An attestation entry, as buildx writes them: never a platform to choose.
        first = entries[0]
        entries.append(
            Descriptor(
                mt.OCI_MANIFEST,
                first.digest,
                first.size,
                annotations={"vnd.docker.reference.type": "attestation-manifest"},
                platform=Platform("unknown", "unknown"),
            )
        )
    media_type = mt.OCI_INDEX if family == "oci" else mt.DOCKER_MANIFEST_LIST
    index = Index(media_type, tuple(entries))
    client.put_manifest(repo, tag, index.to_bytes(), media_type)
    client.close()


@pytest.mark.parametrize("family", ["oci", "docker"])
def test_multi_arch_base_picks_the_platform(
    registry: DistributionRegistry, busybox_dir: Path, podman: Podman, family: str
) -> None:
    host = registry.host
    repo = f"base/multi-{family}"
    for arch in ("amd64", "arm64"):
        platform = ("--format", family, "--platform", f"linux/{arch}")
        ok(*on(host, "import", *platform, str(busybox_dir), "--tag", f"{host}/{repo}:{arch}"))
    _push_index(registry, repo, "1", family, {"linux/amd64": "amd64", "linux/arm64/v8": "arm64"})
    base = f"{host}/{repo}:1"

    shown = ok("--insecure-registry", host, "inspect", base)
    assert "linux/amd64" in shown and "linux/arm64/v8" in shown

    native = f"{host}/stack:multi-{family}-amd64"
    ok(*build_argv(host, base, "--tag", native, "--platform", "linux/amd64", HELLO))
    ran = podman.docker("run", "--rm", native, "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr

    arm = f"{host}/stack:multi-{family}-arm64"
    out = json.loads(ok(*build_argv(host, base, "--tag", arm, "--platform", "linux/arm64", "--json", HELLO)))
    assert out["base"].startswith(f"{base}@sha256:")  # pinned to the index digest
    data = json.loads(ok("--insecure-registry", host, "inspect", arm, "--json"))
    assert data["platform"] in ("linux/arm64", "linux/arm64/v8")
    expected = mt.OCI_MANIFEST if family == "oci" else mt.DOCKER_MANIFEST
    assert data["mediaType"] == expected

    code, _, err = cli(
        *build_argv(host, base, "--tag", f"{host}/stack:never", "--platform", "linux/ppc64le", HELLO)
    )
    assert code == 1
    assert "linux/amd64, linux/arm64/v8" in err and "unknown" not in err


def test_tag_template(registry: DistributionRegistry, base: str) -> None:
    repo = ("--repo", f"{registry.host}/stack")
    template = "{{ name }}_{{ version }}+{{ arch }}"
    out = json.loads(ok(*build_argv(registry.host, base, *repo, "--json", "--tag-template", template, HELLO)))
    from imagesmith.oci.model import Platform

    assert out["tag"] == f"hello_2.12_{Platform.host().architecture}"  # "+" made a valid tag character
    code, _, err = cli(*build_argv(registry.host, base, *repo, "--tag-template", "{{ nope }}", HELLO))
    assert code == 2 and "nope" in err


def test_import_tarball_keeps_modes_and_owners(
    registry: DistributionRegistry, busybox_dir: Path, tmp_path: Path, podman: Podman
) -> None:
    import tarfile

    rootfs = tmp_path / "rootfs.tar.gz"
    with tarfile.open(rootfs, "w:gz") as tar:
        tar.add(busybox_dir, arcname=".")
        info = tarfile.TarInfo("home/user/owned")
        info.uid, info.gid, info.mode = 1000, 1000, 0o4755
        tar.addfile(info, io.BytesIO(b""))
    ref = f"{registry.host}/base/from-tarball:1"
    ok("--insecure-registry", registry.host, "import", str(rootfs), "--tag", ref)
    ran = podman.docker("run", "--rm", ref, "ls", "-lnd", "/tmp")
    assert ran.returncode == 0 and ran.stdout.startswith("drwxrwxrwt"), ran.stdout + ran.stderr
    ran = podman.docker("run", "--rm", ref, "ls", "-ln", "/home/user/owned")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("-rwsr-xr-x") and " 1000 " in ran.stdout


def test_a_corrupt_built_layer_in_the_cache_is_rebuilt_and_pushed(
    registry: DistributionRegistry, base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flipped byte in a built layer of the cache: the next push to a repository that
    lacks it detects it, evicts it, rebuilds it from the package and pushes the good bytes;
    a layout output recovers the same way."""
    from imagesmith.oci.digests import Digest
    from imagesmith.store.cache import BlobCache

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(cache_dir))
    common = ("--insecure-registry", registry.host, "build", "--base-image", base, "--json")
    first = json.loads(ok(*common, "--tag", f"{registry.host}/corrupt/one:1", HELLO))
    cache = BlobCache(cache_dir)
    layers = [Digest.parse(layer["digest"]) for layer in first["layers"]]

    def flip() -> None:
        for digest in layers:
            path = cache.path(digest)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

    flip()
    second = json.loads(ok(*common, "--tag", f"{registry.host}/corrupt/two:1", HELLO))
    assert second["digest"] == first["digest"]
    for digest in layers:
        assert cache.verify(digest)  # rebuilt, good bytes
        blob = registry.get(f"/v2/corrupt/two/blobs/{digest}")
        assert blob.status_code == 200 and Digest.of(blob.content) == digest
    flip()
    third = json.loads(ok(*common, "--output", f"oci:{tmp_path / 'layout'}:1", HELLO))
    assert third["digest"] == first["digest"]
    for digest in layers:
        assert Digest.of((tmp_path / "layout" / "blobs" / "sha256" / digest.hex).read_bytes()) == digest
