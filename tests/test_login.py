"""``imagesmith login`` / ``logout`` and :mod:`imagesmith.login`.

The integration tests log in to the real Basic and Bearer registries of ``conftest``; the
rest checks the file format, helpers and CLI plumbing without a server.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import sys
from pathlib import Path

import pytest
from cli_support import HELLO, cli, ok
from conftest import BASIC_USERS, TOKEN_USERS
from servers import DistributionRegistry

from imagesmith.errors import AuthenticationError, UsageError
from imagesmith.registry.credentials import (
    DOCKER_HUB_AUTH_KEY,
    Credentials,
    CredentialStore,
    auth_key,
    registry_host,
)
from imagesmith.registry.login import login, logout
from imagesmith.registry.transport import RegistryOptions

SENTINEL = "S3NT1NEL-login-pa55w0rd-do-not-leak"
ALICE, ALICE_PW = next(iter(BASIC_USERS.items()))
BOB, BOB_PW = next(iter(TOKEN_USERS.items()))

HELPER = """#!{python}
import json, pathlib, sys
store = pathlib.Path({store!r})
data = json.loads(store.read_text()) if store.exists() else {{}}
action = sys.argv[1]
raw = sys.stdin.read()
with open({log!r}, "a") as log:
    log.write(action + "\\n")
if action == "store":
    req = json.loads(raw)
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
    store.write_text(json.dumps(data))
elif action == "get":
    url = raw.strip()
    if url not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = data[url]
    print(json.dumps({{"ServerURL": url, "Username": user, "Secret": secret}}))
elif action == "erase":
    url = raw.strip()
    if url not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    del data[url]
    store.write_text(json.dumps(data))
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def install_helper(tmp_path: Path, name: str = "testhelper") -> tuple[Path, Path, Path]:
    """A ``docker-credential-NAME`` keeping its secrets in a JSON file; (bindir, store, log)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    store, log = tmp_path / "helper-store.json", tmp_path / "helper.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(HELPER.format(python=sys.executable, store=str(store), log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir, store, log


def as_user(host: str, user: str) -> tuple[str, ...]:
    """``login HOST -u USER --password-stdin`` (the password goes to ``login_cli``)."""
    return ("login", host, "-u", user, "--password-stdin")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def login_cli(
    monkeypatch: pytest.MonkeyPatch, config: Path, *args: str, password: str | None = None
) -> tuple[int, str, str]:
    """``imagesmith [args]`` with DOCKER_CONFIG=config and ``password`` on stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("" if password is None else password + "\n"))
    return cli(*args, env={"DOCKER_CONFIG": str(config)})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The test's DOCKER_CONFIG folder, ``tmp_path/docker`` (login creates it)."""
    return tmp_path / "docker"


# ------------------------------------------------------------------ real registries


