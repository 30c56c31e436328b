"""``imagesmith sign`` and ``imagesmith keygen``, and the private key ``build --sign`` reads."""

from __future__ import annotations

import getpass
import os
import sys
from typing import TYPE_CHECKING

from imagesmith.cli.args import KEY_PASSWORD_ENV, Commands, json_arg, registry_args
from imagesmith.cli.context import Context
from imagesmith.cli.output import say
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.artifacts.signing import SigningKey


def add_sign(commands: Commands) -> None:
    p = commands.add_parser(
        "sign",
        help="sign an image in its registry (sigstore signature that podman and skopeo verify)",
        description="Sign the manifest digest of REF with an ECDSA P-256 private key, as a sigstore "
        "simple-signing signature in the sha256-<hex>.sig tag (containers/image's "
        "use-sigstore-attachments). See docs/trust.md.",
    )
    p.set_defaults(handler=run_sign)
    p.add_argument("reference", metavar="REF", help="the image (or index) to sign: repo:tag or repo@digest")
    p.add_argument(
        "--key", required=True, metavar="KEY", help=f"the private key ({KEY_PASSWORD_ENV} or a prompt)"
    )
    json_arg(p)
    registry_args(p, "")


def add_keygen(commands: Commands) -> None:
    p = commands.add_parser(
        "keygen",
        help="create an ECDSA P-256 key pair for signing",
        description=f"Write a private key (PKCS#8 PEM, mode 0600; encrypted when {KEY_PASSWORD_ENV} is set "
        "or --encrypt prompts for a password) and its public key (KEY.pub unless --public), which "
        "policy.json's sigstoreSigned keyPath names. Existing files are never replaced.",
    )
    p.set_defaults(handler=run_keygen)
    p.add_argument("key", metavar="KEY", help="where to write the private key")
    p.add_argument("--public", metavar="PATH", help="where to write the public key (default KEY.pub)")
    p.add_argument("--encrypt", action="store_true", help=f"ask for a password (or set {KEY_PASSWORD_ENV})")


def _key_password(path: str) -> str | None:
    """The password of an encrypted key: the environment, else a prompt on a terminal."""
    from imagesmith.artifacts.signing import key_is_encrypted

    if not key_is_encrypted(path):
        return None
    password = os.environ.get(KEY_PASSWORD_ENV)
    if password:
        return password
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Password for {path}: ")
    return None  # load_signing_key then says where the password goes


def signing_key(path: str) -> SigningKey:
    """The private key at ``path`` (``sign --key``, ``build --sign``), decrypted."""
    from imagesmith.artifacts.signing import load_signing_key

    return load_signing_key(path, _key_password(path))


def run_sign(ctx: Context) -> int:
    from imagesmith.artifacts.signing import sign_reference

    key = signing_key(ctx.args.key)
    signed = sign_reference(ctx.args.reference, key, pool=ctx.pool, cache=ctx.cache, progress=ctx.progress)

    def human() -> None:
        for item in signed:
            note = "" if item.added else " (already signed with this key: unchanged)"
            say(f"Signed {item.identity} ({item.digest}) in {item.tag}{note}", ctx.stdout)

    return ctx.render(lambda: signed[0].to_json() | {"instances": [s.to_json() for s in signed[1:]]}, human)


def run_keygen(ctx: Context) -> int:
    from imagesmith.artifacts.signing import generate_key

    args = ctx.args
    public = args.public or f"{args.key}.pub"
    password = os.environ.get(KEY_PASSWORD_ENV) or None
    if args.encrypt and password is None:
        if sys.stdin is None or not sys.stdin.isatty():
            raise UsageError(f"--encrypt asks for a password on a terminal: set {KEY_PASSWORD_ENV} instead")
        password = getpass.getpass("Password for the new key: ")
        if password != getpass.getpass("Repeat it: "):
            raise UsageError("the passwords differ: nothing was written")
        if not password:
            raise UsageError("an empty password encrypts nothing: leave out --encrypt for an unencrypted key")
    generate_key(args.key, public, password)
    state = "encrypted" if password else "not encrypted"
    print(f"Wrote private key {args.key} ({state}) and public key {public}", file=ctx.stdout)
    return 0
