"""Batch builds (`build --each`): one image per package, work shared across them."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from cli_support import EXAMPLES, HELLO, build_argv, cli, ok
from servers import DistributionRegistry, Podman

pytestmark = pytest.mark.integration


class _Requests(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " -> " in message:
            self.lines.append(message)


def test_each_matches_one_by_one_and_shares_blobs(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    repo = f"{host}/each"
    counter = _Requests()
    logger = logging.getLogger("imagesmith.http")
    logger.addHandler(counter)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        results = json.loads(ok(*build_argv(host, base, "--each", "--repo", repo, "--json", HELLO)))
    finally:
        logger.removeHandler(counter)
        logger.setLevel(previous)
    assert [r["layers"][-1]["package"] for r in results] == ["libgreet", "hello"]
    assert [len(r["layers"]) for r in results] == [1, 2]
    # Each blob of the run was looked at once: base layer + 2 package layers + 2 configs
    # (one-by-one builds would HEAD the shared layers once per image).
    layer_heads = [line for line in counter.lines if line.startswith("HEAD ") and "/blobs/" in line]
    digests = {re.search(r"/blobs/(sha256:[0-9a-f]+)", line).group(1) for line in layer_heads}  # type: ignore[union-attr]
    assert len(digests) == 5 and len(layer_heads) == len(digests), layer_heads
    # The same images as separate builds would make.
    for result, package in zip(results, [str(EXAMPLES / "libgreet.toml"), HELLO], strict=True):
        alone = json.loads(
            ok("--insecure-registry", host, "build", "--base-image", base, "--repo", repo, "--json", package)
        )
        assert (alone["tag"], alone["digest"]) == (result["tag"], result["digest"])


def test_each_into_a_layout(
    base: str, registry: DistributionRegistry, tmp_path: Path, podman: Podman
) -> None:
    layout = tmp_path / "stack"
    results = json.loads(
        ok(*build_argv(registry.host, base, "--each", "--output", f"oci:{layout}", "--json", HELLO))
    )
    tags = [r["tag"] or r["destinations"][0].rsplit(":", 1)[1] for r in results]
    index = json.loads((layout / "index.json").read_text())
    names = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert names == sorted(tags)
    hello_tag = next(t for t in tags if t.startswith("hello-"))
    ran = podman.podman("run", "--rm", f"oci:{layout}:{hello_tag}", "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr


def test_each_refuses_what_it_cannot_do(base: str, registry: DistributionRegistry, tmp_path: Path) -> None:
    for extra in (
        ["--tag", f"{registry.host}/x:1"],
        ["--output", f"docker-archive:{tmp_path}/a.tar"],
        ["--output", f"oci:{tmp_path}/l:tag"],
    ):
        code, _, err = cli(
            "--insecure-registry", registry.host, "build", "--each", "--base-image", base, *extra, HELLO
        )
        assert code == 2, err
        assert err.startswith("imagesmith: error: ")


def test_each_image_is_the_same_whatever_else_the_batch_holds(tmp_path: Path) -> None:
    """An image's layer order is its own dependency walk, not the batch's global order."""
    from imagesmith.inputs.load import load_packages
    from imagesmith.pipeline.run import _stack_of  # the ordering rule itself

    def package(name: str, depends: list[str]) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "1",
                    "prefix": f"/opt/{name}",
                    "content": name,
                    "depends": [f"{d}.json" for d in depends],
                }
            )
        )
        return path

    package("a", [])
    package("b", [])
    first = package("x", ["a", "b"])
    second = package("y", ["b", "a"])  # lists its dependencies the other way round
    everything = load_packages([first, second])

    by_key = {p.key: p for p in everything}
    for root in (first, second):
        alone = [p.name for p in load_packages([root])]
        in_batch = [p.name for p in _stack_of(load_packages([root])[-1], by_key)]
        assert in_batch == alone
