"""Referrers: an artifact attached to an image is found through the referrers API (imagesmith
serve), the referrers tag schema (distribution 2.8) or an OCI layout's index.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from cli_support import HELLO, cli, ok
from faultproxy import FaultProxy, Rule
from servers import DistributionRegistry

from imagesmith.artifacts.referrers import attach, list_attachments, referrers_tag
from imagesmith.errors import ManifestError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.server import RegistryServer
from imagesmith.registry.transport import RegistryOptions
from imagesmith.store.cache import BlobCache

SPDX = "application/spdx+json"


def _pool(*hosts: str) -> RegistryPool:
    return RegistryPool(RegistryOptions.from_env(insecure=frozenset(hosts)))


def _subject(pool: RegistryPool, reference: str) -> Descriptor:
    ref = Reference.parse(reference)
    response = pool.client(ref.registry).get_manifest(ref.repository, ref.identifier)
    return Descriptor(response.media_type, response.digest, len(response.data))


@pytest.mark.integration
def test_the_embedded_registry_answers_the_referrers_api(busybox_dir: Path, tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "serve", port=0) as server:
        host = server.address
        flags = ("--insecure-registry", host, "--cache-dir", str(tmp_path / "cache"))
        ok(*flags, "import", str(busybox_dir), "--tag", f"{host}/base/busybox:1")
        result = json.loads(
            ok(
                *flags,
                "build",
                "--base-image",
                f"{host}/base/busybox:1",
                "--tag",
                f"{host}/stack/hello:1",
                "--sbom",
                "spdx",
                "--sbom",
                "cyclonedx",
                "--json",
                HELLO,
            )
        )
        assert [a["via"] for a in result["attached"]] == ["referrers API", "referrers API"]
        digest = result["digest"]
        url = f"http://{host}/v2/stack/hello/referrers/{digest}"
        listed = requests.get(url, timeout=10)
        assert listed.status_code == 200 and listed.headers["Content-Type"] == mt.OCI_INDEX
        assert sorted(m["artifactType"] for m in listed.json()["manifests"]) == [
            SPDX,
            "application/vnd.cyclonedx+json",
        ]
        filtered = requests.get(url, params={"artifactType": SPDX}, timeout=10)
        assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
        assert [m["artifactType"] for m in filtered.json()["manifests"]] == [SPDX]
        # No fallback tag was written: the API lists them.
        tags = requests.get(f"http://{host}/v2/stack/hello/tags/list", timeout=10).json()["tags"]
        assert referrers_tag(Digest.parse(digest)) not in tags
        shown = json.loads(ok(*flags, "inspect", "--referrers", "--json", f"{host}/stack/hello:1"))
        assert {a["via"] for a in shown["attached"]} == {"referrers API"} and len(shown["attached"]) == 2


def test_an_oci_layout_lists_the_sbom_in_its_index(base_layout: str, tmp_path: Path) -> None:
    out = f"oci:{tmp_path / 'out'}:hello"
    args = ("--cache-dir", str(tmp_path / "cache"), "build", "--base-image", base_layout, "--output", out)
    result = json.loads(ok(*args, "--sbom", "spdx", "--json", HELLO))
    assert [a["via"] for a in result["attached"]] == ["OCI layout"]
    shown = json.loads(ok("inspect", "--referrers", "--json", out))
    assert [a["artifactType"] for a in shown["attached"]] == [SPDX]
    assert shown["attached"][0]["annotations"]["org.opencontainers.image.title"] == "sbom.spdx.json"


@pytest.fixture(scope="module")
def base_layout(busybox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("base-layout")
    ok("--cache-dir", str(root / "cache"), "import", str(busybox_dir), "--output", f"oci:{root / 'base'}:1")
    return f"oci:{root / 'base'}:1"


@pytest.mark.integration
def test_the_tag_schema_index_grows_without_duplicates(registry: DistributionRegistry, base: str) -> None:
    with _pool(registry.host) as pool:
        subject = _subject(pool, base)
        target = f"{registry.host}/base/busybox"
        cache = BlobCache()
        first = attach(target, subject, SPDX, b'{"one": 1}', filename="a.json", pool=pool, cache=cache)
        again = attach(target, subject, SPDX, b'{"one": 1}', filename="a.json", pool=pool, cache=cache)
        other = attach(target, subject, "application/example", b"x", filename="b", pool=pool, cache=cache)
        assert first.via == "referrers tag" and first.tag == referrers_tag(subject.digest)
        assert again.digest == first.digest
        found_subject, attachments = list_attachments(base, pool=pool)
        assert found_subject == subject.digest
        digests = [a.digest for a in attachments if a.kind == "referrer"]
        assert digests.count(first.digest) == 1 and other.digest in digests
        _, only = list_attachments(base, pool=pool, artifact_type="application/example")
        assert [a.digest for a in only] == [other.digest]


@pytest.mark.integration
def test_a_tag_held_by_something_else_is_not_overwritten(registry: DistributionRegistry, base: str) -> None:
    with _pool(registry.host) as pool:
        subject = _subject(pool, base)
        # Another tool's image manifest (the base itself) under the subject's referrers tag.
        elsewhere = f"{registry.host}/base/other-tool"
        ok("--insecure-registry", registry.host, "copy", base, f"{elsewhere}:{referrers_tag(subject.digest)}")
        ok("--insecure-registry", registry.host, "copy", base, f"{elsewhere}:1")
        with pytest.raises(ManifestError, match="another tool uses the tag"):
            attach(elsewhere, subject, SPDX, b"{}", filename="a.json", pool=pool, cache=BlobCache())


@pytest.mark.integration
def test_a_registry_refusing_the_referrers_tag_leaves_the_image_pushed_and_says_so(
    registry: DistributionRegistry, base: str
) -> None:
    refuse = Rule(
        "PUT", r"/manifests/sha256-[0-9a-f]{64}$", "status", on=frozenset(range(1, 100)), status=403
    )
    with FaultProxy(registry.host, [refuse]) as proxy:
        flags = ("--insecure-registry", proxy.host)
        base_via_proxy = base.replace(registry.host, proxy.host)
        target = f"{proxy.host}/refused/hello:1"
        code, _, err = cli(
            *flags, "build", "--base-image", base_via_proxy, "--tag", target, "--sbom", "spdx", HELLO
        )
        assert code == 3, err
        assert (
            err.count("\n") == 1
            and "is pushed, but attaching its application/spdx+json artifact failed" in err
        )
        assert refuse.fired >= 1
        # The image itself is there, complete: it runs through skopeo-style reads.
        shown = json.loads(ok(*flags, "inspect", "--json", target))
        assert shown["digest"].startswith("sha256:") and len(shown["layers"]) == 3
