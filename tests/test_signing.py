"""Signatures: keys, the sigstore payload, and podman/skopeo policies that verify them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sigstorekit
from cli_support import cli, ok
from conftest import need
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from servers import DistributionRegistry

from imagesmith.artifacts.signing import (
    KEY_PASSWORD_ENV,
    KeyPasswordNeeded,
    generate_key,
    load_signing_key,
    signature_identity,
    signature_payload,
)
from imagesmith.errors import UsageError
from imagesmith.oci.digests import Digest
from imagesmith.oci.references import Reference

PASSWORD = "correct horse battery staple"


def _pem(key: object, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pem: bytes = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption,
    )
    return pem


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", tmp_path / "k.pub")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_signing_key(tmp_path / "k")
    assert key.public_pem() == (tmp_path / "k.pub").read_bytes()
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(UsageError, match="exists: keygen never overwrites"):
        generate_key(tmp_path / "k", tmp_path / "other.pub")
    assert (tmp_path / "k").read_bytes() == before and not (tmp_path / "other.pub").exists()


def test_an_encrypted_key_needs_its_password(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", tmp_path / "k.pub", PASSWORD)
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k").read_bytes()
    with pytest.raises(KeyPasswordNeeded, match=KEY_PASSWORD_ENV):
        load_signing_key(tmp_path / "k")
    with pytest.raises(UsageError, match="wrong password") as caught:
        load_signing_key(tmp_path / "k", "not it")
    assert "not it" not in str(caught.value)
    assert load_signing_key(tmp_path / "k", PASSWORD).public_pem() == (tmp_path / "k.pub").read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "holds a RSA key"),
        (lambda: _pem(ec.generate_private_key(ec.SECP384R1())), "secp384r1, not P-256"),
        (
            lambda: (
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            ),
            "is a public key",
        ),
        (lambda: b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nxyz\n", "cosign's own encrypted format"),
        (lambda: b"hello, not a key\n", "not a PEM private key"),
        (lambda: b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", "not a readable"),
    ],
)
def test_a_key_file_of_the_wrong_type_gets_one_clear_line(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "key.pem"
    data = content()  # type: ignore[operator]
    path.write_bytes(data)
    with pytest.raises(UsageError, match=message) as caught:
        load_signing_key(path)
    text = str(caught.value)
    assert "\n" not in text and str(path) in text
    assert "BEGIN" not in text  # the key's bytes never reach a message


def test_the_key_never_shows_in_its_repr(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", tmp_path / "k.pub")
    key = load_signing_key(tmp_path / "k")
    body = (tmp_path / "k").read_text().splitlines()[1]
    assert body not in repr(key) and "k" in repr(key)


def test_the_payload_is_what_containers_image_parses_and_the_signature_verifies(tmp_path: Path) -> None:
    generate_key(tmp_path / "k", tmp_path / "k.pub")
    key = load_signing_key(tmp_path / "k")
    digest = Digest.of(b"manifest")
    reference = Reference.parse("registry.example/team/app:1.0")
    identity = signature_identity(reference, digest)
    payload = signature_payload(digest, identity, timestamp=1700000000)
    assert json.loads(payload) == {
        "critical": {
            "identity": {"docker-reference": "registry.example/team/app:1.0"},
            "image": {"docker-manifest-digest": str(digest)},
            "type": "cosign container image signature",
        },
        "optional": {"creator": "imagesmith 0.1.0", "timestamp": 1700000000},
    }
    public = serialization.load_pem_public_key((tmp_path / "k.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(key.sign(payload), payload, ec.ECDSA(hashes.SHA256()))  # raises when wrong
    by_digest = signature_identity(Reference.parse(f"registry.example/team/app@{digest}"), digest)
    assert by_digest == f"registry.example/team/app@{digest}"


def test_cli_keygen_with_a_password_from_the_environment(tmp_path: Path) -> None:
    out = ok("keygen", str(tmp_path / "k"), env={KEY_PASSWORD_ENV: PASSWORD})
    assert "(encrypted)" in out and PASSWORD not in out
    code, _, err = cli("keygen", str(tmp_path / "k"))
    assert code == 2 and err.count("\n") == 1 and "never overwrites" in err
    code, _, err = cli("keygen", str(tmp_path / "j"), "--encrypt")  # no terminal in tests
    assert code == 2 and KEY_PASSWORD_ENV in err and not (tmp_path / "j").exists()


# --- against a registry, verified by podman and skopeo ------------------------------------------


@pytest.fixture(scope="module")
def signed_setup(
    registry: DistributionRegistry, busybox_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    root = tmp_path_factory.mktemp("signing")
    flags = ("--insecure-registry", registry.host, "--cache-dir", str(root / "cache"))
    images = {name: f"{registry.host}/signing/{name}:1" for name in ("signed", "unsigned", "other", "built")}
    for name in ("signed", "unsigned", "other"):
        # Distinct images (the platform label differs), so a signature of one is not the other's.
        ok(*flags, "import", str(busybox_dir), "--tag", images[name], "--env", f"WHICH={name}")
    ok("keygen", str(root / "a.key"), env={KEY_PASSWORD_ENV: PASSWORD})
    ok("keygen", str(root / "b.key"))
    return {"root": root, "flags": flags, "images": images, "registry": registry, "busybox": busybox_dir}


@pytest.mark.integration
def test_podman_and_skopeo_accept_the_signed_image_and_refuse_the_others(
    signed_setup: dict[str, object],
) -> None:
    need(sigstorekit.available(), f"sigstore-capable podman/skopeo missing: make {sigstorekit.TOOLS_TARGET}")
    root: Path = signed_setup["root"]  # type: ignore[assignment]
    flags: tuple[str, ...] = signed_setup["flags"]  # type: ignore[assignment]
    images: dict[str, str] = signed_setup["images"]  # type: ignore[assignment]
    registry: DistributionRegistry = signed_setup["registry"]  # type: ignore[assignment]
    sign_a = ("--debug", "sign", "--key", str(root / "a.key"), images["signed"])
    out = ok(*flags, *sign_a, env={KEY_PASSWORD_ENV: PASSWORD})
    assert f"Signed {images['signed']}" in out and ".sig" in out
    ok(*flags, "sign", "--key", str(root / "b.key"), images["other"])
    # The same signature twice is one layer, not two.
    again = json.loads(ok(*flags, "sign", "--key", str(root / "b.key"), images["other"], "--json"))
    assert again["added"] is True  # ECDSA signatures differ each time: a second, valid signature
    verifier = sigstorekit.Verifier(root / "verify", registry.host, root / "a.key.pub")
    pulled = verifier.podman_pull(images["signed"])
    assert pulled.returncode == 0, pulled.stderr
    refused = verifier.podman_pull(images["unsigned"])
    assert refused.returncode != 0 and "A signature was required, but no signature exists" in refused.stderr
    refused = verifier.podman_pull(images["other"])
    assert refused.returncode != 0 and "cryptographic signature verification failed" in refused.stderr
    copied = verifier.skopeo_copy(images["signed"], "signed")
    assert copied.returncode == 0, copied.stderr
    for name, message in (("unsigned", "no signature exists"), ("other", "signature verification failed")):
        refused = verifier.skopeo_copy(images[name], name)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr


@pytest.mark.integration
def test_build_sign_and_sign_by_digest_verify(signed_setup: dict[str, object], tmp_path: Path) -> None:
    need(sigstorekit.available(), f"sigstore-capable podman/skopeo missing: make {sigstorekit.TOOLS_TARGET}")
    from cli_support import HELLO

    root: Path = signed_setup["root"]  # type: ignore[assignment]
    flags: tuple[str, ...] = signed_setup["flags"]  # type: ignore[assignment]
    images: dict[str, str] = signed_setup["images"]  # type: ignore[assignment]
    registry: DistributionRegistry = signed_setup["registry"]  # type: ignore[assignment]
    result = json.loads(
        ok(
            *flags,
            "build",
            "--base-image",
            images["unsigned"],
            "--tag",
            images["built"],
            "--sign",
            str(root / "a.key"),
            "--json",
            HELLO,
            env={KEY_PASSWORD_ENV: PASSWORD},
        )
    )
    assert result["signed"][0]["identity"] == images["built"]
    verifier = sigstorekit.Verifier(tmp_path / "verify", registry.host, root / "a.key.pub")
    assert verifier.podman_pull(images["built"]).returncode == 0
    by_digest = f"{images['built'].rsplit(':', 1)[0]}@{result['digest']}"
    assert verifier.skopeo_copy(by_digest, "by-digest").returncode == 0  # repo matches: accepted
    digest = json.loads(ok(*flags, "inspect", images["unsigned"], "--json"))["digest"]
    pinned = f"{images['unsigned'].rsplit(':', 1)[0]}@{digest}"
    ok(*flags, "sign", "--key", str(root / "a.key"), pinned, env={KEY_PASSWORD_ENV: PASSWORD})
    copied = verifier.skopeo_copy(pinned, "pinned")
    assert copied.returncode == 0, copied.stderr


@pytest.mark.integration
def test_signing_bad_input_is_one_line_with_the_right_exit_code(signed_setup: dict[str, object]) -> None:
    root: Path = signed_setup["root"]  # type: ignore[assignment]
    flags: tuple[str, ...] = signed_setup["flags"]  # type: ignore[assignment]
    images: dict[str, str] = signed_setup["images"]  # type: ignore[assignment]
    missing = images["signed"].replace("signed:1", "nothere:1")
    code, _, err = cli(*flags, "sign", "--key", str(root / "b.key"), missing)
    assert code == 3 and err.count("\n") == 1 and "does not exist: nothing to sign" in err
    code, _, err = cli(*flags, "sign", "--key", str(root / "a.key.pub"), images["signed"])
    assert code == 2 and "is a public key" in err and err.count("\n") == 1
    env = {k: v for k, v in os.environ.items() if k != KEY_PASSWORD_ENV}
    code, _, err = cli(*flags, "sign", "--key", str(root / "a.key"), images["signed"], env=env)
    assert code == 2 and KEY_PASSWORD_ENV in err
    sign_a = ("--debug", "sign", "--key", str(root / "a.key"), images["signed"])
    code, _, err = cli(*flags, *sign_a, env={KEY_PASSWORD_ENV: "wrong"})
    assert code == 2 and "wrong password" in err and "wrong" not in err.replace("wrong password", "")
    # Neither the key nor its password is ever printed, even with --debug.
    code, out, err = cli(*flags, *sign_a, env={KEY_PASSWORD_ENV: PASSWORD})
    body = (root / "a.key").read_text().splitlines()[1]
    assert code == 0 and PASSWORD not in out + err and body not in out + err
    from cli_support import HELLO

    layout = root / "layout"
    code, _, err = cli(
        *flags,
        "build",
        "--base-image",
        images["unsigned"],
        "--output",
        f"oci:{layout}:1",
        "--sign",
        str(root / "b.key"),
        HELLO,
    )
    assert code == 2 and "--sign signs an image in a registry" in err and not layout.exists()


@pytest.mark.integration
def test_a_multi_platform_build_signs_its_index(
    signed_setup: dict[str, object], multiarch_base: str, tmp_path: Path
) -> None:
    need(sigstorekit.available(), f"sigstore-capable podman/skopeo missing: make {sigstorekit.TOOLS_TARGET}")
    from cli_support import HELLO

    root: Path = signed_setup["root"]  # type: ignore[assignment]
    flags: tuple[str, ...] = signed_setup["flags"]  # type: ignore[assignment]
    registry: DistributionRegistry = signed_setup["registry"]  # type: ignore[assignment]
    target = f"{registry.host}/signing/multi:1"
    platforms = ("--platform", "linux/amd64,linux/arm64")
    result = json.loads(
        ok(
            *flags,
            "build",
            "--base-image",
            multiarch_base,
            *platforms,
            "--tag",
            target,
            "--sign",
            str(root / "b.key"),
            "--json",
            HELLO,
        )
    )
    # The index (what a copy of every platform verifies) and each platform's image (what a pull
    # of one platform verifies), all under the one tag's identity.
    platform_digests = [p["digest"] for p in result["platforms"]]
    assert [s["digest"] for s in result["signed"]] == [result["digest"], *platform_digests]
    assert {s["identity"] for s in result["signed"]} == {target}
    verifier = sigstorekit.Verifier(tmp_path / "verify", registry.host, root / "b.key.pub")
    copied = verifier.skopeo_copy(target, "multi")
    assert copied.returncode == 0, copied.stderr
    # `imagesmith sign` of an index signs its platforms' images too.
    copy = f"{registry.host}/signing/multi-base:1"
    ok(*flags, "copy", multiarch_base, copy)
    signed = json.loads(ok(*flags, "sign", "--key", str(root / "b.key"), copy, "--json"))
    assert len(signed["instances"]) == 2
    copied = verifier.skopeo_copy(copy, "multi-base")
    assert copied.returncode == 0, copied.stderr
