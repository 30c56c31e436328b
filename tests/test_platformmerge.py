"""Per-platform builds joined afterwards (`merge --repo`, imagesmith/platformmerge.py): the same
index, under the same tag, as `build --platform A,B` gives on one machine; and what it refuses.

Against the real registry, on the two-platform busybox bases (OCI index and Docker manifest
list), with a package whose content differs per platform (so the platforms' hashes differ and
the tag carries their combination) and the example stack (platform-independent: one hash).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import EXAMPLES, HELLO, cli, ok
from servers import DistributionRegistry
from test_multiplatform import packages  # noqa: F401  (a fixture: tool, per-platform content)

PLATFORMS = ("linux/amd64", "linux/arm64")


def flags(registry: DistributionRegistry) -> tuple[str, ...]:
    return ("--insecure-registry", registry.host)


def build_apart(
    registry: DistributionRegistry, base: str, package: Path, tmp_path: Path, repo: str
) -> list[str]:
    """Each platform built on its own, as the jobs of a pipeline do: the digest of each."""
    digests = []
    for platform in PLATFORMS:
        slug = platform.replace("/", "-")
        digest_file = tmp_path / "digests" / slug
        out = ok(
            *flags(registry),
            "build",
            "--base-image",
            base,
            "--platform",
            platform,
            "--repo",
            repo,
            "--tag-template",
            f"{{{{ name }}}}-{{{{ version }}}}-{{{{ hash }}}}.{slug}",
            "--digestfile",
            str(digest_file),
            "--json",
            str(package),
        )
        result = json.loads(out)
        assert digest_file.read_text() == result["digest"] + "\n"
        assert result["tag"].endswith(f".{slug}")
        digests.append(result["digest"])
    return digests


@pytest.mark.integration
@pytest.mark.parametrize("family", ["oci", "docker"])
def test_merged_builds_are_the_index_one_multi_platform_build_gives(
    registry: DistributionRegistry,
    multiarch_base: str,
    multiarch_base_docker: str,
    packages: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    family: str,
) -> None:
    base = multiarch_base if family == "oci" else multiarch_base_docker
    repo = f"{registry.host}/apart-{family}"
    hashes = {}
    for package in (packages["tool"], EXAMPLES / "hello.json"):
        digests = build_apart(registry, base, package, tmp_path / package.stem, repo)
        merged = json.loads(
            ok(*flags(registry), "merge", "--json", "--repo", repo, *(f"{repo}@{d}" for d in digests))
        )
        one_machine: tuple[str, ...] = ("--base-image", base, "--platform", ",".join(PLATFORMS))
        one_machine += ("--repo", f"{registry.host}/all")
        whole = json.loads(ok(*flags(registry), "build", "--json", *one_machine, str(package)))
        assert merged["reference"] == f"{repo}:{whole['tag']}"
        assert merged["digest"] == whole["digest"]
        assert merged["platforms"] == ["linux/amd64", "linux/arm64/v8"]
        configs = [
            json.loads(ok(*flags(registry), "inspect", "--json", f"{repo}@{d}"))["config"] for d in digests
        ]
        hashes[package.stem] = {c["Labels"]["io.imagesmith.package.hash"] for c in configs}
    # tool's content differs per platform, so the tag carries a hash combining both platforms'
    assert len(hashes["tool"]) == 2 and len(hashes["hello"]) == 1


@pytest.mark.integration
def test_default_tags_of_per_platform_builds_differ(
    registry: DistributionRegistry, multiarch_base: str, tmp_path: Path
) -> None:
    """hello's content is the same on both platforms (one hash): with the default template each
    platform's image still gets its own tag, so `merge` of the two tags holds both platforms."""
    repo = f"{registry.host}/apart-default"
    tags = []
    for platform in PLATFORMS:
        out = ok(
            *flags(registry),
            "build",
            "--base-image",
            multiarch_base,
            "--platform",
            platform,
            "--repo",
            repo,
            "--json",
            str(EXAMPLES / "hello.json"),
        )
        tags.append(json.loads(out)["tag"])
    slugs = [p.replace("/", "-") for p in PLATFORMS]
    assert [t.rsplit(".", 1)[1] for t in tags] == slugs
    assert tags[0].rsplit(".", 1)[0] == tags[1].rsplit(".", 1)[0]  # one hash, two tags
    merged = json.loads(
        ok(*flags(registry), "merge", "--json", "--tag", f"{repo}:both", *(f"{repo}:{t}" for t in tags))
    )
    assert merged["platforms"] == ["linux/amd64", "linux/arm64/v8"]


def test_merge_repo_refuses_what_it_cannot_name(
    registry: DistributionRegistry, base: str, multiarch_base: str, tmp_path: Path
) -> None:
    repo = f"{registry.host}/no"
    hello, libgreet = EXAMPLES / "hello.json", EXAMPLES / "libgreet.toml"
    amd64 = ("--platform", "linux/amd64", "--repo", repo)
    built = {
        path.stem: json.loads(
            ok(*flags(registry), "build", "--json", "--base-image", multiarch_base, *amd64, str(path))
        )["digest"]
        for path in (hello, libgreet)
    }
    cases = {
        (
            f"{repo}@{built['hello']}",
            f"{repo}@{built['libgreet']}",
        ): "the sources are images of different packages (hello 2.12, libgreet 1.0)",
        (base,): "carries no imagesmith package labels",
        (multiarch_base,): "is an index: --repo names the index from the package labels of single-platform",
        ("oci:/nowhere",): "is not in a registry",
        (
            f"other.example/x@sha256:{'0' * 64}",
        ): f"is on other.example, but the index goes to {registry.host}",
    }
    for sources, message in cases.items():
        code, out, err = cli(*flags(registry), "merge", "--repo", repo, *sources)
        assert code == 2 and message in err and err.count("\n") == 1 and out == "", err
    code, _, err = cli(*flags(registry), "merge", "--tag", f"{repo}:x", "--tag-template", "{{ name }}", base)
    assert code == 2 and "--tag-template names the index with --repo" in err
    assert cli(*flags(registry), "merge", base)[0] == 2  # --tag or --repo (argparse says so)


def test_digestfile(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "digest"
    out = ok(
        *flags(registry),
        "build",
        "--json",
        "--base-image",
        base,
        "--repo",
        f"{registry.host}/df",
        "--digestfile",
        str(target),
        str(EXAMPLES / "hello.json"),
    )
    assert target.read_text() == json.loads(out)["digest"] + "\n"
    each = ("--each", "--base-image", base, "--repo", f"{registry.host}/df")
    code, _, err = cli(*flags(registry), "build", *each, "--digestfile", str(target), HELLO)
    assert code == 2 and "--digestfile holds one digest: --each writes one image per package" in err
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, _, err = cli(
        *flags(registry),
        "build",
        "--base-image",
        base,
        "--repo",
        f"{registry.host}/df",
        "--digestfile",
        str(blocked / "digest"),
        str(EXAMPLES / "hello.json"),
    )
    assert code == 2 and f"--digestfile {blocked / 'digest'}" in err
