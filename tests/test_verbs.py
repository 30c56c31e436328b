"""The everyday registry verbs (tags, digest, delete, tag, manifest, config) against the CNCF
registry and `imagesmith serve`, checked with skopeo; printed references; exit codes."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli_support import cli, ok, on
from conftest import TOKEN_USERS, need_tool
from servers import DistributionRegistry, TokenIssuer

from imagesmith import Reference, RegistryOptions, delete_image, list_tags, read_manifest, tag_image
from imagesmith.errors import NotFoundError, RegistryError, UsageError
from imagesmith.registry.server import RegistryServer

pytestmark = pytest.mark.integration


def imagesmith(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """The installed CLI in a process of its own: stdout as bytes, exactly."""
    done = subprocess.run([sys.executable, "-m", "imagesmith", *args], capture_output=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def skopeo(*args: str) -> bytes:
    need_tool("skopeo")
    done = subprocess.run(["skopeo", *args], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(base: str, host: str, target: str) -> str:
    """Copy the busybox base to ``host/target`` (a fresh repository per test); its reference."""
    ref = f"{host}/{target}"
    ok("--insecure-registry", host, "copy", base, ref)
    return ref


@pytest.fixture
def served(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "served", port=0) as server:
        yield server


# ---------------------------------------------------------------- tags


def test_tags_lists_every_page_as_skopeo_does(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/tags:a")
    ok("--insecure-registry", host, "tag", ref, "b", "c", ":d", "e")
    out = ok("tags", f"{host}/verbs/tags", "--insecure-registry", host)
    # In the registry's order (distribution 2.8 sorts only pages asked for with ?n=).
    assert sorted(out.splitlines()) == ["a", "b", "c", "d", "e"]
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/verbs/tags"))
    assert listed["Tags"] == out.splitlines()
    as_json = json.loads(ok("--json", "--insecure-registry", host, "tags", f"{host}/verbs/tags"))
    assert as_json == {"repository": f"{host}/verbs/tags", "tags": out.splitlines()}
    # distribution 2.8 ignores ?n= (one page, no Link): asking for pages changes nothing.
    options = RegistryOptions(insecure=frozenset({host}))
    assert list_tags(f"{host}/verbs/tags", page_size=2, registry=options) == out.splitlines()


def test_tags_of_a_repository_that_does_not_exist(registry: DistributionRegistry) -> None:
    code, out, err = cli("--insecure-registry", registry.host, "tags", f"{registry.host}/verbs/nothing-here")
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "repository unknown" in err and "NAME_UNKNOWN" in err


# ---------------------------------------------------------------- digest, manifest, config


def test_digest_manifest_and_config_are_what_skopeo_reads(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/raw:1")
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    config = skopeo("inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}")
    digest = imagesmith("--insecure-registry", host, "digest", ref).stdout
    assert digest.decode() == sha256(raw) + "\n"
    # Byte for byte, no newline added: the manifest hashes to the digest.
    assert imagesmith("manifest", ref, "--insecure-registry", host).stdout == raw
    assert imagesmith("inspect", "--raw", ref, "--insecure-registry", host).stdout == raw  # one way
    assert imagesmith("config", ref, "--insecure-registry", host).stdout == config
    assert json.loads(raw)["config"]["digest"] == sha256(config)
    # By digest too; and --json, given before or after the command, is the same.
    by_digest = f"{host}/verbs/raw@{sha256(raw)}"
    assert imagesmith("--insecure-registry", host, "manifest", by_digest).stdout == raw
    before = json.loads(ok("--json", "--insecure-registry", host, "digest", ref))
    after = json.loads(ok("digest", ref, "--json", "--insecure-registry", host))
    assert before == after == {"reference": ref, "digest": sha256(raw)}


def test_digest_is_one_head_request(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/head:1")
    code, _, err = cli("digest", ref, "--insecure-registry", host, "--debug")  # --debug after the command
    assert code == 0, err
    exchanges = [line for line in err.splitlines() if " -> " in line and "/v2/verbs/head/" in line]
    assert len(exchanges) == 1 and "HEAD " in exchanges[0] and "/manifests/1 -> 200" in exchanges[0]


def test_digest_manifest_and_config_of_one_platform(
    registry: DistributionRegistry, multiarch_base: str
) -> None:
    host = registry.host
    index = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{multiarch_base}"))
    arm = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    flags = ("--insecure-registry", host)
    out = ok(*flags, "digest", multiarch_base, "--platform", "linux/arm64")
    assert out == arm["digest"] + "\n"
    assert ok(*flags, "digest", multiarch_base) != out  # the index itself
    manifest = imagesmith(*flags, "manifest", multiarch_base, "--platform", "linux/arm64").stdout
    assert sha256(manifest) == arm["digest"]
    config = json.loads(imagesmith(*flags, "config", multiarch_base, "--platform", "linux/arm64").stdout)
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    code, _, err = cli(*flags, "digest", multiarch_base, "--platform", "linux/s390x")
    assert code == 1 and "linux/s390x" in err


def test_manifest_and_config_of_an_oci_layout(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    ok("--insecure-registry", registry.host, "copy", base, f"oci:{tmp_path / 'layout'}:1")
    raw = skopeo("inspect", "--raw", f"oci:{tmp_path / 'layout'}:1")
    assert imagesmith("manifest", f"oci:{tmp_path / 'layout'}:1").stdout == raw
    assert imagesmith("digest", f"oci:{tmp_path / 'layout'}:1").stdout.decode() == sha256(raw) + "\n"
    assert imagesmith("config", f"oci:{tmp_path / 'layout'}:1").stdout == skopeo(
        "inspect", "--config", "--raw", f"oci:{tmp_path / 'layout'}:1"
    )


# ---------------------------------------------------------------- tag


def test_tag_puts_the_same_bytes_and_moves_no_blob(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/tag:1")
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    code, out, err = cli("tag", ref, "2", "latest", "--insecure-registry", host, "--debug")
    assert code == 0, err
    assert out.splitlines() == [
        f"Tagged {host}/verbs/tag:2 ({sha256(raw)})",
        f"Tagged {host}/verbs/tag:latest ({sha256(raw)})",
    ]
    exchanges = [line for line in err.splitlines() if " -> " in line]
    assert not any("/blobs/" in line for line in exchanges), exchanges
    assert sum("PUT " in line for line in exchanges) == 2
    for tag in ("2", "latest"):
        assert skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{host}/verbs/tag:{tag}") == raw
    # A tag given as a reference, or one that is no tag, is refused before any request.
    for bad in (f"{host}/other:1", "a/b", "-x"):
        code, _, err = cli("--insecure-registry", host, "tag", ref, bad)
        assert code == 2 and err.count("\n") == 1, err
    assert sorted(registry.tags("verbs/tag")) == ["1", "2", "latest"]


# ---------------------------------------------------------------- delete


def test_delete_by_tag_removes_the_manifest_and_its_tags(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/delete:a")
    ok("--insecure-registry", host, "tag", ref, "b")
    digest = ok("--insecure-registry", host, "digest", ref).strip()
    out = ok("--insecure-registry", host, "delete", ref)
    assert out == f"Deleted {host}/verbs/delete@{digest} (was {ref}; every tag on it is gone)\n"
    for tag in ("a", "b"):
        code, _, err = cli("--insecure-registry", host, "digest", f"{host}/verbs/delete:{tag}")
        assert code == 3 and "manifest unknown" in err
    # Again, by digest: there is nothing left to delete.
    code, _, err = cli("--insecure-registry", host, "delete", f"{host}/verbs/delete@{digest}")
    assert code == 3 and "manifest unknown" in err and err.count("\n") == 1


def test_delete_by_digest(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    ref = put(base, host, "verbs/delete-digest:1")
    digest = ok("--insecure-registry", host, "digest", ref).strip()
    by_digest = f"{host}/verbs/delete-digest@{digest}"
    out = json.loads(ok("--insecure-registry", host, "delete", by_digest, "--json"))
    assert out == {
        "reference": f"{host}/verbs/delete-digest@{digest}",
        "deleted": f"{host}/verbs/delete-digest@{digest}",
        "digest": digest,
    }
    assert registry.get(f"/v2/verbs/delete-digest/manifests/{digest}").status_code == 404


def test_a_registry_that_refuses_deletes_says_so(
    registry: DistributionRegistry, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    need_tool("docker-registry")
    with DistributionRegistry(delete=False, workdir=tmp_path_factory.mktemp("no-delete")) as strict:
        flags = ("--insecure-registry", registry.host, "--insecure-registry", strict.host)
        ref = f"{strict.host}/verbs/kept:1"
        ok(*flags, "copy", base, ref)
        code, out, err = cli(*flags, "delete", ref)
        assert code == 3 and out == ""
        assert err.count("\n") == 1 and "does not allow deletes" in err and "405" in err
        assert "UNSUPPORTED" in err and "REGISTRY_STORAGE_DELETE_ENABLED=true" in err
        assert ok(*flags, "tags", f"{strict.host}/verbs/kept") == "1\n"  # still there
        with pytest.raises(RegistryError) as caught:
            delete_image(ref, registry=RegistryOptions(insecure=frozenset({strict.host})))
        assert caught.value.status == 405 and "UNSUPPORTED" in caught.value.codes


def test_tag_and_delete_with_bearer_tokens(
    token_registry: DistributionRegistry,
    token_issuer: TokenIssuer,
    registry: DistributionRegistry,
    base: str,
    tmp_path: Path,
) -> None:
    """distribution checks the token's actions: push for `tag`, delete for `delete`."""
    user, password = next(iter(TOKEN_USERS.items()))
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {token_registry.host: {"auth": auth}}}))
    env = {
        "DOCKER_CONFIG": str(config),
        "REGISTRY_AUTH_FILE": str(tmp_path / "none.json"),
        "IMAGESMITH_INSECURE_REGISTRY": f"{registry.host},{token_registry.host}",
    }
    ref = f"{token_registry.host}/verbs/token:1"
    ok("copy", base, ref, env=env)
    ok("tag", ref, "2", env=env)
    token_issuer.reset()
    out = ok("delete", f"{token_registry.host}/verbs/token:2", env=env)
    assert out.startswith(f"Deleted {token_registry.host}/verbs/token@sha256:")
    scopes = {scope for request in token_issuer.requests for scope in request.scopes}
    assert "repository:verbs/token:delete" in scopes, scopes
    code, _, err = cli("digest", ref, env=env)
    assert code == 3 and "manifest unknown" in err


