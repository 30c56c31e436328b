"""Multi-platform builds: `imagesmith build --platform linux/amd64,linux/arm64`.

Against the real registry: per-platform content goes into its platform's image only,
platform-independent content into every one (one shared blob), each image keeps its base's
platform, and the index (OCI, or a Docker manifest list on a Docker base) is pushed under one
tag after its images. podman runs the amd64 entry and pulls the arm64 one; skopeo reads the
index; the repository index lists both platforms.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_support import build_argv, cli, ok
from servers import DistributionRegistry, Podman

from imagesmith.errors import PackageError
from imagesmith.inputs.load import load_package
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.model import Platform

AMD64, ARM64 = "linux/amd64", "linux/arm64"


def flags(registry: DistributionRegistry) -> tuple[str, ...]:
    return ("--insecure-registry", registry.host)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def packages(tmp_path: Path) -> dict[str, Path]:
    """``tool``: per-platform content (a script naming its architecture); ``scripts``: only
    platform-independent content, depending on ``tool``."""
    for arch in ("amd64", "arm64"):
        _write(tmp_path / f"tool-{arch}" / "bin" / "tool", f"#!/bin/sh\necho tool built for {arch}\n", 0o755)
        _write(tmp_path / f"tool-{arch}" / "share" / "arch.txt", f"{arch}\n")
    _write(tmp_path / "scripts" / "bin" / "greet", "#!/bin/sh\necho greetings from $(tool)\n", 0o755)
    tool = tmp_path / "tool.json"
    tool.write_text(
        json.dumps(
            {
                "name": "tool",
                "version": "2.0",
                "prefix": "/opt/tool",
                "platforms": {AMD64: "tool-amd64", ARM64: "tool-arm64"},
            }
        )
    )
    scripts = tmp_path / "scripts.json"
    scripts.write_text(
        json.dumps(
            {
                "name": "scripts",
                "version": "1.0",
                "prefix": "/opt/scripts",
                "content": "scripts",
                "depends": ["tool.json"],
            }
        )
    )
    return {"tool": tool, "scripts": scripts}


def skopeo_raw(ref: str) -> dict[str, Any]:
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _platform_of(entry: dict[str, Any]) -> str:
    p = entry["platform"]
    return "/".join(x for x in (p["os"], p["architecture"], p.get("variant")) if x)


def _manifest(registry: DistributionRegistry, repo: str, digest: str) -> dict[str, Any]:
    return skopeo_raw(f"{registry.host}/{repo}@{digest}")


def both(registry: DistributionRegistry, base: str, *args: str) -> tuple[str, ...]:
    """``build --base-image BASE --platform linux/amd64,linux/arm64 ARGS...``."""
    return build_argv(registry.host, base, "--platform", f"{AMD64},{ARM64}", *args)


def _build(registry: DistributionRegistry, base: str, *args: str) -> dict[str, Any]:
    out = ok(*both(registry, base, "--json", *args))
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.integration
def test_one_tag_every_platform(
    registry: DistributionRegistry,
    multiarch_base: str,
    packages: dict[str, Path],
    podman: Podman,
    tmp_path: Path,
) -> None:
    repo = "multi/stack"
    result = _build(registry, multiarch_base, "--repo", f"{registry.host}/{repo}", str(packages["scripts"]))
    ref = result["reference"]
    assert ref.startswith(f"{registry.host}/{repo}:scripts-1.0-") and not ref.endswith(".spack")
    assert result["mediaType"] == mt.OCI_INDEX
    assert [p["platform"] for p in result["platforms"]] == [AMD64, ARM64]

    index = skopeo_raw(ref)
    assert index["mediaType"] == mt.OCI_INDEX
    base_index = skopeo_raw(multiarch_base)
    # Entries carry the base index's platform fields (arm64 with its v8 variant).
    assert [_platform_of(m) for m in index["manifests"]] == [_platform_of(m) for m in base_index["manifests"]]
    assert [m["digest"] for m in index["manifests"]] == [p["digest"] for p in result["platforms"]]
    assert index["annotations"]["org.opencontainers.image.title"] == "scripts"

    layers: dict[str, list[str]] = {}
    for entry, base_entry in zip(index["manifests"], base_index["manifests"], strict=True):
        manifest = _manifest(registry, repo, entry["digest"])
        base_manifest = _manifest(registry, "base/busybox-multi", base_entry["digest"])
        config = json.loads(
            subprocess.run(
                [
                    "skopeo",
                    "inspect",
                    "--config",
                    "--raw",
                    "--tls-verify=false",
                    f"docker://{registry.host}/{repo}@{entry['digest']}",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert config["architecture"] == entry["platform"]["architecture"]
        assert config["os"] == "linux"
        digests = [layer["digest"] for layer in manifest["layers"]]
        # The platform's own base layer, then tool, then scripts.
        assert digests[:-2] == [layer["digest"] for layer in base_manifest["layers"]]
        layers[entry["platform"]["architecture"]] = digests
    # Per-platform content differs; the platform-independent layer is one blob in both.
    assert layers["amd64"][-2] != layers["arm64"][-2]
    assert layers["amd64"][-1] == layers["arm64"][-1]

    # Each image holds its own platform's content.
    for arch in ("amd64", "arm64"):
        rootfs = tmp_path / f"rootfs-{arch}"
        ok(
            *flags(registry),
            "pull",
            ref,
            "--platform",
            f"linux/{arch}",
            "--rootfs",
            str(rootfs),
            "--packages-only",
        )
        assert (rootfs / "opt" / "tool" / "share" / "arch.txt").read_text() == f"{arch}\n"
        assert (rootfs / "opt" / "scripts" / "bin" / "greet").is_file()

    # podman runs the amd64 entry (PATH carries both packages) and pulls the arm64 one.
    ran = podman.podman("run", "--rm", "--pull", "always", "--arch", "amd64", ref, "greet")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "greetings from tool built for amd64"
    pulled = podman.podman("pull", "--arch", "arm64", ref)
    assert pulled.returncode == 0, pulled.stderr
    image_id = pulled.stdout.strip().splitlines()[-1]
    try:
        (info,) = json.loads(podman.podman("image", "inspect", image_id).stdout)
        assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
    finally:
        podman.podman("rmi", "--force", image_id)

    # inspect shows the index and its platforms; the repository index lists both.
    shown = ok(*flags(registry), "inspect", ref)
    assert "linux/amd64" in shown and "linux/arm64" in shown
    ok(*flags(registry), "index", "update", f"{registry.host}/{repo}")
    listed = json.loads(ok(*flags(registry), "index", "list", f"{registry.host}/{repo}", "--json"))
    (entry,) = [e for e in listed["entries"] if e["tag"] == ref.rsplit(":", 1)[1]]
    assert {p.split("/v")[0] for p in entry["platforms"]} == {AMD64, ARM64}
    assert (entry["name"], entry["version"], entry["mediaType"]) == ("scripts", "1.0", mt.OCI_INDEX)
    # The index's hash is the tag's, not one platform's (their tool layers differ).
    assert ref.endswith(f"-{entry['hash']}")
    assert entry["hash"] not in {p["layers"][-1]["hash"] for p in result["platforms"]}

    # Reproducible: the same inputs give the same tag and digests.
    again = _build(registry, multiarch_base, "--repo", f"{registry.host}/{repo}", str(packages["scripts"]))
    assert (again["reference"], again["digest"]) == (ref, result["digest"])


@pytest.mark.integration
def test_docker_base_gives_a_manifest_list(
    registry: DistributionRegistry, multiarch_base_docker: str, packages: dict[str, Path], podman: Podman
) -> None:
    ref = f"{registry.host}/multi/docker:1"
    result = _build(registry, multiarch_base_docker, "--tag", ref, str(packages["scripts"]))
    assert result["mediaType"] == mt.DOCKER_MANIFEST_LIST
    index = skopeo_raw(ref)
    assert index["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert all(m["mediaType"] == mt.DOCKER_MANIFEST for m in index["manifests"])
    assert "annotations" not in index
    ran = podman.podman("run", "--rm", "--pull", "always", "--arch", "amd64", ref, "greet")
    assert ran.returncode == 0, ran.stderr
    assert "amd64" in ran.stdout


@pytest.mark.integration
def test_into_an_oci_layout(
    registry: DistributionRegistry, multiarch_base: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    result = _build(registry, multiarch_base, "--output", f"oci:{layout}:multi", str(packages["tool"]))
    index_json = json.loads((layout / "index.json").read_text())
    (top,) = index_json["manifests"]
    assert top["digest"] == result["digest"] and top["mediaType"] == mt.OCI_INDEX
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:multi"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert [_platform_of(m).split("/v")[0] for m in json.loads(done.stdout)["manifests"]] == [AMD64, ARM64]
    for platform in (AMD64, ARM64):
        copied = tmp_path / f"one-{platform.replace('/', '-')}"
        done = subprocess.run(
            [
                "skopeo",
                "copy",
                "--override-arch",
                platform.split("/")[1],
                f"oci:{layout}:multi",
                f"oci:{copied}:x",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr  # every blob of the chosen image is there


def test_package_platform_content_rules(packages: dict[str, Path], tmp_path: Path) -> None:
    tool = load_package(packages["tool"])
    assert tool.content is None
    assert tool.content_for(Platform.parse("linux/arm64/v8"))[0].name == "tool-arm64"
    assert tool.for_platform(Platform.parse(AMD64)).content == (tmp_path / "tool-amd64").resolve()
    with pytest.raises(PackageError, match=r"tool-2.0 .* has no content for linux/ppc64le"):
        tool.content_for(Platform.parse("linux/ppc64le"))
    scripts = load_package(packages["scripts"])
    assert scripts.content_for(Platform.parse("linux/s390x"))[0].name == "scripts"

    both = tmp_path / "both.json"
    both.write_text(
        json.dumps(
            {
                "name": "both",
                "version": "1",
                "prefix": "/opt/both",
                "content": "scripts",
                "platforms": {ARM64: "tool-arm64"},
            }
        )
    )
    package = load_package(both)
    assert package.content_for(Platform.parse(ARM64))[0].name == "tool-arm64"
    assert package.content_for(Platform.parse(AMD64))[0].name == "scripts"  # the fallback
    assert package.contents == ((tmp_path / "scripts").resolve(), (tmp_path / "tool-arm64").resolve())

    for platforms, message in [
        ({}, "non-empty table"),
        ({"linux": "scripts"}, "is not os/arch"),
        ({AMD64: "missing"}, "content for linux/amd64 'missing' not found"),
        ({AMD64: 3}, "must be a path string"),
        ({ARM64: "scripts", "linux/arm64/v8": "scripts"}, "overlap"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(
            json.dumps({"name": "bad", "version": "1", "prefix": "/opt/bad", "platforms": platforms})
        )
        with pytest.raises(PackageError, match=message):
            load_package(bad)


@pytest.mark.integration
def test_refusals_name_what_is_wrong(
    registry: DistributionRegistry, multiarch_base: str, base: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    host = registry.host
    scripts = str(packages["scripts"])
    cases = [
        # A package without content for one of the platforms: before any work.
        (
            ("--platform", f"{AMD64},linux/ppc64le", "--base-image", multiarch_base, "--repo", f"{host}/m"),
            "has no content for linux/ppc64le",
        ),
        # The base index lacks a platform.
        (
            (
                "--platform",
                f"{AMD64},linux/s390x",
                "--base-image",
                multiarch_base,
                "--repo",
                f"{host}/m",
                str(tmp_path / "data.json"),
            ),
            "no image for platform linux/s390x",
        ),
        # A single-image base.
        (("--platform", f"{AMD64},{ARM64}", "--base-image", base, "--repo", f"{host}/m"), "not an index"),
        (
            (
                "--platform",
                f"{AMD64},{ARM64}",
                "--base-image",
                multiarch_base,
                "--tag",
                f"{host}/m:1",
                "--load",
            ),
            "--load works on one platform",
        ),
        (
            (
                "--platform",
                f"{AMD64},{ARM64}",
                "--base-image",
                multiarch_base,
                "--output",
                f"docker-archive:{tmp_path / 'x.tar'}:m:1",
            ),
            "holds single-platform images",
        ),
        (
            ("--platform", f"{AMD64},linux/amd64", "--base-image", multiarch_base, "--repo", f"{host}/m"),
            "the same platform",
        ),
        (
            ("--platform", f"{AMD64},", "--base-image", multiarch_base, "--repo", f"{host}/m"),
            "empty platform",
        ),
    ]
    _write(tmp_path / "data" / "x.txt", "x\n")
    (tmp_path / "data.json").write_text(
        json.dumps({"name": "data", "version": "1", "prefix": "/opt/data", "content": "data"})
    )
    for args, message in cases:
        package = [] if any(a.endswith(".json") for a in args) else [scripts]
        code, out, err = cli(*flags(registry), "build", *args, *package)
        assert code != 0, (args, out)
        assert message in err, (args, err)
        assert "Traceback" not in err


@pytest.mark.integration
def test_each_package_gets_its_own_index(
    registry: DistributionRegistry, multiarch_base: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    repo = f"{registry.host}/multi/each"
    out = ok(*both(registry, multiarch_base, "--each", "--repo", repo, "--json", str(packages["scripts"])))
    results = json.loads(out)
    assert [r["reference"].split(":")[-1].split("-")[0] for r in results] == ["tool", "scripts"]
    # Each index is the one a build of that package alone gives.
    for result, package in zip(results, ("tool", "scripts"), strict=True):
        alone = _build(
            registry, multiarch_base, "--repo", f"{registry.host}/multi/alone", str(packages[package])
        )
        assert alone["digest"] == result["digest"]
        assert alone["reference"].split(":")[-1] == result["reference"].split(":")[-1]
        index = skopeo_raw(result["reference"])
        assert [_platform_of(m).split("/v")[0] for m in index["manifests"]] == [AMD64, ARM64]
    # Into a layout: one tag per package.
    layout = tmp_path / "layout"
    ok(*both(registry, multiarch_base, "--each", "--output", f"oci:{layout}", str(packages["scripts"])))
    tags = sorted(
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in json.loads((layout / "index.json").read_text())["manifests"]
    )
    assert tags == sorted(r["reference"].split(":")[-1] for r in results)
    code, _, err = cli(
        *both(registry, multiarch_base, "--each", "--tag", f"{repo}:x", str(packages["scripts"]))
    )
    assert code == 2 and "--each tags every index from the template" in err


@pytest.mark.integration
def test_platform_independent_content_is_walked_once(
    registry: DistributionRegistry,
    multiarch_base: str,
    packages: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imagesmith.inputs.load import load_packages
    from imagesmith.pipeline import records as layerrecords
    from imagesmith.pipeline.run import build_platforms
    from imagesmith.registry import RegistryOptions, RegistryPool
    from imagesmith.store.cache import BlobCache

    walked: list[Path] = []
    original = layerrecords.input_key_size

    def counting(content: Path, *args: Any, **kwargs: Any) -> tuple[str, int]:
        walked.append(content)
        return original(content, *args, **kwargs)

    monkeypatch.setattr(layerrecords, "input_key_size", counting)
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as pool:
        result = build_platforms(
            multiarch_base,
            load_packages([packages["scripts"]]),
            [Platform.parse(AMD64), Platform.parse(ARM64)],
            repo=f"{registry.host}/multi/walk",
            cache=BlobCache(tmp_path / "cache"),
            pool=pool,
        )
    # tool-amd64, tool-arm64 and scripts: the shared scripts content once, not once per platform.
    assert sorted(p.name for p in walked) == ["scripts", "tool-amd64", "tool-arm64"]
    assert result.images[0].packages[-1].layer == result.images[1].packages[-1].layer
