"""Spack build caches as package sources: file-system caches of layouts 2 and 3, and Spack
OCI build caches in a registry.

A package of a build cache comes with everything an image needs, without touching its bytes:
its spec, its tarball (which becomes the layer as is, so the layer's digest is the checksum the
cache records) and, in the same cache, its runtime dependencies, which are loaded too.

- **Layout 3** (Spack 1.x; ``spack buildcache push DIR``): ``DIR/v3/manifests/spec/<name>/
  <name>-<version>-<hash>.spec.manifest.json`` names two blobs by checksum, the install tarball
  (``application/vnd.spack.install.v2.tar+gzip``) and the gzipped spec
  (``application/vnd.spack.spec.v5+json``), stored without suffix at
  ``DIR/blobs/sha256/<first two hex>/<hex>``. A manifest may be clearsigned; the signature is
  not checked here (Spack checks it when it installs).
- **Layout 2** (Spack 0.22 and 0.23): ``DIR/build_cache/<arch>-<compiler>-<name>-<version>-
  <hash>.spec.json`` (or ``.spec.json.sig``), holding the spec and the tarball's
  ``binary_cache_checksum``, beside ``DIR/build_cache/<arch>/<compiler>/<name>-<version>/
  <same name>.spack``, the tarball.
- **OCI** (``oci://REGISTRY/REPOSITORY``): the image at Spack's tag ``<name>-<version>-<hash>.spack``
  holds the spec in its config and the tarball as its last layer. Only the manifest, the config
  and the first few KiB of that layer (for the install prefix) are read: the build refers to the
  layer, which a push to the same registry mounts.

A package argument names a cache in one of these ways: a directory (every package of it), a
directory and a selector (``DIR:kit-hello``, ``DIR:kit-hello@1.0``, ``DIR:/l4l5ie5``,
``DIR:kit-hello/l4l5``), a layout-3 ``.spec.manifest.json``, a layout-2 ``.spec.json`` or
``.spack`` file, a layout-3 blob (``blobs/sha256/../<hex>``), or ``oci://REGISTRY/REPOSITORY``
with ``:TAG``, ``@DIGEST``, ``:SELECTOR`` or nothing (every Spack package of the repository).

Size: one job, Spack build caches as package sources; its three layouts (file-system 2 and 3,
OCI) sit behind one `SpackSources` and share the selection rules.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from imagesmith.closing import Closing
from imagesmith.errors import ImagesmithError, NotFoundError, PackageError, UsageError, file_error
from imagesmith.inputs.packages import Package, _check_prefix
from imagesmith.inputs.spack import (
    SpackDependency,
    SpackRegistryLayer,
    SpackSpec,
    parse_spack_spec,
    read_tarball_spec,
    spack_tag,
    tarball_package,
)
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import MAX_CONFIG_SIZE, ImageConfig, Manifest, parse_manifest_document
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.transport import RegistryOptions

__all__ = [
    "LAYOUT_VERSIONS",
    "FileBuildCache",
    "RegistryBuildCache",
    "SpackSources",
    "is_cache_argument",
]

#: The file-system build-cache layouts read here.
LAYOUT_VERSIONS = (2, 3)
_TARBALL_TYPE = "application/vnd.spack.install.v"
_SPEC_TYPE = "application/vnd.spack.spec.v"
_MANIFEST_SUFFIX = ".spec.manifest.json"
_V2_SPEC_SUFFIXES = (".spec.json.sig", ".spec.json")
_MAX_METADATA = 64 << 20
_CLEARSIGN = re.compile(
    r"^-----BEGIN PGP SIGNED MESSAGE-----\s+Hash:\s+[^\s]+\s+(.+)-----BEGIN PGP SIGNATURE-----",
    re.MULTILINE | re.DOTALL,
)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Spack's tag of a package; the name is greedy so a dash-free version is taken from the right.
_SPACK_TAG = re.compile(r"(.+)-([^-]+)-([a-z2-7]{32})\.spack")
_T = TypeVar("_T")
_LAYOUT_DIR = re.compile(r"v([0-9]+)")


def _unsigned(text: str) -> str:
    """The JSON inside a clearsigned document (Spack signs manifests and spec files so)."""
    found = _CLEARSIGN.search(text)
    return found.group(1) if found else text


def _json_file(path: Path, what: str, *, gzipped: bool = False) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"{what} {path} not found") from None
    except OSError as exc:
        raise PackageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return _json_bytes(data, f"{what} {path}", gzipped=gzipped)


def _json_bytes(data: bytes, where: str, *, gzipped: bool = False) -> Any:
    try:
        if gzipped or data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return json.loads(_unsigned(data.decode("utf-8")))
    except (OSError, EOFError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackageError(f"{where} is not a readable JSON document: {exc}") from None


def _selector_matches(selector: str, name: str, version: str, dag_hash: str) -> bool:
    """Spack's way of naming an installed spec: ``name``, ``name@version``, ``/hash`` (a prefix
    of the DAG hash) or ``name/hash``."""
    want_name, _, want_hash = selector.partition("/")
    want_name, _, want_version = want_name.partition("@")
    return (
        (not want_name or want_name == name)
        and (not want_version or want_version == version)
        and (not want_hash or dag_hash.startswith(want_hash))
        and bool(want_name or want_hash)
    )


def _pick(
    selector: str, found: list[_T], identity: Callable[[_T], tuple[str, str, str]], where: str
) -> list[_T]:
    """The items whose ``(name, version, hash)`` ``selector`` names; exactly one unless the
    selector has no hash (a name may name several versions only with ``/hash``)."""
    picked = [item for item in found if _selector_matches(selector, *identity(item))]
    if not picked:
        raise PackageError(
            f"{where} holds no package matching {selector!r} (name, name@version, /hash or name/hash)"
        )
    if len(picked) > 1:
        shown = ", ".join(f"{n}@{v}/{h[:7]}" for n, v, h in map(identity, picked[:10]))
        raise PackageError(
            f"{where} holds {len(picked)} packages matching {selector!r} ({shown}): add /hash to pick one"
        )
    return picked


@dataclass
class FileBuildCache:
    """A Spack build cache in a directory: layout 3, layout 2, or both (Spack 1.x reads a
    cache migrated halfway so; layout 3 is looked in first)."""

    root: Path
    layouts: tuple[int, ...]
    _entries: dict[Path, Package] = field(default_factory=dict, repr=False)

    @staticmethod
    def layouts_of(root: Path) -> tuple[int, ...]:
        """The layouts ``root`` holds (empty when it is no build cache); an unknown layout
        version (a ``vN`` directory Spack may write in the future) is a :class:`PackageError`."""
        found = []
        if (root / "v3").is_dir():
            found.append(3)
        if (root / "build_cache").is_dir():
            found.append(2)
        if not found:
            # Spack keeps every layout since 3 under vN/manifests/: another N is a layout this
            # imagesmith does not know (a plain directory with a v2/ folder is no build cache).
            others = (
                sorted(
                    p.parent.name for p in root.glob("v*/manifests") if _LAYOUT_DIR.fullmatch(p.parent.name)
                )
                if root.is_dir()
                else []
            )
            if others:
                raise PackageError(
                    f"{root} is a Spack build cache of layout version {others[0][1:]} ({others[0]}/); "
                    f"imagesmith reads layouts {' and '.join(map(str, LAYOUT_VERSIONS))}: push to a "
                    "build cache with a Spack whose layout it knows"
                )
        return tuple(found)

    @classmethod
    def open(cls, root: Path) -> FileBuildCache:
        """The build cache at ``root``; :class:`PackageError` when it is none."""
        layouts = cls.layouts_of(root)
        if not layouts:
            raise PackageError(f"{root} is not a Spack build cache (neither v3/ nor build_cache/ in it)")
        return cls(root.absolute(), layouts)

    @property
    def locator(self) -> str:
        return str(self.root)

    def spec_files(self) -> list[Path]:
        """Every file that names a package: layout-3 spec manifests, layout-2 spec files."""
        files: list[Path] = []
        if 3 in self.layouts:
            files += sorted((self.root / "v3" / "manifests" / "spec").glob(f"*/*{_MANIFEST_SUFFIX}"))
        if 2 in self.layouts:
            seen: set[str] = set()
            for path in sorted((self.root / "build_cache").glob("*.spec.json*")):
                stem = _v2_stem(path.name)
                if stem is not None and stem not in seen:
                    seen.add(stem)
                    files.append(path)
        return files

    def entry(self, spec_file: Path) -> Package:
        """The package a spec manifest (layout 3) or spec file (layout 2) names."""
        spec_file = spec_file.absolute()
        found = self._entries.get(spec_file)
        if found is None:
            if spec_file.name.endswith(_MANIFEST_SUFFIX):
                found = self._v3_entry(spec_file)
            else:
                found = self._v2_entry(spec_file)
            self._entries[spec_file] = found
        return found

    def packages(self, selector: str | None = None) -> list[Package]:
        """Every package of the cache, or those ``selector`` names (see the module docstring)."""
        entries = [self.entry(f) for f in self.spec_files()]
        if selector is None:
            if not entries:
                raise PackageError(f"the Spack build cache {self.root} holds no package")
            return entries
        return _pick(
            selector,
            entries,
            lambda p: (p.name, p.version, p.hash or ""),
            f"the Spack build cache {self.root}",
        )

    def find(self, dep: SpackDependency) -> Package | None:
        """The package of ``dep``'s hash in this cache, or None."""
        if 3 in self.layouts:
            folder = self.root / "v3" / "manifests" / "spec"
            name = f"{dep.name}-{dep.version}-{dep.hash}{_MANIFEST_SUFFIX}" if dep.version else None
            candidates = [folder / dep.name / name] if name else []
            candidates += sorted(folder.glob(f"*/*-{dep.hash}{_MANIFEST_SUFFIX}"))
            for path in candidates:
                if path.is_file():
                    return self.entry(path)
        if 2 in self.layouts:
            for suffix in _V2_SPEC_SUFFIXES:
                for path in sorted((self.root / "build_cache").glob(f"*-{dep.hash}{suffix}")):
                    return self.entry(path)
        return None

    def blob_entry(self, blob: Path) -> Package | None:
        """The package whose tarball is the layout-3 blob ``blob``, or None when no manifest
        of the cache names it."""
        checksum = blob.name
        for path in self.spec_files():
            if path.name.endswith(_MANIFEST_SUFFIX):
                records = self._records(path)
                if any(r.get("checksum") == checksum for r in records):
                    return self.entry(path)
        return None

    def tarball_entry(self, tarball: Path) -> Package | None:
        """The package whose layout-2 tarball (``.spack``) is ``tarball``, or None."""
        stem = tarball.name.removesuffix(".spack")
        for suffix in _V2_SPEC_SUFFIXES:
            spec_file = self.root / "build_cache" / (stem + suffix)
            if spec_file.is_file():
                return self.entry(spec_file)
        return None

    # -------------------------------------------------------------------------- layout 3

    def _records(self, manifest: Path) -> list[dict[str, Any]]:
        doc = _json_file(manifest, "Spack build-cache manifest")
        what = f"Spack build-cache manifest {manifest}"
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise PackageError(f"{what} is not a build-cache manifest (no 'data' list)")
        version = doc.get("version")
        if version != 3:
            raise PackageError(
                f"{what} has layout version {version!r}; imagesmith reads layouts "
                f"{' and '.join(map(str, LAYOUT_VERSIONS))}"
            )
        records = [r for r in doc["data"] if isinstance(r, dict)]
        for record in records:
            checksum = str(record.get("checksum"))
            if record.get("checksumAlgorithm") != "sha256" or not _HEX64.fullmatch(checksum):
                raise PackageError(f"{what}: blob record {record!r} has no sha256 checksum")
        return records

    def _blob(self, record: Mapping[str, Any], manifest: Path, kind: str) -> Path:
        checksum = str(record["checksum"])
        path = self.root / "blobs" / "sha256" / checksum[:2] / checksum
        if not path.is_file():
            raise PackageError(
                f"Spack build-cache manifest {manifest} names its {kind} blob sha256:{checksum}, "
                f"which is missing ({path}): push the package to the build cache again"
            )
        return path

    def _v3_entry(self, manifest: Path) -> Package:
        records = self._records(manifest)
        what = f"Spack build-cache manifest {manifest}"
        tarballs = [r for r in records if str(r.get("mediaType", "")).startswith(_TARBALL_TYPE)]
        specs = [r for r in records if str(r.get("mediaType", "")).startswith(_SPEC_TYPE)]
        if not tarballs or not specs:
            raise PackageError(f"{what} does not name both an install tarball and a spec")
        spec_blob = self._blob(specs[0], manifest, "spec")
        data = spec_blob.read_bytes()
        if Digest.of(data).hex != specs[0]["checksum"]:
            raise PackageError(
                f"{what}: its spec blob {spec_blob} does not match its checksum "
                f"sha256:{specs[0]['checksum']}: the build cache is damaged; push the package again"
            )
        spec = parse_spack_spec(_json_bytes(data, f"spec blob {spec_blob}"), str(spec_blob))
        _check_named(manifest.name.removesuffix(_MANIFEST_SUFFIX), spec, what)
        tarball = self._blob(tarballs[0], manifest, "tarball")
        return tarball_package(
            tarball,
            source=manifest,
            spec=spec,
            checksum=Digest.parse("sha256:" + str(tarballs[0]["checksum"])),
            cache=self.locator,
        )

    # -------------------------------------------------------------------------- layout 2

    def _v2_entry(self, spec_file: Path) -> Package:
        doc = _json_file(spec_file, "Spack spec file")
        what = f"Spack spec file {spec_file}"
        spec = parse_spack_spec(doc, str(spec_file))
        layout = doc.get("buildcache_layout_version", 0)
        if layout not in (1, 2):
            raise PackageError(
                f"{what} has build-cache layout version {layout!r}: an old-style .spack archive "
                "(layout 0 or 1 inside layout 2) or a newer layout; imagesmith reads tarballs of "
                "layouts 2 and 3 (push the package again with Spack 0.22 or later)"
            )
        checksum = doc.get("binary_cache_checksum")
        if not isinstance(checksum, dict) or checksum.get("hash_algorithm") != "sha256":
            raise PackageError(f"{what} has no sha256 binary_cache_checksum for its tarball")
        stem = _v2_stem(spec_file.name)
        assert stem is not None  # spec_files and load_argument only pass such names
        _check_named(stem, spec, what)
        tarball = self._v2_tarball(stem, spec)
        if tarball is None:
            raise PackageError(
                f"{what} names a tarball {stem}.spack that is not in {self.root / 'build_cache'}: "
                "push the package to the build cache again"
            )
        try:
            digest = Digest.parse("sha256:" + str(checksum.get("hash")))
        except ImagesmithError:
            raise PackageError(f"{what}: binary_cache_checksum.hash is not a sha256 digest") from None
        return tarball_package(tarball, source=spec_file, spec=spec, checksum=digest, cache=self.locator)

    def _v2_tarball(self, stem: str, spec: SpackSpec) -> Path | None:
        root = spec.nodes[0]
        arch = root.get("arch")
        arch = arch if isinstance(arch, dict) else {}
        target = arch.get("target")
        target_name = target.get("name") if isinstance(target, dict) else target
        compiler = root.get("compiler")
        compiler = compiler if isinstance(compiler, dict) else {}
        folder = (
            f"{arch.get('platform')}-{arch.get('platform_os')}-{target_name}/"
            f"{compiler.get('name')}-{compiler.get('version')}/{spec.name}-{spec.version}"
        )
        path = self.root / "build_cache" / folder / f"{stem}.spack"
        if path.is_file():
            return path
        # Spack's own directory naming can differ from this guess (projections, old targets).
        return next(iter(sorted((self.root / "build_cache").glob(f"*/*/*/{stem}.spack"))), None)


