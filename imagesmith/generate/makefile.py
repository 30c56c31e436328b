"""Generated Makefiles: one make target per package image, so ``make -j`` or a CI matrix builds a stack.

:func:`render_makefile` turns a dependency-ordered list of packages (from
:func:`~imagesmith.inputs.load.load_packages`) into a GNU Makefile rendered from
``templates/Makefile.j2``. Each package gets a phony target named ``name-version`` that runs
``imagesmith build`` for its package file and records the printed JSON in a stamp file under
``.imagesmith/stamps/``; a stamp depends on the package file, its content and the stamps of the
package's dependencies, so make builds dependencies first, skips what is up to date and
rebuilds a changed image and every image above it. The format is documented in
``docs/makefile.md``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from imagesmith._version import __version__
from imagesmith.errors import TemplateError, UsageError
from imagesmith.inputs.packages import Package
from imagesmith.templating import environment

__all__ = ["STAMP_DIR", "build_closure", "check_stack", "render_makefile", "target_names"]

STAMP_DIR = ".imagesmith/stamps"
# Characters a path may use: each is literal in a make prerequisite list, in $(call ...)
# arguments and in a POSIX shell word. Spaces, ':', '#', '$', '=', '%', ',', quotes, glob
# characters and backslashes all change meaning somewhere between make and sh.
_PATH_PUNCTUATION = frozenset("_.+-/@")
_UNSAFE_TARGET_CHAR = re.compile(r"[^A-Za-z0-9_.+-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class _Rule:
    """What the template needs to write one image's rules (every string already make-safe)."""

    label: str
    target: str
    stamp: str
    source: str
    arguments: str  # the package files its build is given: its closure, then its own
    prerequisites: tuple[str, ...]