# ---------------------------------------------------------------- imagesmith serve


def test_the_verbs_against_imagesmith_serve(
    registry: DistributionRegistry, base: str, served: RegistryServer
) -> None:
    host = served.address
    flags = ("--insecure-registry", registry.host, "--insecure-registry", host)
    ref = f"{host}/verbs/served:1"
    ok(*flags, "copy", base, ref)
    options = RegistryOptions(insecure=frozenset({host}))
    tagged = tag_image(ref, ["2", "3", "4"], registry=options)
    assert [str(r) for r in tagged.references] == [f"{host}/verbs/served:{t}" for t in "234"]
    # Pages of two: the server answers two tags and a Link; every page is followed.
    with requests.Session() as session:
        session.trust_env = False  # no proxy for loopback
        first = session.get(f"http://{host}/v2/verbs/served/tags/list?n=2", timeout=30)
    assert first.json()["tags"] == ["1", "2"] and 'rel="next"' in first.headers["Link"]
    assert list_tags(f"{host}/verbs/served", page_size=2, registry=options) == ["1", "2", "3", "4"]
    assert ok(*flags, "tags", f"{host}/verbs/served") == "1\n2\n3\n4\n"
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{host}/verbs/served"))
    assert listed["Tags"] == ["1", "2", "3", "4"]
    raw = read_manifest(ref, registry=options)
    assert raw.digest == tagged.digest and sha256(raw.data) == str(tagged.digest)
    assert imagesmith(*flags, "manifest", ref).stdout == skopeo(
        "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"
    )
    deleted = delete_image(f"{host}/verbs/served:2", registry=options)
    assert deleted.digest == tagged.digest
    assert list_tags(f"{host}/verbs/served", registry=options) == []  # every tag was on that manifest
    with pytest.raises(NotFoundError):
        delete_image(Reference.parse(f"{host}/verbs/served:1"), registry=options)
    with pytest.raises(UsageError, match="works on registries"):
        delete_image("oci:/tmp/x:1")


