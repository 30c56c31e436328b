"""Generated CI pipelines: a GitLab CI file or a GitHub Actions workflow that builds a stack.

:func:`render_pipeline` turns a dependency-ordered list of packages (from
:func:`~imagesmith.inputs.load.load_packages`) into one file for the CI engine a site already runs,
rendered from ``templates/gitlab-ci.yml.j2`` or ``templates/github-workflow.yml.j2``: one job
per image (per platform when several), each needing the jobs of its dependencies' images, so
their layers are pushed first and only checked again; for several platforms, one job per image
that merges its platforms into one index (``imagesmith merge --repo``, which names the index as
``imagesmith build --platform A,B`` would); last, one job that updates the repository index.
:func:`pin_base` resolves the base image once, when the file is generated, and every job builds
on that digest, so a fan-out of hundreds of jobs never looks the tag up again and never sees it
move. Rendering is pure: the same packages, base digest and options give the same bytes.

The engines' limits shape the layout (:class:`EngineLimits`). GitLab takes at most 50 ``needs``
per job: a job that would need more keeps its stage, one per dependency level, and waits for the
stages before it instead. GitHub runs workflow files up to 500 KB and a matrix of at most 256
jobs: when one job per image makes the file too large, the images are grouped by dependency
level into matrix jobs, each level needing the one below. :attr:`GeneratedPipeline.notes` says
in one line what was done when a limit applied; a stack too large even then is a
:class:`~imagesmith.errors.UsageError` naming the limit and by how much. ``docs/pipelines.md``
documents both files.

Size: one job, a stack laid out for GitLab CI and GitHub Actions within each engine's limits;
both renderers share that layout.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2

from imagesmith._version import __version__
from imagesmith.errors import TemplateError, UsageError
from imagesmith.generate.makefile import build_closure, check_stack, target_names
from imagesmith.inputs.packages import Package
from imagesmith.oci.image import raise_platform_mismatch
from imagesmith.oci.model import MAX_CONFIG_SIZE, ImageConfig, Index, Platform, select_platform
from imagesmith.oci.references import Reference, parse_repository
from imagesmith.pipeline.run import _distinct_platforms as distinct_platforms
from imagesmith.registry.client import RegistryPool
from imagesmith.templating import environment
from imagesmith.transports.locations import as_location, open_source
from imagesmith.transports.registry import RegistryLocation

__all__ = [
    "DEFAULT_INSTALL",
    "DIGEST_DIR",
    "ENGINES",
    "BasePin",
    "EngineLimits",
    "GeneratedPipeline",
    "check_runners",
    "pin_base",
    "render_pipeline",
]

Engine = Literal["gitlab", "github"]
ENGINES: tuple[Engine, ...] = ("gitlab", "github")
DEFAULT_INSTALL = f"pip install imagesmith=={__version__}"
# Where per-platform build jobs leave the digest they pushed, for the merge job (an artifact).
DIGEST_DIR = ".imagesmith/digests"
GITHUB_RUNNER = "ubuntu-latest"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JOB_ID = re.compile(r"[^A-Za-z0-9_-]")
_SLUG = re.compile(r"[^a-z0-9_.-]")
# YAML words that a plain scalar would turn into booleans or null (YAML 1.1, GitLab's parser).
_YAML_WORDS = frozenset(["y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"])
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 _./@+=$\",()-]*")


@dataclass(frozen=True)
class EngineLimits:
    """The engine limits a generated pipeline keeps to.

    The defaults are GitLab.com's and GitHub's. A self-managed GitLab can change
    ``gitlab_max_needs`` (the ``ci_max_needs`` setting) and ``gitlab_max_config`` (the
    ``max_yaml_size_bytes`` setting, 2 MB by default; counted by GitLab on the parsed file, so
    the file's own size is a lower bound); GitHub's ``github_max_matrix`` (jobs one matrix may
    generate) and ``github_max_workflow`` (bytes of a workflow file it starts runs from) are
    fixed.
    """

    gitlab_max_needs: int = 50
    gitlab_max_config: int = 2 * 1024 * 1024
    github_max_matrix: int = 256
    github_max_workflow: int = 500_000


@dataclass(frozen=True)
class BasePin:
    """The base image resolved once for a pipeline.

    ``source`` is the base as it was given, ``reference`` the same name pinned to the digest of
    the manifest or index read (its tag kept for readers; registries serve it by digest), and
    ``platforms`` the platforms the pipeline builds, each one offered by that base.
    """

    source: str
    reference: Reference
    platforms: tuple[Platform, ...]


@dataclass(frozen=True)
class GeneratedPipeline:
    """A rendered pipeline: the file's ``text`` for ``engine``, how many ``jobs`` the engine
    runs (matrix entries counted), and one line per engine limit that changed the layout."""

    engine: Engine
    text: str
    jobs: int
    notes: tuple[str, ...] = ()


def pin_base(base: str | Reference, platforms: Sequence[Platform] = (), *, pool: RegistryPool) -> BasePin:
    """Resolve ``base`` once and pin it by digest for every job of a pipeline.

    ``base`` must be a registry reference (jobs run on other machines). Its manifest or index
    is read once; for an index, every platform of ``platforms`` (default: this machine's, as
    ``build`` does) must be offered, or :class:`~imagesmith.errors.PlatformError` lists what
    it offers; a single image serves its own platform only (read from its config), so several
    platforms need an index. Platforms that are the same (``linux/arm64``, ``linux/arm64/v8``)
    are refused. Nothing else is fetched: each job reads the pinned manifest itself.
    """
    location = as_location(base)
    if not isinstance(location, RegistryLocation):
        raise UsageError(
            f"--base-image {base}: a pipeline's jobs run on other machines, so the base image must "
            "be in a registry (push it there first: imagesmith copy)"
        )
    wanted = distinct_platforms(platforms) if platforms else ()
    with open_source(location, pool) as source:
        raw = source.top()
        document = raw.parse(f"manifest of {source.name}")
        if isinstance(document, Index):
            chosen = wanted or (Platform.host(),)
            for platform in chosen:
                select_platform(document, platform)  # fails listing what the index offers
        else:
            data = source.read_blob(document.config, MAX_CONFIG_SIZE)
            config = ImageConfig.parse(data, f"config of {source.name}")
            actual = config.platform if config.os and config.architecture else Platform.host()
            if len(wanted) > 1:
                raise UsageError(
                    f"base image {source.name} is a single image for {actual}: a pipeline for "
                    f"{', '.join(map(str, wanted))} needs a base index offering every platform"
                )
            if wanted and not actual.matches(wanted[0]):
                raise_platform_mismatch(source.name, actual, wanted[0])
            chosen = wanted or (actual,)
    return BasePin(str(base), location.reference.with_digest(raw.digest), chosen)


# --- values written into the file ----------------------------------------------------------------


def yaml_scalar(value: str) -> str:
    """``value`` as a YAML scalar that both YAML 1.1 (GitLab) and 1.2 (GitHub) read back as
    this exact string: plain when that is unambiguous, else single-quoted."""
    if _PLAIN.fullmatch(value) and not value.endswith(" ") and value.lower() not in _YAML_WORDS:
        return value
    return "'" + value.replace("'", "''") + "'"


def _checked(value: str, what: str) -> str:
    """``value`` refused if a line of a generated file cannot carry it."""
    if _CONTROL.search(value):
        raise UsageError(f"{what} {value!r} contains a control character (a newline?)")
    if "${{" in value:
        # GitHub would evaluate it as an expression inside any value of a workflow.
        raise UsageError(f"{what} {value!r} contains '${{{{', which GitHub reads as an expression")
    if not value.strip():
        raise UsageError(f"{what} must not be empty")
    return value


def _job_path(path: Path, directory: Path | None, what: str) -> str:
    """``path`` as a job names it: relative to ``directory`` (where jobs start, the checkout)
    when inside it, else absolute (a shared file system every runner mounts alike)."""
    absolute = path if path.is_absolute() else path.resolve()
    text = absolute.as_posix()
    if directory is not None and absolute.is_relative_to(directory):
        text = absolute.relative_to(directory).as_posix()
        if text.startswith("-"):
            text = "./" + text  # not an option to imagesmith
    return _checked(text, what)


def _slug(platform: Platform) -> str:
    """``linux/arm64/v8`` -> ``linux-arm64-v8``: a platform inside a job name, tag or file name."""
    return _SLUG.sub("_", str(platform).lower().replace("/", "-"))


class _JobIds:
    """GitHub job ids: ``[A-Za-z_][A-Za-z0-9_-]*``, unique (ignoring case), deterministic."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self._taken = {r.lower() for r in reserved}

    def __call__(self, name: str) -> str:
        base = _JOB_ID.sub("_", name)
        if not re.match(r"[A-Za-z_]", base):
            base = "_" + base
        ident, counter = base, 1
        while ident.lower() in self._taken:
            counter += 1
            ident = f"{base}-{counter}"
        self._taken.add(ident.lower())
        return ident


# --- the stack, engine-neutral -----------------------------------------------------------------


@dataclass(frozen=True)
class _Image:
    """One package's image: its target name (as ``imagesmith makefile`` names it), the package
    file as jobs name it, its dependency level (0: no dependencies) and its direct
    dependencies' target names."""

    target: str
    packages: tuple[str, ...]  # the package files its build is given: its closure, then its own
    level: int
    depends: tuple[str, ...]

    @property
    def package(self) -> str:
        """Its own package file."""
        return self.packages[-1]

    @property
    def arguments(self) -> str:
        """Its package files as one shell word list."""
        return shlex.join(self.packages)


@dataclass(frozen=True)
class _Target:
    """One platform of the pipeline: as given, as a slug, and the runner labels it runs on."""

    platform: str
    slug: str
    runner: tuple[str, ...]


def _images(packages: Sequence[Package], directory: Path | None) -> list[_Image]:
    check_stack(packages, "render_pipeline")
    names = target_names(packages)
    levels: dict[str, int] = {}
    images = []
    stack = {p.key: p for p in packages}
    for package in packages:
        depends = tuple(dict.fromkeys(package.depends))
        levels[package.key] = 1 + max((levels[key] for key in depends), default=-1)
        paths = tuple(
            _job_path(p.source, directory, f"package file of {p.label}")
            for p in build_closure(package, stack)
        )
        images.append(
            _Image(names[package.key], paths, levels[package.key], tuple(names[k] for k in depends))
        )
    return images


def _several(part: Sequence[_Image]) -> bool:
    """Whether a build of ``part`` is given more than its own package file (Spack packages)."""
    return any(len(i.packages) > 1 for i in part)


def _matrix_packages(image: _Image, part: Sequence[_Image]) -> str:
    """An image's ``package`` in a matrix: its package file, or, where a build of the matrix
    is given several, its files shell-quoted (``set --`` splits them back)."""
    return image.arguments if _several(part) else image.package


def _matrix_build(plan: _Plan, part: Sequence[_Image], slug: str) -> str:
    """The build line of a matrix job, reading the package file(s) from ``$PACKAGE``."""
    if _several(part):
        return 'eval "set -- $PACKAGE" && ' + plan.build_command('"$@"', "$IMAGE", slug)
    return plan.build_command('"$PACKAGE"', "$IMAGE", slug)


def check_runners(platforms: Sequence[Platform], runners: Mapping[str, Sequence[str]]) -> None:
    """Check a runner mapping (platform -> runner tags or labels) against the platforms a
    pipeline builds, before anything is looked up: every key must be one of them, and every
    platform needs one when there are several or when any is given
    (:class:`~imagesmith.errors.UsageError` otherwise)."""
    _targets(platforms, runners)


def _targets(platforms: Sequence[Platform], runners: Mapping[str, Sequence[str]]) -> list[_Target]:
    """Each platform with its runner labels: needed for every platform when there are several
    (or when any is given), so no job lands on a runner by accident."""
    chosen: dict[int, tuple[str, ...]] = {}
    for key, labels in runners.items():
        wanted = Platform.parse(key).normalized()
        found = [i for i, p in enumerate(platforms) if p.normalized() == wanted]
        if not found:
            listed = ", ".join(map(str, platforms))
            raise UsageError(f"--runner {key}: {key} is not a platform of this pipeline ({listed})")
        if found[0] in chosen:
            raise UsageError(f"--runner {key}: platform {platforms[found[0]]} has a runner already")
        cleaned = tuple(_checked(label.strip(), f"runner label of {key}") for label in labels)
        if not cleaned:
            raise UsageError(f"--runner {key}: name at least one runner tag or label")
        chosen[found[0]] = cleaned
    if chosen or len(platforms) > 1:
        for i, platform in enumerate(platforms):
            if i not in chosen:
                raise UsageError(
                    f"platform {platform} has no runner: add --runner {platform}=TAG[,TAG] (the "
                    "runner tags or runs-on labels of the machines that build its images)"
                )
    return [_Target(str(p), _slug(p), chosen.get(i, ())) for i, p in enumerate(platforms)]


@dataclass(frozen=True)
class _Plan:
    """Everything both engines' files share."""

    images: list[_Image]
    targets: list[_Target]
    base: str
    repo: str
    registry: str
    install: str
    image: str | None
    insecure: str
    command: str

    @property
    def multi(self) -> bool:
        return len(self.targets) > 1

    def digest_file(self, target: str, slug: str) -> str:
        return f"{DIGEST_DIR}/{target}.{slug}"

    def build_command(self, package: str, target: str, slug: str) -> str:
        """The build line of one image for one platform; with several platforms the image gets
        a per-platform tag and leaves its digest for the merge job."""
        line = (
            'imagesmith build $IMAGESMITH_BUILD_FLAGS --base-image "$IMAGESMITH_BASE_IMAGE" '
            '--platform "$IMAGESMITH_PLATFORM" --repo "$IMAGESMITH_REPO"'
        )
        if self.multi:
            line += (
                f' --tag-template "{{{{ name }}}}-{{{{ version }}}}-{{{{ hash }}}}.{slug}"'
                f" --digestfile {self.digest_file(target, slug)}"
            )
        return f"{line} {package}"

    def merge_command(self, target: str) -> str:
        sources = " ".join(
            f'"$IMAGESMITH_REPO@$(cat {self.digest_file(target, t.slug)})"' for t in self.targets
        )
        return f'imagesmith merge --repo "$IMAGESMITH_REPO" {sources}'


INDEX_COMMAND = 'imagesmith index update "$IMAGESMITH_REPO"'


def render_pipeline(
    packages: Sequence[Package],
    *,
    engine: str,
    base: BasePin,
    repo: str,
    runners: Mapping[str, Sequence[str]] | None = None,
    install: str | None = None,
    image: str | None = None,
    insecure: Sequence[str] = (),
    directory: Path | None = None,
    package_args: Sequence[str] | None = None,
    limits: EngineLimits | None = None,
) -> GeneratedPipeline:
    """Render a GitLab CI (``engine="gitlab"``) or GitHub Actions (``"github"``) pipeline that
    builds one image per package on ``base`` (from :func:`pin_base`) and pushes it to ``repo``.

    ``packages`` is the dependency-ordered list :func:`~imagesmith.inputs.load.load_packages`
    returns. Each image gets a job per platform of ``base.platforms``, needing the jobs of its
    direct dependencies' images on that platform; with several platforms each image then gets a
    merge job and every per-platform image a tag of its own (``NAME-VERSION-HASH.PLATFORM``).
    One ``index`` job updates the repository index last. ``runners`` maps a platform to the
    runner tags (GitLab) or ``runs-on`` labels (GitHub) of its jobs; every platform needs one
    when there are several. ``install`` is the shell command that puts ``imagesmith`` on the
    jobs' PATH (default :data:`DEFAULT_INSTALL`; ``"true"`` when the runners have it),
    ``image`` the container image jobs run in (for runners that run jobs in containers), and
    ``insecure`` the registries the jobs speak plain http to. Package files inside
    ``directory`` (where jobs start: the repository's root) are named relative to it, others
    by their absolute path. ``package_args`` are the package files as typed, for the header's
    record of the command. Credentials are never written: jobs log in with the engine's own
    (GitLab's ``CI_REGISTRY_*`` for its registry, GitHub's ``GITHUB_TOKEN`` for ghcr.io) or
    with ``IMAGESMITH_REGISTRY_USER``/``IMAGESMITH_REGISTRY_PASSWORD`` from the site's CI
    settings. Bad input (an unknown engine, a platform without a runner, a value a file cannot
    carry) and a stack too large for the engine even after grouping raise
    :class:`~imagesmith.errors.UsageError`.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown CI engine {engine!r}: use gitlab or github")
    limits = limits or EngineLimits()
    if directory is not None:
        directory = directory.resolve()
    images = _images(packages, directory)
    repository = parse_repository(repo)
    install = _checked(install if install is not None else DEFAULT_INSTALL, "--install")
    if image is not None:
        _checked(image, "--image")
        Reference.parse(image)  # a typo fails here, not in every job
    hosts = [_checked(host, "--insecure-registry") for host in insecure]
    if package_args is None:
        depended_on = {name for i in images for name in i.depends}
        package_args = [i.package for i in images if i.target not in depended_on]
    command = [
        "imagesmith",
        *(f for h in hosts for f in ("--insecure-registry", h)),
        "pipeline",
        "--engine",
        engine,
        "--base-image",
        base.source,
        "--repo",
        repo,
    ]
    if len(base.platforms) > 1 or runners:
        command += ["--platform", ",".join(map(str, base.platforms))]
    for key, labels in (runners or {}).items():
        command += ["--runner", f"{key}={','.join(labels)}"]
    if install != DEFAULT_INSTALL:
        command += ["--install", install]
    if image is not None:
        command += ["--image", image]
    plan = _Plan(
        images=images,
        targets=_targets(base.platforms, runners or {}),
        base=_checked(str(base.reference), "base image"),
        repo=repository.name,
        registry=repository.registry,
        install=install,
        image=image,
        insecure=",".join(hosts),
        command=_CONTROL.sub("?", shlex.join([*command, *package_args])),
    )
    if engine == "gitlab":
        return _gitlab(plan, limits)
    return _github(plan, limits)


def _expression(text: str) -> str:
    """A GitHub Actions expression, ``${{ text }}``."""
    return "${{ " + text + " }}"


def _render(template: str, variables: Mapping[str, Any]) -> str:
    functions: dict[str, Callable[[str], str]] = {"q": yaml_scalar, "expr": _expression}
    try:
        return environment().get_template(template).render({**variables, **functions})
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{template}: {exc}") from None


def _summary(plan: _Plan, builds: int, merges: int) -> str:
    platforms = ", ".join(t.platform for t in plan.targets)
    text = f"{len(plan.images)} images on {platforms}: {builds} build jobs"
    if merges:
        text += f", {merges} merge jobs"
    return text + ", 1 index job"


def _kilobytes(size: int) -> str:
    return f"{size / 1000:.0f} KB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"


# --- GitLab ----------------------------------------------------------------------------------------


def _gitlab(plan: _Plan, limits: EngineLimits) -> GeneratedPipeline:
    templates = {t.slug: f".imagesmith-{t.slug}" for t in plan.targets}
    first = templates[plan.targets[0].slug]

    def job_name(target: str, slug: str) -> str:
        return f"{target}:{slug}" if plan.multi else target

    jobs: list[dict[str, Any]] = []
    fallen: list[int] = []
    for image in plan.images:
        for t in plan.targets:
            needs: list[str] | None = [job_name(dep, t.slug) for dep in image.depends]
            if needs is not None and len(needs) > limits.gitlab_max_needs:
                fallen.append(len(needs))
                needs = None  # the stage order (one stage per level) keeps it after them
            jobs.append(
                {
                    "name": job_name(image.target, t.slug),
                    "extends": templates[t.slug],
                    "stage": f"level-{image.level}",
                    "needs": needs,
                    "script": [plan.build_command(image.arguments, image.target, t.slug)],
                    "artifact": plan.digest_file(image.target, t.slug) if plan.multi else None,
                    # Build jobs use no files of other jobs: never download their digests.
                    "dependencies": plan.multi,
                }
            )
    builds = len(jobs)
    if plan.multi:
        for image in plan.images:
            merge_needs: list[str] | None = [job_name(image.target, t.slug) for t in plan.targets]
            if merge_needs is not None and len(merge_needs) > limits.gitlab_max_needs:
                fallen.append(len(merge_needs))
                merge_needs = None
            jobs.append(
                {
                    "name": image.target,
                    "extends": first,
                    "stage": "merge",
                    "needs": merge_needs,
                    "script": [plan.merge_command(image.target)],
                    "artifact": None,
                    "dependencies": False,
                }
            )
    # The index job needs every image: its stage comes last, after all of them.
    jobs.append(
        {
            "name": "index",
            "extends": first,
            "stage": "index",
            "needs": None,
            "script": [INDEX_COMMAND],
            "artifact": None,
            "dependencies": False,
        }
    )
    notes: list[str] = []
    if fallen:
        notes.append(
            f"GitLab allows {limits.gitlab_max_needs} needs per job: {len(fallen)} jobs that would "
            f"need more (up to {max(fallen)}) wait for the stages of the dependency levels below "
            "them instead"
        )
    levels = 1 + max(i.level for i in plan.images)
    stages = [f"level-{d}" for d in range(levels)] + (["merge"] if plan.multi else []) + ["index"]
    text = _render(
        "gitlab-ci.yml.j2",
        {
            "version": __version__,
            "command": plan.command,
            "summary": _summary(plan, builds, len(jobs) - builds - 1),
            "notes": notes,
            "plan": plan,
            "templates": [{"name": templates[t.slug], "target": t} for t in plan.targets],
            "stages": stages,
            "jobs": jobs,
        },
    )
    size = len(text.encode("utf-8"))
    if size > limits.gitlab_max_config:
        over = size - limits.gitlab_max_config
        raise UsageError(
            f"the stack is too large for one GitLab pipeline: its file is {_kilobytes(size)}, "
            f"{_kilobytes(over)} over the {_kilobytes(limits.gitlab_max_config)} GitLab reads by "
            "default (max_yaml_size_bytes); split the stack into several pipelines (one per "
            "top-level package) or raise the instance's limit"
        )
    return GeneratedPipeline("gitlab", text, len(jobs), tuple(notes))


# --- GitHub ----------------------------------------------------------------------------------------


def _github(plan: _Plan, limits: EngineLimits) -> GeneratedPipeline:
    text, jobs = _github_jobs(plan)
    size = len(text.encode("utf-8"))
    if size <= limits.github_max_workflow:
        return GeneratedPipeline("github", text, jobs)
    text, jobs, note = _github_grouped(plan, limits, size)
    grouped = len(text.encode("utf-8"))
    if grouped > limits.github_max_workflow:
        over = grouped - limits.github_max_workflow
        raise UsageError(
            "the stack is too large for one GitHub workflow: even grouped by dependency level into "
            f"matrix jobs its file is {_kilobytes(grouped)}, {_kilobytes(over)} over the "
            f"{_kilobytes(limits.github_max_workflow)} GitHub runs; split the stack into several "
            "workflows (one per top-level package)"
        )
    return GeneratedPipeline("github", text, jobs, (note,))


def _github_variables(plan: _Plan) -> dict[str, Any]:
    depended_on = {name for i in plan.images for name in i.depends}
    tops = [i.target for i in plan.images if i.target not in depended_on]
    more = f" and {len(tops) - 1} more" if len(tops) > 1 else ""
    return {
        # Shown in the Actions tab: several generated workflows stay apart by their top image.
        "name": f"imagesmith {tops[-1]}{more}",
        "version": __version__,
        "command": plan.command,
        "plan": plan,
        "ghcr": plan.registry == "ghcr.io",
        "runners": {t.slug: list(t.runner) or [GITHUB_RUNNER] for t in plan.targets},
        "digest_dir": DIGEST_DIR,
        "index_command": INDEX_COMMAND,
    }


def _artifact(image: str, slug: str) -> str:
    """The artifact carrying one per-platform build's digest file to the merge job."""
    return f"imagesmith-{image}.{slug}"


def _github_jobs(plan: _Plan) -> tuple[str, int]:
    """One job per image and platform, each needing exactly its dependencies' jobs."""
    ids = _JobIds(reserved=["index"])
    build_ids: dict[tuple[str, str], str] = {}
    builds: list[dict[str, Any]] = []
    for image in plan.images:
        for t in plan.targets:
            ident = ids(f"{image.target}-{t.slug}" if plan.multi else image.target)
            build_ids[image.target, t.slug] = ident
            builds.append(
                {
                    "id": ident,
                    "name": f"{image.target} ({t.platform})" if plan.multi else image.target,
                    "target": t,
                    "needs": [build_ids[dep, t.slug] for dep in image.depends],
                    "run": plan.build_command(image.arguments, image.target, t.slug),
                    "artifact": _artifact(image.target, t.slug),
                    "digest_file": plan.digest_file(image.target, t.slug),
                }
            )
    merges: list[dict[str, Any]] = []
    if plan.multi:
        for image in plan.images:
            merges.append(
                {
                    "id": ids(image.target),
                    "name": image.target,
                    "needs": [build_ids[image.target, t.slug] for t in plan.targets],
                    "artifacts": [_artifact(image.target, t.slug) for t in plan.targets],
                    "run": plan.merge_command(image.target),
                }
            )
    last = [m["id"] for m in merges] if merges else [b["id"] for b in builds]
    text = _render(
        "github-workflow.yml.j2",
        {
            **_github_variables(plan),
            "summary": _summary(plan, len(builds), len(merges)),
            "notes": [],
            "grouped": False,
            "builds": builds,
            "merges": merges,
            "index_needs": last,
        },
    )
    return text, len(builds) + len(merges) + 1


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _github_grouped(plan: _Plan, limits: EngineLimits, explicit: int) -> tuple[str, int, str]:
    """Matrix jobs by dependency level and platform (at most ``github_max_matrix`` entries
    each), each needing the level below on its platform, since a matrix entry cannot need
    another; ``explicit`` is the size of the one-job-per-image file, for the note."""
    levels = 1 + max(i.level for i in plan.images)
    builds: list[dict[str, Any]] = []
    below: dict[str, list[str]] = {t.slug: [] for t in plan.targets}
    for level in range(levels):
        at_level = [i for i in plan.images if i.level == level]
        for t in plan.targets:
            parts = _chunks(at_level, limits.github_max_matrix)
            ids = []
            for k, part in enumerate(parts):
                ident = f"level-{level}-{t.slug}" + (f"-{k + 1}" if len(parts) > 1 else "")
                ids.append(ident)
                builds.append(
                    {
                        "id": ident,
                        "name": f"level {level} ({t.platform})",
                        "target": t,
                        "needs": below[t.slug],
                        "entries": [{"image": i.target, "package": _matrix_packages(i, part)} for i in part],
                        "run": _matrix_build(plan, part, t.slug),
                        "artifact": _artifact(_expression("matrix.image"), t.slug),
                        "digest_file": plan.digest_file(_expression("matrix.image"), t.slug),
                    }
                )
            below[t.slug] = ids
    every_build = [b["id"] for b in builds]
    merges: list[dict[str, Any]] = []
    if plan.multi:
        parts = _chunks(plan.images, limits.github_max_matrix)
        for k, part in enumerate(parts):
            merges.append(
                {
                    "id": "merge" + (f"-{k + 1}" if len(parts) > 1 else ""),
                    "name": "merge " + _expression("matrix.image"),
                    "needs": every_build,
                    "artifacts": [_artifact(_expression("matrix.image"), t.slug) for t in plan.targets],
                    "entries": [{"image": i.target} for i in part],
                    "run": plan.merge_command("$IMAGE"),
                }
            )
    count = len(plan.images) * len(plan.targets)
    note = (
        f"GitHub runs workflow files up to {_kilobytes(limits.github_max_workflow)} and one job per "
        f"image makes {_kilobytes(explicit)}: the {count} builds are grouped by dependency level "
        f"into {len(builds)} matrix jobs of at most {limits.github_max_matrix}, each level needing "
        "the one below"
    )
    merged = len(plan.images) if plan.multi else 0
    text = _render(
        "github-workflow.yml.j2",
        {
            **_github_variables(plan),
            "summary": _summary(plan, count, merged),
            "notes": [note],
            "grouped": True,
            "builds": builds,
            "merges": merges,
            "index_needs": [m["id"] for m in merges] or every_build,
        },
    )
    return text, count + merged + 1, note


def relative_base(output: Path | None) -> Path:
    """Where a pipeline's jobs start, for package paths: the root of the git work tree holding
    ``output`` (or the current directory), else that directory itself."""
    start = (output.parent if output is not None else Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start