def target_names(packages: Sequence[Package]) -> dict[str, str]:
    """Map each package's :attr:`~imagesmith.inputs.packages.Package.key` to its make target name.

    A target is ``name-version`` (so never one of the Makefile's own goals, which have no
    ``-``) with every character outside ``[A-Za-z0-9_.+-]`` replaced by
    ``_`` and a leading ``.`` or ``-`` (which make or its command line would misread) replaced
    by ``_``. Two packages that would share a name, even differing only in case (stamp files
    on a case-insensitive file system), get ``-2``, ``-3``... in list order, so the names are
    unique and deterministic.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for package in packages:
        if package.key in names:
            continue
        base = _UNSAFE_TARGET_CHAR.sub("_", package.label)
        if base[0] in ".-":
            base = "_" + base[1:]
        name, counter = base, 1
        while name.lower() in taken:
            counter += 1
            name = f"{base}-{counter}"
        taken.add(name.lower())
        names[package.key] = name
    return names


def _path_text(path: Path, directory: Path | None, what: str) -> str:
    """``path`` as written in the Makefile: relative to ``directory``, else absolute."""
    absolute = path if path.is_absolute() else path.resolve()
    if directory is None:
        text = absolute.as_posix()
    else:
        text = Path(os.path.relpath(absolute, directory)).as_posix()
        if text.startswith("-"):
            # A relative path starting with '-' would be read as an option by imagesmith.
            text = "./" + text
    bad = sorted({c for c in text if not (c.isalnum() or c in _PATH_PUNCTUATION)})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise UsageError(
            f"{what} {text!r} contains {shown}, which a Makefile cannot express safely "
            "(spaces, quotes, ':', '#', '$', '=', '%', ',', '~', glob characters...); "
            "move or rename it (or reach it through a symlink) so its path uses only letters, "
            "digits and _ . + - / @"
        )
    return text


def _make_value(value: str, what: str, *, forbid: str = "") -> str:
    """``value`` escaped for the right-hand side of a make assignment (``$`` and ``#``)."""
    if _CONTROL.search(value):
        raise UsageError(f"{what} {value!r} contains a control character (a newline?)")
    if value != value.strip():
        # make drops leading blanks of a value and keeps trailing ones; neither is meant.
        raise UsageError(f"{what} {value!r} has surrounding whitespace")
    if value.endswith("\\") or "\\#" in value:
        raise UsageError(f"{what} {value!r}: a backslash at the end or before '#' escapes make syntax")
    bad = sorted({c for c in forbid if c in value})
    if bad:
        raise UsageError(f"{what} {value!r} must not contain {' '.join(repr(c) for c in bad)}")
    return value.replace("$", "$$").replace("#", "\\#")


def _comment(text: str) -> str:
    """``text`` made safe for one make comment line (no newline, no trailing backslash)."""
    text = _CONTROL.sub("?", text)
    return text + " " if text.endswith("\\") else text


def check_stack(packages: Sequence[Package], what: str = "render_makefile") -> None:
    """Check that ``packages`` is a stack a generated file can build: a non-empty list (not a
    path), each package once, every dependency before its dependents (as
    :func:`~imagesmith.inputs.load.load_packages` returns it); else :class:`UsageError`, naming
    ``what`` took the list."""
    if isinstance(packages, (str, Path)):
        raise UsageError(f"{what} takes a list of packages (from load_packages), not a path")
    if not packages:
        raise UsageError("no packages: give at least one package file")
    seen: set[str] = set()
    for package in packages:
        if package.key in seen:
            raise UsageError(f"package {package.label} ({package.source}) is listed twice")
        missing = [key for key in package.depends if key not in seen]
        if missing:
            raise UsageError(
                f"package {package.label} ({package.source}) depends on {missing[0]}, which does "
                "not come before it in the list; pass the result of load_packages(), which "
                "includes every dependency, dependencies first"
            )
        seen.add(package.key)


def build_closure(package: Package, stack: Mapping[str, Package]) -> list[Package]:
    """The packages a build of ``package``'s image is given, its own last.

    A package file names its dependencies by path, and a package from a build cache finds
    them in the cache, so a build given the package alone finds the rest itself. A Spack install
    prefix, build-cache tarball or ``spec.json`` finds its dependencies by DAG hash among the
    packages given: where the image holds one, the build is given every package it needs,
    transitively, in the order of ``stack`` (a dependency-ordered mapping key -> package);
    ``load_packages`` merges what is reached twice."""
    needed: set[str] = set()
    pending = list(package.depends)
    while pending:
        key = pending.pop()
        if key not in needed:
            needed.add(key)
            pending.extend(stack[key].depends)
    closure = [p for key, p in stack.items() if key in needed] + [package]
    by_hash = any(p.spack is not None and p.spack_cache is None for p in closure)
    return closure if by_hash else [package]


def _rule(
    package: Package,
    target: str,
    stamps: dict[str, str],
    directory: Path | None,
    stack: Mapping[str, Package],
) -> _Rule:
    source = _path_text(package.source, directory, f"package file of {package.label}")
    contents = [_path_text(path, directory, f"content of {package.label}") for path in package.contents]
    arguments = [
        _path_text(p.source, directory, f"package file of {p.label}") for p in build_closure(package, stack)
    ]
    stamp = stamps[package.key]
    # A prefix is both the package file and its content: named once.
    prerequisites = list(
        dict.fromkeys([source, *contents, *(stamps[key] for key in package.depends), "$(STAMPS)/settings"])
    )
    for path, content in zip(package.contents, contents, strict=True):
        if path.is_dir():
            # A directory's own time changes only when entries are added or removed right in
            # it; _changed (in the template) looks for anything newer deeper down.
            prerequisites.append(f"$(call _changed,{content},{stamp})")
    return _Rule(
        label=_comment(package.label),
        target=target,
        stamp=stamp,
        source=source,
        arguments=" ".join(arguments),
        prerequisites=tuple(prerequisites),
    )


def render_makefile(
    packages: Sequence[Package],
    *,
    base_image: str,
    repo: str,
    package_args: Sequence[str] | None = None,
    imagesmith: str = "imagesmith",
    jobs: int = 4,
    flags: Sequence[str] = (),
    index_tag: str = "index.imagesmith",
    directory: Path | None = None,
) -> str:
    """Render a GNU Makefile (GNU make 4.3 or later) that builds one image per package.

    ``packages`` is the dependency-ordered list :func:`~imagesmith.inputs.load.load_packages`
    returns: every dependency must come before its dependents. Each package gets a target
    (see :func:`target_names`) that runs ``$(IMAGESMITH) $(IMAGESMITH_FLAGS) build`` on its
    package file and depends on its dependencies' targets; ``all`` (the default), ``push``,
    ``index``, ``clean`` and ``list`` are added. ``base_image``, ``repo``, ``imagesmith`` (the
    command, a shell fragment), ``jobs`` (make's parallelism), ``flags`` (global imagesmith
    options such as ``--insecure-registry HOST``, shell-quoted here) and ``index_tag`` become
    the defaults of the variables ``BASE_IMAGE``, ``REPO``, ``IMAGESMITH``, ``JOBS``,
    ``IMAGESMITH_FLAGS`` and ``INDEX_TAG``, which the command line or the environment can
    override. Paths are written relative to ``directory`` (where the Makefile will live, so
    make must run there) when it is given, else absolute. ``package_args`` are the package
    files as the user typed them, for the header's record of the command (default: the files
    of the packages nothing else depends on). A path or value a Makefile cannot carry safely,
    an incomplete dependency list or a bad ``jobs`` raises
    :class:`~imagesmith.errors.UsageError`.
    """
    check_stack(packages)
    if not base_image or not repo or not index_tag:
        raise UsageError("the base image, the repository and the index tag must not be empty")
    if index_tag == "index.spack":
        raise UsageError(
            "index.spack is Spack's build-cache index, which `imagesmith index update` writes "
            "itself beside imagesmith's: give imagesmith's index another tag (default index.imagesmith)"
        )
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a positive integer, not {jobs!r}")
    if directory is not None:
        directory = directory.resolve()
    names = target_names(packages)
    stamps = {key: f"$(STAMPS)/{name}.pushed" for key, name in names.items()}
    stack = {p.key: p for p in packages}
    rules = [_rule(p, names[p.key], stamps, directory, stack) for p in packages]
    if package_args is None:
        depended_on = {key for p in packages for key in p.depends}
        package_args = [r.source for p, r in zip(packages, rules, strict=True) if p.key not in depended_on]
    command = shlex.join(
        ["imagesmith", *flags, "makefile", "--base-image", base_image, "--repo", repo, *package_args]
    )
    variables = {
        "version": __version__,
        "command": _comment(command),
        "relative": directory is not None,
        "imagesmith": _make_value(imagesmith, "imagesmith command"),
        "imagesmith_flags": _make_value(shlex.join(flags), "imagesmith flags"),
        # Recipes single-quote these for sh, so a quote inside would end the word early.
        "base_image": _make_value(base_image, "base image", forbid=" '"),
        "repo": _make_value(repo, "repository", forbid=" '"),
        "index_tag": _make_value(index_tag, "index tag", forbid=" '"),
        "jobs": jobs,
        "stamp_dir": STAMP_DIR,
        "rules": rules,
        "example": rules[-1].target,
    }
    try:
        return environment().get_template("Makefile.j2").render(variables)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"Makefile template: {exc}") from None