@pytest.mark.integration
def test_login_basic_registry_writes_config_then_build_and_inspect(
    basic_registry: DistributionRegistry,
    registry: DistributionRegistry,
    base: str,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Login stores 0600 ``auths`` keeping the other keys; build/inspect then use it
    (RELIABILITY 25: the password is not in --debug output)."""
    config.mkdir(mode=0o755)
    (config / "config.json").write_text(
        json.dumps(
            {
                "auths": {"other.example": {"auth": b64("x:y")}},
                "psFormat": "table {{.ID}}",
                "HttpHeaders": {"X-Keep": "1"},
            }
        )
    )
    host = basic_registry.host
    code, out, err = login_cli(
        monkeypatch, config, "--debug", *as_user(host, ALICE), "--insecure-registry", host, password=ALICE_PW
    )
    assert code == 0, err
    assert out.strip() == f"Login succeeded for {host} (credentials in {config / 'config.json'})"
    for text in (out, err):
        assert ALICE_PW not in text and b64(f"{ALICE}:{ALICE_PW}") not in text
    written = json.loads((config / "config.json").read_text())
    assert mode(config / "config.json") == 0o600
    assert base64.b64decode(written["auths"][host]["auth"]).decode() == f"{ALICE}:{ALICE_PW}"
    assert written["auths"]["other.example"] == {"auth": b64("x:y")}
    assert written["psFormat"] == "table {{.ID}}" and written["HttpHeaders"] == {"X-Keep": "1"}
    assert not [p for p in config.iterdir() if p.name != "config.json"]  # no temp file left

    env = {"DOCKER_CONFIG": str(config), "IMAGESMITH_INSECURE_REGISTRY": f"{registry.host},{host}"}
    target = f"{host}/login/hello:1"
    ok("build", "--base-image", base, "--tag", target, HELLO, env=env)
    assert "login/hello" in ok("inspect", "--json", target, env=env)


@pytest.mark.integration
def test_login_wrong_password_writes_nothing_and_never_shows_it(
    basic_registry: DistributionRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused login exits 3 naming the registry; nothing is written; the password appears
    nowhere, not even with --debug (RELIABILITY 25)."""
    config = tmp_path / "docker"
    host = basic_registry.host
    code, out, err = login_cli(
        monkeypatch, config, "--debug", "--insecure-registry", host, *as_user(host, ALICE), password=SENTINEL
    )
    assert code == 3, err
    assert host in err and "refused" in err
    for text in (out, err):
        assert SENTINEL not in text and b64(f"{ALICE}:{SENTINEL}") not in text
    assert not config.exists()
    with pytest.raises(AuthenticationError) as info:
        login(
            host,
            ALICE,
            SENTINEL,
            options=RegistryOptions(insecure=frozenset({host})),
            config_path=tmp_path / "c.json",
        )
    assert SENTINEL not in str(info.value) and SENTINEL not in repr(info.value)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.integration
def test_login_token_registry(
    token_registry: DistributionRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bearer: the token is fetched with the credentials; a wrong password is refused by the
    token server and never logged (RELIABILITY 25)."""
    host = token_registry.host
    options = RegistryOptions(insecure=frozenset({host}))
    path = login(host, BOB, BOB_PW, options=options, config_path=tmp_path / "config.json")
    assert path == tmp_path / "config.json"
    assert CredentialStore(path).get(host) == Credentials(BOB, BOB_PW)

    config = tmp_path / "docker"
    login_bob = ("login", "--insecure-registry", host, host, "-u", BOB, "--password-stdin")
    code, out, err = login_cli(monkeypatch, config, "--debug", *login_bob, password=SENTINEL)
    assert code == 3 and host in err
    assert SENTINEL not in out + err and b64(f"{BOB}:{SENTINEL}") not in out + err
    assert not config.exists()


@pytest.mark.integration
def test_logout_then_push_fails(
    basic_registry: DistributionRegistry,
    registry: DistributionRegistry,
    base: str,
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Logout removes the entry (and only it); a push afterwards is an auth error (exit 3)."""
    host = basic_registry.host
    code, _, err = login_cli(
        monkeypatch, config, *as_user(host, ALICE), "--insecure-registry", host, password=ALICE_PW
    )
    assert code == 0, err
    data = json.loads((config / "config.json").read_text())
    data["auths"]["keep.example"] = {"auth": b64("k:v")}
    (config / "config.json").write_text(json.dumps(data))

    code, out, err = login_cli(monkeypatch, config, "logout", host)
    assert code == 0, err
    assert out.strip() == f"Removed credentials for {host}"
    assert json.loads((config / "config.json").read_text())["auths"] == {"keep.example": {"auth": b64("k:v")}}
    code, out, _ = login_cli(monkeypatch, config, "logout", host)
    assert code == 0 and out.strip() == f"No credentials stored for {host}"

    env = {"DOCKER_CONFIG": str(config), "IMAGESMITH_INSECURE_REGISTRY": f"{registry.host},{host}"}
    code, _, err = cli("build", "--base-image", base, "--tag", f"{host}/login/out:1", HELLO, env=env)
    assert code == 3 and host in err


@pytest.mark.integration
def test_login_through_credential_helper(
    basic_registry: DistributionRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credHelpers[host]: login stores via ``docker-credential-testhelper store``, not in the
    file; ``get`` reads it back; logout erases it (RELIABILITY 25: never in output)."""
    bindir, store, log = install_helper(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    host = basic_registry.host
    config = tmp_path / "docker"
    config.mkdir()
    original = {"credHelpers": {host: "testhelper"}, "auths": {}}
    (config / "config.json").write_text(json.dumps(original))

    code, out, err = login_cli(
        monkeypatch, config, "--debug", *as_user(host, ALICE), "--insecure-registry", host, password=ALICE_PW
    )
    assert code == 0, err
    assert out.strip() == f"Login succeeded for {host} (credentials in docker-credential-testhelper)"
    assert ALICE_PW not in out + err
    assert json.loads((config / "config.json").read_text()) == original
    assert json.loads(store.read_text()) == {host: [ALICE, ALICE_PW]}
    assert CredentialStore(config / "config.json").get(host) == Credentials(ALICE, ALICE_PW)
    assert "store" in log.read_text().split()

    assert logout(host, config_path=config / "config.json") is True
    assert json.loads(store.read_text()) == {}
    assert logout(host, config_path=config / "config.json") is False


# ------------------------------------------------------------------ no server


def test_store_without_verify_hub_key_and_permissions(tmp_path: Path) -> None:
    """Docker Hub aliases share the key ``https://index.docker.io/v1/``; a new directory is
    0700 and the file 0600 (RELIABILITY 25: the secret is not in repr)."""
    config = tmp_path / "new" / "config.json"
    for alias in ("docker.io", "registry-1.docker.io", "index.docker.io", "https://index.docker.io/v1/"):
        assert auth_key(registry_host(alias)) == DOCKER_HUB_AUTH_KEY
    assert login("docker.io", "me", SENTINEL, config_path=config, verify=False) == config
    assert mode(config.parent) == 0o700 and mode(config) == 0o600
    data = json.loads(config.read_text())
    assert list(data["auths"]) == [DOCKER_HUB_AUTH_KEY]
    creds = CredentialStore(config).get("index.docker.io")
    assert creds == Credentials("me", SENTINEL) and SENTINEL not in repr(creds)
    assert logout("registry-1.docker.io", config_path=config) is True
    assert json.loads(config.read_text())["auths"] == {}
    assert logout("docker.io", config_path=tmp_path / "missing.json") is False


def test_login_keeps_file_and_uses_docker_config_env(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "reg.example:5000": {"auth": b64("old:old"), "identitytoken": "stale"},
                    "http://reg.example:5000": {"auth": b64("older:older")},
                },
                "credsStore": "",
            }
        )
    )
    env = {"DOCKER_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    path = login("https://reg.example:5000/", "new", "pw", verify=False, environ=env)
    assert path == config / "config.json"
    data = json.loads(path.read_text())
    assert data["auths"]["reg.example:5000"] == {"auth": b64("new:pw")}
    assert data["credsStore"] == ""
    assert CredentialStore(environ=env).get("reg.example:5000") == Credentials("new", "pw")
    # Logout removes every registry-wide spelling, so nothing older resurfaces.
    assert logout("reg.example:5000", environ=env) is True
    assert json.loads(path.read_text())["auths"] == {}


def test_login_refuses_bad_input_and_broken_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    for registry in ("reg.example/team/repo", "ftp://reg.example", "", "a b"):
        with pytest.raises(UsageError):
            login(registry, "u", "p", config_path=config, verify=False)
    with pytest.raises(UsageError):
        login("reg.example", "u:x", "p", config_path=config, verify=False)
    with pytest.raises(UsageError):
        login("reg.example", "u", "", config_path=config, verify=False)
    config.write_text("{not json")
    with pytest.raises(UsageError):
        login("reg.example", "u", "p", config_path=config, verify=False)
    assert config.read_text() == "{not json"  # a broken file is never overwritten


def test_helper_missing_or_failing(tmp_path: Path) -> None:
    """A configured helper that is absent or fails is an error, never a silent file write;
    its message does not quote the secret (RELIABILITY 25)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    failing = bindir / "docker-credential-echo"
    failing.write_text("#!/bin/sh\ncat; exit 2\n")
    failing.chmod(0o755)
    config = tmp_path / "config.json"
    env = {"PATH": str(bindir)}
    config.write_text(json.dumps({"credsStore": "absent"}))
    with pytest.raises(UsageError, match="not on PATH"):
        login("reg.example", "u", SENTINEL, config_path=config, verify=False, environ=env)
    config.write_text(json.dumps({"credsStore": "echo"}))
    with pytest.raises(AuthenticationError) as info:
        login("reg.example", "u", SENTINEL, config_path=config, verify=False, environ=env)
    assert "docker-credential-echo" in str(info.value) and SENTINEL not in str(info.value)
    assert "auths" not in json.loads(config.read_text())


def test_cli_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --password-stdin or -p and no terminal: a usage error naming --password-stdin;
    -p warns about the process list; -p and --password-stdin are exclusive."""
    config = tmp_path / "docker"
    code, _, err = login_cli(monkeypatch, config, "login", "reg.example", "-u", "u")
    assert code == 2 and "--password-stdin" in err
    code, _, err = login_cli(monkeypatch, config, "login", "reg.example", "--password-stdin", password="x")
    assert code == 2 and "-u USER" in err
    code, _, err = login_cli(
        monkeypatch, config, "login", "reg.example", "-u", "u", "-p", "x", "--password-stdin"
    )
    assert code == 2
    # -p: the warning, then the (failing: nothing listens there) verification.
    code, _, err = login_cli(monkeypatch, config, "login", "127.0.0.1:1", "-u", "u", "-p", SENTINEL)
    assert "process list" in err and code == 3 and SENTINEL not in err
    assert not config.exists()
