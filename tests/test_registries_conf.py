"""Host settings shared with podman and skopeo: --authfile/--creds, registries.conf, certs.d.

Every test runs the CLI against the CNCF registry on loopback, with ``CONTAINERS_REGISTRIES_CONF``,
``IMAGESMITH_REGISTRIES_CONF_DIR``, ``IMAGESMITH_CERTS_DIR`` and ``HOME`` pointed at files of
its own, so nothing under /etc or the user's home is read.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import HELLO, cli, ok
from conftest import BASIC_USERS, need_tool
from faultproxy import FaultProxy
from servers import DistributionRegistry

from imagesmith.errors import UsageError
from imagesmith.oci.references import Reference
from imagesmith.sysregistries import RegistriesConf, certs_dir_for


def _env(tmp_path: Path, conf: str | None = None, **extra: str) -> dict[str, str]:
    """An environment whose registries.conf is ``conf`` (empty when None), with no drop-ins,
    no certs.d, and a HOME without logins."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf.d").mkdir(exist_ok=True)
    (tmp_path / "certs.d").mkdir(exist_ok=True)
    path = tmp_path / "registries.conf"
    path.write_text(conf or "")
    return {
        "CONTAINERS_REGISTRIES_CONF": str(path),
        "IMAGESMITH_REGISTRIES_CONF_DIR": str(tmp_path / "conf.d"),
        "IMAGESMITH_CERTS_DIR": str(tmp_path / "certs.d"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "REGISTRY_AUTH_FILE": "",
        "XDG_RUNTIME_DIR": "",
        "IMAGESMITH_INSECURE_REGISTRY": "",
        "IMAGESMITH_CA_CERT": "",
        **extra,
    }


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imagesmith: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- credentials


def test_creds_and_authfile(
    basic_registry: DistributionRegistry, registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    user, password = next(iter(BASIC_USERS.items()))
    env = _env(tmp_path)
    hosts = ("--insecure-registry", registry.host, "--insecure-registry", basic_registry.host)
    target = f"{basic_registry.host}/conf/creds:1"
    # No login anywhere: refused, and the advice names the new options.
    code, _, err = cli(*hosts, "copy", base, target, env=env)
    assert code == 3, err
    assert "--creds" in _one_error_line(err)
    # --creds after the command, USER:PASS.
    ok(*hosts, "copy", base, target, "--creds", f"{user}:{password}", env=env)
    # --authfile before the command: podman's auth.json format.
    authfile = tmp_path / "auth.json"
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    out = ok(*hosts, "--authfile", str(authfile), "inspect", target, env=env)
    assert target in out
    # A wrong password: one line, exit 3, the password nowhere.
    code, out, err = cli(*hosts, "--creds", f"{user}:not-{password}-x", "inspect", target, env=env)
    assert code == 3
    line = _one_error_line(err)
    assert basic_registry.host in line
    assert f"not-{password}-x" not in err + out
    # USER alone with no terminal: a usage error, nothing asked.
    code, _, err = cli(*hosts, "--creds", user, "inspect", target, env=env)
    assert code == 2 and "stdin is not a terminal" in _one_error_line(err)
    # A missing --authfile is named.
    code, _, err = cli(*hosts, "--authfile", str(tmp_path / "nope.json"), "inspect", target, env=env)
    assert code == 2 and "nope.json" in _one_error_line(err)
    # skopeo reads the same auth file.
    need_tool("skopeo")
    run = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--authfile", str(authfile), f"docker://{target}"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": env["HOME"]},
    )
    assert run.returncode == 0, run.stderr


# --------------------------------------------------------------------------- registries.conf


def test_insecure_from_registries_conf(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    # Without the setting, plain http is refused (https to an http server).
    code, _, err = cli("inspect", base, env=_env(tmp_path))
    assert code == 3 and "--insecure-registry" in _one_error_line(err)
    conf = f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
    out = ok("inspect", base, env=_env(tmp_path, conf))
    assert base in out
    # skopeo agrees with the same file.
    need_tool("skopeo")
    run = subprocess.run(
        ["skopeo", "--registries-conf", str(tmp_path / "registries.conf"), "inspect", f"docker://{base}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_blocked_registry_is_refused(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    prefix = f"{registry.host}/base"
    conf = f'[[registry]]\nprefix = "{prefix}"\nlocation = "{prefix}"\nblocked = true\n'
    env = _env(tmp_path, conf)
    code, out, err = cli("--insecure-registry", registry.host, "inspect", base, env=env)
    assert code == 3 and out == ""
    line = _one_error_line(err)
    assert "blocked by registries.conf" in line and str(tmp_path / "registries.conf") in line
    # Outside the blocked prefix the registry is used as usual.
    other = f"{registry.host}/other/none:1"
    code, _, err = cli("--insecure-registry", registry.host, "inspect", other, env=env)
    assert code == 3 and "not found" in err


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """A second plain-http registry acting as a pull-through mirror."""
    need_tool("docker-registry")
    with DistributionRegistry(workdir=tmp_path_factory.mktemp("mirror")) as reg:
        yield reg


@pytest.fixture
def proxy(mirror: DistributionRegistry) -> Iterator[FaultProxy]:
    """A proxy in front of the mirror, counting the requests it sees."""
    with FaultProxy(mirror.host) as p:
        yield p


def test_mirror_serves_the_base_image(
    registry: DistributionRegistry, mirror: DistributionRegistry, proxy: FaultProxy, base: str, tmp_path: Path
) -> None:
    hosts = ("--insecure-registry", f"{registry.host},{mirror.host}")
    ok(*hosts, "copy", base, f"{mirror.host}/base/busybox:1", env=_env(tmp_path))
    # The image is named on a registry nobody can reach; only its mirror (behind a counting
    # proxy) has it.
    conf = (
        '[[registry]]\nlocation = "unreachable.invalid"\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}"\ninsecure = true\n'
    )
    env = _env(tmp_path, conf)
    target = f"{registry.host}/conf/mirrored:1"
    out = ok(
        *hosts,
        "build",
        "--base-image",
        "unreachable.invalid/base/busybox:1",
        "--tag",
        target,
        "--json",
        HELLO,
        env=env,
    )
    assert json.loads(out)["reference"].startswith(target)
    assert proxy.count("GET", r"^/v2/base/busybox/manifests/1$") == 1
    # The config at least (the layer may already be in the blob cache from the copy above).
    assert proxy.count("GET", r"^/v2/base/busybox/blobs/sha256:") >= 1
    # Without registries.conf the same build cannot find its base.
    code, _, err = cli(
        *hosts,
        "build",
        "--base-image",
        "unreachable.invalid/base/busybox:1",
        "--tag",
        target,
        HELLO,
        env=_env(tmp_path / "plain"),
    )
    assert code == 3, err
    # skopeo reads the same file the same way (pointed at the mirror itself: the proxy keeps
    # one of the several Accept headers skopeo sends).
    need_tool("skopeo")
    direct = tmp_path / "direct.conf"
    direct.write_text(conf.replace(proxy.host, mirror.host))
    run = subprocess.run(
        [
            "skopeo",
            "--registries-conf",
            str(direct),
            "inspect",
            "--no-tags",
            "docker://unreachable.invalid/base/busybox:1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_mirror_down_falls_back_to_the_location(
    registry: DistributionRegistry, proxy: FaultProxy, base: str, tmp_path: Path
) -> None:
    # The first mirror is down, the second does not have the image: the location serves it.
    conf = (
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        '[[registry.mirror]]\nlocation = "127.0.0.1:1"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{proxy.host}/elsewhere"\ninsecure = true\n'
    )
    target = f"{registry.host}/conf/fallback:1"
    out = ok("build", "--base-image", base, "--tag", target, "--json", HELLO, env=_env(tmp_path, conf))
    assert json.loads(out)["reference"].startswith(target)
    assert proxy.count("GET", r"^/v2/elsewhere/base/busybox/manifests/1$") == 1


def test_mirror_is_not_used_for_pushes(
    registry: DistributionRegistry, mirror: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    conf = (
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
    )
    target = f"{registry.host}/conf/pushed-here:1"
    ok("build", "--base-image", base, "--tag", target, HELLO, env=_env(tmp_path, conf))
    assert "1" in registry.tags("conf/pushed-here")
    assert mirror.get("/v2/conf/pushed-here/tags/list").status_code == 404


def test_alias_and_search_registries(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    conf = (
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        f'[aliases]\n"mybusybox" = "{registry.host}/base/busybox"\n'
    )
    out = ok("inspect", "mybusybox:1", env=_env(tmp_path, conf))
    assert f"{registry.host}/base/busybox:1" in out
    # One search registry: short names live there.
    one = f'unqualified-search-registries = ["{registry.host}"]\n' + conf
    out = ok("inspect", "base/busybox:1", env=_env(tmp_path, one))
    assert f"{registry.host}/base/busybox:1" in out
    # Several and no alias: an error naming them, nothing guessed.
    two = f'unqualified-search-registries = ["{registry.host}", "quay.io"]\n' + conf
    code, _, err = cli("inspect", "base/busybox:1", env=_env(tmp_path, two))
    assert code == 2
    line = _one_error_line(err)
    assert registry.host in line and "quay.io" in line and "[aliases]" in line


def test_drop_ins_and_user_file_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a user: root's short-name-aliases.conf is /var/cache/containers/, outside the test.
    monkeypatch.setattr("imagesmith.sysregistries.os.geteuid", lambda: 1000)
    home = tmp_path / "home"
    system = tmp_path / "system.conf"
    system.write_text('unqualified-search-registries = ["a.example"]\n[aliases]\n"x" = "a.example/x"\n')
    dropins = tmp_path / "conf.d"
    dropins.mkdir()
    (dropins / "10-b.conf").write_text('unqualified-search-registries = ["b.example"]\n')
    (dropins / "20-alias.conf").write_text('[aliases]\n"y" = "c.example/y"\n')
    (dropins / "ignored.txt").write_text("not toml [[")
    env = {
        "CONTAINERS_REGISTRIES_CONF": str(system),
        "IMAGESMITH_REGISTRIES_CONF_DIR": str(dropins),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    conf = RegistriesConf.load(env)
    assert conf.search == ("b.example",)
    assert dict(conf.aliases) == {"x": "a.example/x", "y": "c.example/y"}
    assert Reference.parse("z", registries=conf).registry == "b.example"
    # The machine-written short-name-aliases.conf wins over every other file.
    cache = tmp_path / "cache" / "containers"
    cache.mkdir(parents=True)
    (cache / "short-name-aliases.conf").write_text('[aliases]\n"x" = "d.example/x"\n')
    assert RegistriesConf.load(env).aliases["x"] == "d.example/x"
    # Without CONTAINERS_REGISTRIES_CONF, the user's file replaces the system file.
    user = home / ".config" / "containers"
    user.mkdir(parents=True)
    (user / "registries.conf").write_text('unqualified-search-registries = ["u.example"]\n')
    del env["CONTAINERS_REGISTRIES_CONF"], env["IMAGESMITH_REGISTRIES_CONF_DIR"]
    conf = RegistriesConf.load(env)
    assert conf.search == ("u.example",) and str(user / "registries.conf") in conf.sources
    assert not any(s.startswith("/etc/") for s in conf.sources)
    # An explicitly named file must exist; bad TOML is named.
    with pytest.raises(UsageError, match="does not exist"):
        RegistriesConf.load({"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "none.conf"), "HOME": str(home)})
    (tmp_path / "bad.conf").write_text("[[registry]\n")
    with pytest.raises(UsageError, match=r"bad\.conf is not valid TOML"):
        RegistriesConf.from_files(tmp_path / "bad.conf")


def test_no_registries_conf_keeps_docker_hub(tmp_path: Path) -> None:
    empty = RegistriesConf.from_files(tmp_path / "missing.conf")
    assert str(Reference.parse("ubuntu", registries=empty)) == "docker.io/library/ubuntu:latest"
    assert str(Reference.parse("org/app:1", registries=empty)) == "docker.io/org/app:1"


def test_pull_sources_follow_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "r.conf"
    path.write_text(
        '[[registry]]\nprefix = "example.com/foo"\nlocation = "internal.example.com/bar/foo"\n'
        '[[registry.mirror]]\nlocation = "m1.example.com/foo"\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "m2.example.com/foo"\npull-from-mirror = "tag-only"\n'
    )
    conf = RegistriesConf.from_files(path)
    sources = conf.pull_sources("example.com", "foo/app", by_digest=False)
    by_tag = [(s.registry, s.repository) for s in sources]
    assert by_tag == [("m2.example.com", "foo/app"), ("internal.example.com", "bar/foo/app")]
    by_digest = [s.registry for s in conf.pull_sources("example.com", "foo/app", by_digest=True)]
    assert by_digest == ["m1.example.com", "internal.example.com"]
    assert [s.registry for s in conf.pull_sources("example.com", "other", by_digest=False)] == ["example.com"]
    path.write_text(
        '[[registry]]\nlocation = "x.io"\n[[registry.mirror]]\nlocation = "m.io"\npull-from-mirror = "some"\n'
    )
    with pytest.raises(UsageError, match="pull-from-mirror 'some'"):
        RegistriesConf.from_files(path)


# --------------------------------------------------------------------------- certs.d


def test_certs_d_ca_makes_a_private_ca_registry_work(
    tls_registry: DistributionRegistry, registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    assert tls_registry.ca_cert is not None
    target = f"{tls_registry.host}/conf/certs:1"
    env = _env(tmp_path)
    hosts = ("--insecure-registry", registry.host)
    code, _, err = cli(*hosts, "copy", base, target, env=env)
    assert code == 3
    line = _one_error_line(err)
    assert f"certs.d/{tls_registry.host}/ca.crt" in line
    host_dir = tmp_path / "certs.d" / tls_registry.host
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_bytes(tls_registry.ca_cert.read_bytes())
    ok(*hosts, "copy", base, target, env=env)
    assert target in ok("inspect", target, env=env)
    # skopeo with the same directory.
    need_tool("skopeo")
    run = subprocess.run(
        ["skopeo", "inspect", "--cert-dir", str(host_dir), f"docker://{target}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # A client certificate without its key is named.
    (host_dir / "client.cert").write_text("x")
    with pytest.raises(UsageError, match=r"client.cert: client certificate without its key client.key"):
        certs_dir_for(tls_registry.host, [tmp_path / "certs.d"])


def test_insecure_https_registry_skips_certificate_checks(
    tls_registry: DistributionRegistry, registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    # registries.conf's insecure = true on an https registry: TLS without verification, as
    # podman does (--insecure-registry would speak plain http to it and fail).
    target = f"{tls_registry.host}/conf/unverified:1"
    hosts = ("--insecure-registry", registry.host)
    code, _, err = cli(*hosts, "copy", base, target, env=_env(tmp_path))
    assert code == 3 and "certificate" in _one_error_line(err)
    conf = f'[[registry]]\nlocation = "{tls_registry.host}"\ninsecure = true\n'
    ok(*hosts, "copy", base, target, env=_env(tmp_path, conf))
    assert target in ok("inspect", target, env=_env(tmp_path, conf))
