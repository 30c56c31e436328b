"""Several imagesmith processes at once against one cache and one registry (RELIABILITY 29-30).

Real concurrency needs real processes: each build runs as ``python -m imagesmith build`` in
its own subprocess, all started before any is waited for, sharing one ``IMAGESMITH_CACHE_DIR``
that starts empty so the processes race on the same cache entries and the same blob uploads.
Every pushed image is then pulled back with :class:`RegistryClient` and each manifest, config
and layer is hashed here, independently of the client's own verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import EXAMPLES, HELLO
from servers import DistributionRegistry

from imagesmith import RegistryClient, RegistryOptions
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Manifest, parse_manifest_document

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


def _start(registry: DistributionRegistry, cache: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["IMAGESMITH_CACHE_DIR"] = str(cache)
    env.pop("SOURCE_DATE_EPOCH", None)
    return subprocess.Popen(
        [sys.executable, "-m", "imagesmith", "--insecure-registry", registry.host, "build", "--json", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> Any:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"imagesmith {proc.args!r} did not finish in {TIMEOUT}s: {err}")
    assert proc.returncode == 0, f"imagesmith {proc.args!r} failed ({proc.returncode}): {err}"
    return json.loads(out)


def _results(value: Any) -> list[dict[str, Any]]:
    return value if isinstance(value, list) else [value]


def _verify_image(client: RegistryClient, repository: str, reference: str) -> Manifest:
    """Pull the manifest, the config and every layer back and hash them here."""
    response = client.get_manifest(repository, reference)
    assert Digest.of(response.data) == response.digest
    manifest = parse_manifest_document(response.data, response.media_type)
    assert isinstance(manifest, Manifest)
    for descriptor in (manifest.config, *manifest.layers):
        h = hashlib.new(descriptor.digest.algorithm)
        size = 0
        with client.open_blob(repository, descriptor) as reader:
            while chunk := reader.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        assert size == descriptor.size, f"{descriptor.digest}: {size} bytes, expected {descriptor.size}"
        assert h.hexdigest() == descriptor.digest.hex, f"blob {descriptor.digest} is torn"
    return manifest


def _assert_no_temp_files(cache: Path) -> None:
    leftovers = [
        p
        for p in cache.rglob("*")
        if p.is_file() and (p.parent.name == "tmp" or p.name.endswith((".tmp", ".part", ".partial")))
    ]
    assert leftovers == [], f"temp files left in the shared cache: {leftovers}"


def _client(registry: DistributionRegistry) -> RegistryClient:
    return RegistryClient(registry.host, RegistryOptions(insecure=frozenset({registry.host})))


def _small_package(tmp_path: Path) -> Path:
    """A package that depends on the example stack's libgreet."""
    content = tmp_path / "pkg" / "wave"
    (content / "bin").mkdir(parents=True)
    tool = content / "bin" / "wave"
    tool.write_text("#!/bin/sh\necho wave\n")
    tool.chmod(0o755)
    (content / "share").mkdir()
    (content / "share" / "README").write_text("a second package for the concurrency test\n")
    pkg = tmp_path / "pkg" / "wave.toml"
    pkg.write_text(
        'name = "wave"\nversion = "0.1"\nprefix = "/opt/stack/wave-0.1"\ncontent = "wave"\n'
        f'depends = ["{EXAMPLES / "libgreet.toml"}"]\n'
    )
    return pkg


def test_two_processes_push_overlapping_stacks_with_one_cache(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    """RELIABILITY 29: two processes building overlapping stacks (both contain libgreet) with
    the SAME cache and pushing to the SAME repository at once both succeed; every image pulls
    back whole with matching digests, and the cache keeps no temp files."""
    cache = tmp_path / "shared-cache"
    repo = f"{registry.host}/concurrent/stack"
    wave = _small_package(tmp_path)
    first = _start(registry, cache, "--base-image", base, "--repo", repo, HELLO)
    second = _start(
        registry,
        cache,
        "--base-image",
        base,
        "--repo",
        repo,
        "--each",
        str(EXAMPLES / "libgreet.toml"),
        str(wave),
    )
    results = _results(_finish(first)) + _results(_finish(second))
    assert len(results) == 3  # hello, libgreet alone, wave

    repository = "concurrent/stack"
    layer_sets = []
    with _client(registry) as client:
        for result in results:
            tag = str(result["tag"])
            manifest = _verify_image(client, repository, tag)
            assert str(client.get_manifest(repository, tag).digest) == result["digest"]
            layer_sets.append({d.digest for d in manifest.layers})
    # The libgreet layer is shared by all three images: built twice, pushed once or twice,
    # but byte-identical (RELIABILITY 21).
    assert set.intersection(*layer_sets), "the images share no layer: libgreet was not reproducible"
    _assert_no_temp_files(cache)


def test_two_builds_race_for_one_tag(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    """RELIABILITY 30: two builds pushing DIFFERENT images to the SAME tag at once both report
    the digest they pushed; the tag ends up on one of the two, and that image is complete."""
    cache = tmp_path / "shared-cache"
    ref = f"{registry.host}/concurrent/race:latest"
    wave = _small_package(tmp_path)
    one = _start(registry, cache, "--base-image", base, "--tag", ref, HELLO)
    two = _start(registry, cache, "--base-image", base, "--tag", ref, str(wave))
    digests = {str(_results(_finish(p))[0]["digest"]) for p in (one, two)}
    assert len(digests) == 2, "the two builds should push different images"

    with _client(registry) as client:
        final = client.get_manifest("concurrent/race", "latest")
        assert str(final.digest) in digests
        _verify_image(client, "concurrent/race", "latest")
        for digest in digests:  # the losing image is still complete, reachable by digest
            _verify_image(client, "concurrent/race", digest)
    _assert_no_temp_files(cache)
