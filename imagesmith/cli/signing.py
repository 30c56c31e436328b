"""``imagesmith sign`` and ``imagesmith keygen``, and the private key ``build --sign`` reads."""

from __future__ import annotations

import getpass
import os
import sys
from typing import TYPE_CHECKING

from imagesmith.cli.args import KEY_PASSWORD_ENV
from imagesmith.cli.context import Context
from imagesmith.cli.output import say
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.artifacts.signing import SigningKey


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