def _v2_stem(name: str) -> str | None:
    for suffix in _V2_SPEC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_named(stem: str, spec: SpackSpec, what: str) -> None:
    if not stem.endswith("-" + spec.hash):
        raise PackageError(
            f"{what} is named for another package than the spec it holds ({spec.name}/{spec.hash})"
        )


def _cache_root(path: Path) -> Path | None:
    """The build cache a file of it belongs to: ``ROOT/v3/manifests/spec/NAME/FILE``,
    ``ROOT/blobs/sha256/XX/HEX``, ``ROOT/build_cache/...``."""
    for parent in path.absolute().parents:
        if parent.name in ("v3", "build_cache", "blobs"):
            root = parent.parent
            if FileBuildCache.layouts_of(root):
                return root
    return None


# ------------------------------------------------------------------------------ registries


@dataclass
class RegistryBuildCache:
    """A Spack OCI build cache: one repository of a registry."""

    pool: RegistryPool
    repository: Reference
    _packages: dict[str, Package] = field(default_factory=dict, repr=False)

    @property
    def locator(self) -> str:
        return f"oci://{self.repository.name}"

    def _shown(self, tag: str) -> str:
        return f"{self.repository.name}:{tag}"

    def load(self, identifier: str) -> Package:
        """The package of the Spack image at tag (or digest) ``identifier``."""
        found = self._packages.get(identifier)
        if found is not None:
            return found
        client = self.pool.client(self.repository.registry)
        repo = self.repository.repository
        shown = (
            self._shown(identifier)
            if not identifier.startswith("sha256:")
            else (f"{self.repository.name}@{identifier}")
        )
        got = client.get_manifest(repo, identifier)
        document = parse_manifest_document(got.data, got.media_type, f"manifest of {shown}")
        if not isinstance(document, Manifest) or not document.layers:
            kind = "an image index" if not isinstance(document, Manifest) else "a manifest without layers"
            raise PackageError(
                f"{shown} is not a Spack image: it is {kind} (Spack pushes one image per package)"
            )
        data = client.get_blob_bytes(repo, document.config, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(data, f"config of {shown}")
        raw = config.raw
        checksum = raw.get("binary_cache_checksum")
        layer = document.layers[-1]
        if not isinstance(raw.get("spec"), dict) or not isinstance(checksum, dict):
            raise PackageError(
                f"{shown} is not a Spack image: its config has no Spack spec and "
                "binary_cache_checksum (give a Spack build-cache tag, name-version-hash.spack)"
            )
        if checksum.get("hash") != layer.digest.hex:
            raise PackageError(
                f"{shown} is not a Spack image Spack could install: its binary_cache_checksum "
                f"{checksum.get('hash')!r} is not the digest of its last layer ({layer.digest})"
            )
        spec = parse_spack_spec({"spec": raw["spec"]}, f"config of {shown}")
        diff_ids = config.diff_ids
        if len(diff_ids) != len(document.layers):
            raise PackageError(
                f"config of {shown} lists {len(diff_ids)} diff_ids for {len(document.layers)} layers"
            )
        with client.open_blob(repo, layer) as reader:
            prefix_rel, _spec = read_tarball_spec(cast("IO[bytes]", reader), f"last layer of {shown}")
        prefix = _check_prefix(Path(shown), "/" + prefix_rel, what="Spack image")
        package = Package(
            name=spec.name,
            version=spec.version,
            prefix=prefix,
            content=None,
            content_kind=None,
            hash=spec.hash,
            depends=(),
            env=None,
            source=Path(f"oci:/{self.repository.name}:{identifier}"),
            metadata={"spec": spec.to_json()},
            spack=spec,
            spack_content=SpackRegistryLayer(
                self.repository.registry, repo, layer, diff_ids[-1], _env_directories(config.env, prefix)
            ),
            spack_cache=self.locator,
        )
        self._packages[identifier] = package
        return package

    def find(self, dep: SpackDependency) -> Package | None:
        """The package of ``dep`` at its Spack tag, or None when the repository lacks it."""
        if not dep.version:
            return None
        tag = spack_tag(dep.name, dep.version, dep.hash)
        try:
            return self.load(tag)
        except NotFoundError:
            return None

    def packages(self, selector: str | None = None) -> list[Package]:
        """The packages of the repository's Spack tags, or those ``selector`` names."""
        client = self.pool.client(self.repository.registry)
        if selector is not None:
            try:
                return [self.load(selector)]  # a tag, which must be a Spack image
            except NotFoundError:
                pass  # no such tag: a selector over the Spack tags
        tags = sorted(t for t in client.list_tags(self.repository.repository) if t.endswith(".spack"))
        tags = [t for t in tags if t != "index.spack"]
        if selector is None:
            if not tags:
                raise PackageError(f"{self.locator} holds no Spack image (no tag name-version-hash.spack)")
            return [self.load(t) for t in tags]
        named = [(m[1], m[2], m[3], tag) for tag in tags if (m := _SPACK_TAG.fullmatch(tag))]
        picked = _pick(selector, named, lambda t: (t[0], t[1], t[2]), f"{self.locator} (no tag {selector!r})")
        return [self.load(tag) for _n, _v, _h, tag in picked]


def _env_directories(env: Sequence[str], prefix: str) -> frozenset[str]:
    """The directories of ``prefix`` (as archive paths) that a Spack image's ``Env`` names:
    Spack's environment comes from the same prefix inspections imagesmith infers from."""
    found: set[str] = set()
    for item in env:
        _name, _, value = item.partition("=")
        for entry in value.split(":"):
            if entry == prefix or entry.startswith(prefix + "/"):
                path = entry.strip("/")
                while path:
                    found.add(path)
                    path = path.rpartition("/")[0]
    prefix_rel = prefix.strip("/")
    while prefix_rel:
        found.add(prefix_rel)
        prefix_rel = prefix_rel.rpartition("/")[0]
    return frozenset(found)


# ------------------------------------------------------------------------------ arguments


def _oci_argument(text: str) -> tuple[Reference, str | None] | None:
    """``oci://REGISTRY/REPO[:TAG|@DIGEST|:SELECTOR]`` as (repository, identifier or None)."""
    if not text.startswith("oci://"):
        return None
    rest = text[len("oci://") :]
    digest = None
    if "@sha256:" in rest:
        rest, _, hexpart = rest.partition("@")
        digest = hexpart
    host, slash, path = rest.partition("/")
    if not slash or not path:
        raise UsageError(f"{text}: give oci://REGISTRY/REPOSITORY[:TAG]")
    name, colon, identifier = path.partition(":")
    try:
        repository = Reference.parse(f"{host}/{name}", default_tag=None)
    except ImagesmithError as exc:
        raise UsageError(f"{text}: {exc}") from None
    if digest is not None:
        return repository, digest
    return repository, identifier if colon and identifier else None


def is_cache_argument(text: str) -> bool:
    """Whether a package argument names a build cache, or something in one, rather than a
    package file, an install prefix or a bare tarball (see the module docstring)."""
    if text.startswith("oci://"):
        return True
    try:
        return _is_cache_path(text)
    except OSError as exc:  # a parent that cannot be searched: the argument cannot be read at all
        raise file_error("access", text, exc, "check the permissions of the directories above it") from None


def _is_cache_path(text: str) -> bool:
    path = Path(text)
    if path.is_dir():
        # An install prefix is never a build cache, whatever folders it holds.
        return not (path / ".spack" / "spec.json").is_file() and bool(FileBuildCache.layouts_of(path))
    name = path.name
    if name.endswith(_MANIFEST_SUFFIX):
        return True
    if _v2_stem(name) is not None and path.parent.name == "build_cache":
        return True
    if name.endswith(".spack") and path.is_file() and _cache_root(path) is not None:
        return True
    if _HEX64.fullmatch(name) and path.parent.parent.name == "sha256":
        return True
    if not path.exists() and ":" in text:
        head, _, _selector = text.rpartition(":")
        return Path(head).is_dir() and bool(FileBuildCache.layouts_of(Path(head)))
    return False


class SpackSources(Closing):
    """The build caches one :func:`~imagesmith.inputs.load.load_packages` call reads: each opened
    once, and a registry connection made only if a registry is named."""

    def __init__(self, *, pool: RegistryPool | None = None, registry: RegistryOptions | None = None) -> None:
        self._pool = pool
        self._owned: RegistryPool | None = None
        self._registry = registry
        self._caches: dict[str, FileBuildCache | RegistryBuildCache] = {}

    def close(self) -> None:
        """Close the registry connections this object opened."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def _registry_pool(self) -> RegistryPool:
        if self._pool is None:
            self._owned = RegistryPool(self._registry)
            self._pool = self._owned
        return self._pool

    def file_cache(self, root: Path) -> FileBuildCache:
        key = str(root.absolute())
        cache = self._caches.get(key)
        if not isinstance(cache, FileBuildCache):
            cache = self._caches[key] = FileBuildCache.open(root)
        return cache

    def registry_cache(self, repository: Reference) -> RegistryBuildCache:
        key = f"oci://{repository.name}"
        cache = self._caches.get(key)
        if not isinstance(cache, RegistryBuildCache):
            cache = self._caches[key] = RegistryBuildCache(self._registry_pool(), repository)
        return cache

    def load(self, text: str) -> list[Package]:
        """The packages a build-cache argument names (see :func:`is_cache_argument`)."""
        oci = _oci_argument(text)
        if oci is not None:
            repository, identifier = oci
            cache = self.registry_cache(repository)
            if identifier is not None and identifier.startswith("sha256:"):
                return [cache.load(identifier)]
            try:
                return cache.packages(identifier)
            except NotFoundError as exc:
                raise PackageError(f"{text}: {exc}") from None
        path = Path(text)
        if path.is_dir():
            return self.file_cache(path).packages()
        if not path.exists() and ":" in text:
            head, _, selector = text.rpartition(":")
            return self.file_cache(Path(head)).packages(selector)
        root = _cache_root(path)
        name = path.name
        if name.endswith(_MANIFEST_SUFFIX) or _v2_stem(name) is not None:
            if not path.is_file():
                raise PackageError(f"Spack build-cache file {path.absolute()} not found")
            if root is None:
                raise PackageError(
                    f"{path.absolute()} is not inside a Spack build cache (v3/ or build_cache/)"
                )
            return [self.file_cache(root).entry(path)]
        if root is not None:
            files = self.file_cache(root)
            entry = files.tarball_entry(path) if name.endswith(".spack") else files.blob_entry(path)
            if entry is not None:
                return [entry]
        # A blob or tarball no spec of its cache names: it still holds its own spec.
        return [tarball_package(path)]

    def dependency(self, package: Package, dep: SpackDependency) -> Package | None:
        """``dep`` from the build cache ``package`` came from, or None."""
        locator = package.spack_cache
        if locator is None:
            return None
        cache = self._caches.get(locator)
        if cache is None:
            return None
        return cache.find(dep)