# ---------------------------------------------------------------- printed references


def test_printed_references_are_what_docker_pull_takes(
    registry: DistributionRegistry, base: str, busybox_dir: Path, tmp_path: Path
) -> None:
    """Issue 15, item 8: `Pushed docker://HOST/REPO:TAG` could not be pasted into `docker run`."""
    host = registry.host
    target = f"{host}/verbs/printed:1"
    digestfile = tmp_path / "sub" / "copy.digest"
    out = ok("--insecure-registry", host, "copy", base, target, "--digestfile", str(digestfile))
    digest = digestfile.read_text().strip()
    assert out == f"Copied {base} -> {target} ({digest})\n"
    assert "docker://" not in out
    imported = tmp_path / "import.digest"
    tag = f"{host}/verbs/printed:2"
    out = ok(*on(host, "import", str(busybox_dir), "--tag", tag, "--digestfile", str(imported)))
    assert out.startswith(f"Pushed {host}/verbs/printed:2 ({imported.read_text().strip()})")
    # Other transports keep their prefix: that is how they are named.
    out = ok("--insecure-registry", host, "copy", target, f"oci:{tmp_path / 'l'}:1")
    assert out == f"Copied {target} -> oci:{tmp_path / 'l'}:1 ({digest})\n"
    assert ok("--insecure-registry", host, "digest", target).strip() == digest


