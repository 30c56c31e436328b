"""The jinja2 templates of imagesmith: image tags, the profile script, generated files.

One environment serves every template in the top-level ``templates/`` folder, which a wheel
ships as ``imagesmith/templates/``. It is sandboxed because tag templates come from the command
line or from shared build files, strict about undefined variables so a typo fails loudly, and
renders line-oriented text (shell scripts, Makefiles): no autoescaping, block tags take their
own line (``trim_blocks``, ``lstrip_blocks``) and a final newline is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imagesmith.errors import TemplateError
from imagesmith.inputs.envmods import is_valid_name, parse_env_list
from imagesmith.oci.references import sanitize_tag, validate_tag

if TYPE_CHECKING:
    import jinja2

# jinja2 is imported by the functions that render: a build given its tags never loads it.

__all__ = [
    "DEFAULT_TAG_TEMPLATE",
    "PROFILE_SCRIPT_PATH",
    "environment",
    "render_profile_script",
    "render_tag",
    "shell_quote",
    "templates_dir",
]

# Spack finds a package in an OCI build cache under ``name-version-hash.spack``, and reads the
# config of every tag ending in ``.spack`` when it rebuilds its index: only an image Spack can
# install from may carry that suffix (``spack`` is true for exactly those).
# A one-platform image gets its platform as a suffix (``.linux-arm64``): a package whose content
# is the same on every platform has the same hash on each, and per-platform builds on several
# machines must not push to one tag. An index (``platform`` empty) names every platform at once.
DEFAULT_TAG_TEMPLATE = (
    "{{ name }}-{{ version }}-{{ hash }}{% if spack %}.spack{% elif platform %}.{{ platform }}{% endif %}"
)
PROFILE_SCRIPT_PATH = "/etc/profile.d/imagesmith.sh"

_PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The folder holding the templates: inside the package when installed from a wheel,
    else the top-level ``templates/`` of a source checkout."""
    for candidate in (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise TemplateError(
        f"imagesmith's templates are missing: neither {_PACKAGE_DIR / 'templates'} nor "
        f"{_PACKAGE_DIR.parent / 'templates'} exists; reinstall imagesmith"
    )


def shell_quote(value: object) -> str:
    """Quote ``value`` for POSIX sh: single quotes, each ``'`` written as ``'\\''``."""
    return "'" + str(value).replace("'", "'\\''") + "'"


@functools.cache
def environment() -> jinja2.Environment:
    """The shared jinja2 environment over the templates folder (created once, then cached).

    It is a sandboxed environment with ``StrictUndefined``, autoescaping off,
    ``keep_trailing_newline``, ``trim_blocks`` and ``lstrip_blocks``, and a ``shquote`` filter
    that single-quotes a value for POSIX sh.
    """
    import jinja2
    import jinja2.sandbox

    env = jinja2.sandbox.SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shquote"] = shell_quote
    return env


def _describe(template: str | None) -> str:
    if template is None:
        return "the default tag template (tag.j2)"
    shown = template if len(template) <= 200 else template[:200] + "..."
    return f"tag template {shown!r}"


def render_tag(
    template: str | None,
    *,
    name: str,
    version: str,
    hash: str,
    spack: bool = False,
    platform: str = "",
    **extra: str,
) -> str:
    """Render an image tag from ``template`` (None: the default, ``templates/tag.j2``).

    The template sees ``name``, ``version``, ``hash``, ``spack`` (whether the image is a Spack
    build-cache entry, which the default template marks with Spack's ``.spack`` suffix),
    ``platform`` (``linux-arm64`` for a one-platform image, which the default template appends
    as ``.linux-arm64``; empty for an index) and every keyword in ``extra``. The result
    is stripped of surrounding whitespace and made a valid tag the way Spack does (characters
    outside ``[A-Za-z0-9_.-]`` become ``_``; over 128 characters keep the first 64 and the last
    64). A syntax error, an undefined variable, a failing expression or an empty result raises
    :class:`TemplateError` naming the template and the problem.
    """
    variables: dict[str, object] = {
        "name": name,
        "version": version,
        "hash": hash,
        "spack": spack,
        "platform": platform,
        **extra,
    }
    import jinja2

    env = environment()
    what = _describe(template)
    try:
        compiled = env.get_template("tag.j2") if template is None else env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{what}: syntax error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{what}: {exc}") from None
    try:
        rendered = compiled.render(variables)
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"{what}: {exc.message}; available variables: {', '.join(sorted(variables))}"
        ) from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
        # A tag template is user input: any failure while rendering is a template problem.
        raise TemplateError(f"{what}: {type(exc).__name__}: {exc}") from None
    rendered = rendered.strip()
    if not rendered:
        raise TemplateError(f"{what} rendered an empty tag")
    return validate_tag(sanitize_tag(rendered))


def render_profile_script(env: Sequence[str], *, comment: str = "") -> str:
    """Render the POSIX sh script installed as ``/etc/profile.d/imagesmith.sh``.

    The script exports every ``KEY=VALUE`` of ``env`` in order, each value single-quoted so any
    character (spaces, quotes, ``$``, backslashes, newlines) reaches the shell unchanged. Its
    header says imagesmith generated it, followed by ``comment`` (one ``#`` line per line).
    Variables whose names sh cannot export (not ``[A-Za-z_][A-Za-z0-9_]*``) are left out; an
    entry without ``=`` raises :class:`~imagesmith.errors.UsageError`.
    """
    parsed = parse_env_list(env, where="profile script environment")
    variables = [(name, value) for name, value in parsed.items() if is_valid_name(name)]
    comment_lines = comment.splitlines()
    import jinja2

    try:
        return (
            environment()
            .get_template("profile.sh.j2")
            .render(variables=variables, comment_lines=comment_lines)
        )
    except jinja2.TemplateError as exc:
        raise TemplateError(f"profile script template: {exc}") from None