def test_merge_writes_its_digestfile(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    host = registry.host
    digestfile = tmp_path / "merge.digest"
    out = ok(*on(host, "merge", base, "--tag", f"{host}/verbs/merged:1", "--digestfile", str(digestfile)))
    assert out.splitlines()[0] == f"Pushed {host}/verbs/merged:1 ({digestfile.read_text().strip()})"


# ---------------------------------------------------------------- exit codes


def test_exit_codes_by_category(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    """docs/cli.md, "Exit codes": one run per category, each error one line."""
    host = registry.host
    layout = tmp_path / "layout"
    ok("--insecure-registry", host, "copy", base, f"oci:{layout}:1")
    runs = {
        0: ["cache", "info", "--cache-dir", str(tmp_path / "cache")],
        1: ["config", f"oci:{tmp_path / 'not-a-layout'}"],  # a missing layout: LayoutError
        2: ["copy", base, f"oci:{layout}:2", "-j", "0"],
        3: ["--insecure-registry", host, "digest", f"{host}/verbs/absent:1"],
    }
    for expected, argv in runs.items():
        code, _, err = cli(*argv)
        assert code == expected, (argv, err)
        if expected:
            assert err.count("\n") == 1 and err.startswith("imagesmith: error: "), err
    for bad in (
        ["digest", "UPPER/case:1"],
        ["digest", "x@sha256:abc"],
        ["--json", "keygen", "k"],
        ["inspect", "--json", "--raw", "x"],
        ["tags"],
    ):
        code, _, err = cli(*bad)
        assert code == 2 and err.count("\n") == 1, (bad, err)
    # 4: content that does not match its digest (the manifest blob, damaged on disk).
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    blob = layout / "blobs" / "sha256" / manifest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[-2] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    code, _, err = cli("manifest", f"oci:{layout}:1")
    assert code == 4 and err.count("\n") == 1, err
    # 130: interrupted (SIGINT while a registry keeps the request waiting).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagesmith", "--insecure-registry", address, "tags", f"{address}/x"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        conn, _ = silent.accept()
        with conn:
            proc.send_signal(signal.SIGINT)
            _, err_bytes = proc.communicate(timeout=60)
    assert proc.returncode == 130, err_bytes
    assert b"Traceback" not in err_bytes


def test_exit_code_table_is_documented() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 130 |"):
        assert code in table
