"""Re-runnable move of imagesmith's flat modules into the layered package layout (issue 16).

Run from the repository root on a tree in the OLD (flat) layout::

    python tools/relayout.py     # git mv + splits + import rewrites, then ruff tidies imports

It does three things, all driven by the tables below:

1. ``MOVES``: whole modules, moved with ``git mv`` so that git's rename detection carries other
   branches' edits of them through a merge.
2. ``SPLITS``: a module whose top-level definitions go to several new modules. The remainder
   (everything not named) is ``git mv``-ed to the split's ``rest`` path; each new piece gets the
   original's import block (ruff then drops what a piece does not use) plus imports of the names
   it uses from its sibling pieces.
3. Every ``from imagesmith... import`` (absolute or relative) in imagesmith/, tests/ and
   examples/ rewritten to the module that now defines each name, as an absolute import.

Kept here (not in the product) so the layout can be applied again to a main that moved on: the
tables name definitions, not line numbers.
"""

from __future__ import annotations

import ast
import re
import subprocess
import textwrap
import sys
from dataclasses import dataclass, field
from pathlib import Path

PKG = "imagesmith"

# old module (dotted, relative to imagesmith) -> new module
MOVES: dict[str, str] = {
    "digests": "oci.digests",
    "mediatypes": "oci.mediatypes",
    "references": "oci.references",
    "model": "oci.model",
    "tarformat": "tar.format",
    "tarwriter": "tar.writer",
    "compression": "tar.compression",
    "unpack": "tar.unpack",
    "blobstore": "store.blobstore",
    "cache": "store.cache",
    "layout": "store.layout",
    "login": "registry.login",
    "server": "registry.server",
    "overlap": "registry.overlap",
    "daemon": "transports.daemon",
    "archive": "transports.archive",
    "envmods": "inputs.envmods",
    "spack": "inputs.spack",
    "spackcache": "inputs.spackcache",
    "spackdb": "inputs.spackdb",
    "spackenv": "inputs.spackenv",
    "spackrelocation": "inputs.spackrelocation",
    "layerrecords": "pipeline.records",
    "grouplayer": "pipeline.group",
    "budget": "pipeline.budget",
    "closure": "pipeline.closure",
    "elf": "pipeline.elf",
    "sbom": "artifacts.sbom",
    "pull": "ops.pull",
    "platformmerge": "ops.platformmerge",
    "repoindex": "ops.repoindex",
    "registryops": "ops.verbs",
    "referrers": "artifacts.referrers",
    "signing": "artifacts.signing",
    "ci": "generate.ci",
    "makefile": "generate.makefile",
}


@dataclass
class Split:
    rest: str  # where the remainder goes (git mv)
    pieces: dict[str, list[str]]  # new module -> top-level names it takes
    # names whose statements are copied into every piece that uses them (loggers, TypeVars)
    copy: list[str] = field(default_factory=list)
    docs: dict[str, str] = field(default_factory=dict)  # module -> docstring (rest included)


SPLITS: dict[str, Split] = {
    "layers": Split(
        rest="tar.layer",
        pieces={
            "tar.entries": [
                "MAX_TARBALL_BYTES", "_CHUNK", "_DIR_MODE", "_WHITEOUT", "_OPAQUE",
                "source_date_epoch", "normalise_prefix", "_sort_key", "archive_sort_key", "_package_mode",
                "_parents", "_FS_ENCODING_IS_UTF8", "_Child", "_first", "_SHOWN_PATH", "input_error",
                "_utf8_member", "_utf8_name", "_kind_of", "_refuse_whiteout_name", "_sorted_children",
                "directory_entries", "_dir_entry", "_fs_entry", "_clean_member_name", "_Item", "_Node",
                "TarballEntries", "_sorted_nodes", "_is_root_relative", "_check_parents", "tarball_entries",
            ],
        },
        docs={
            "tar.layer": '''"""Building a layer from entries in one streaming pass, and a tarball adopted as a layer.

:func:`build_layer` writes a stream of :class:`~imagesmith.tar.writer.TarEntry` (from
:mod:`imagesmith.tar.entries`) as a tar, hashes it (the diff_id), compresses it, hashes that
(the digest) and stores it in the blob cache, in one streaming pass; gzip headers carry no
mtime and no file name (see :mod:`imagesmith.tar.compression`), so the same entries always
give the same digest. :func:`adopt_tarball` takes a tarball as its own layer, byte for byte
(one read: hashed, decompressed, every member checked); :func:`with_file` puts a generated file
among a layer's sorted entries.
"""''',
            "tar.entries": '''"""Package content as deterministic tar entries: from a directory (:func:`directory_entries`)
or a tarball (:func:`tarball_entries`), as a stream of :class:`~imagesmith.tar.writer.TarEntry`
that :func:`imagesmith.tar.layer.build_layer` writes.

Determinism (the same content always gives the same diff_id and digest):

- entries are sorted by the bytes of their archive path (directories compared as ``name/``),
  every parent directory is present, and the parents of the install prefix come first;
- every entry gets the same mtime: ``$SOURCE_DATE_EPOCH`` when set, else 0;
- uid and gid are 0 and user and group names empty; no atime, ctime or other PAX extras;
- hardlinks are kept: the first path of a hardlinked set in sorted order carries the data,
  the others link to it.

Mode and special-file policy. ``preserve=False`` (packages, the default): directories 0755,
regular files 0755 when any execute bit is set and 0644 otherwise, symlinks 0777;
setuid, setgid and sticky bits are dropped, owners become 0:0; device nodes and FIFOs raise
:class:`LayerError` naming the path; sockets are skipped (tar cannot represent them and a
socket left in a prefix is a stale runtime artefact). ``preserve=True`` (importing a root
filesystem as a base image): permission bits including setuid, setgid and sticky are kept,
numeric owners come from the filesystem or the tarball, device nodes and FIFOs are kept,
sockets are still skipped; the mtime is still the fixed one.

Tarball members are checked before anything is written: absolute names, ``..`` components,
NUL bytes, whiteouts (any ``.wh.`` component, unless ``allow_whiteouts``), hardlinks to a member
not seen before, a member below a symlink or file, and member types tar cannot express portably
raise :class:`LayerError` naming the member. Tarballs are read by :mod:`imagesmith.tar.format`,
the reader the unpacker uses too. In a directory, a file or directory named ``.wh.*`` raises
:class:`LayerError` naming it: a layer reader would take it for a whiteout and delete files of
the layers below.
"""''',
        },
    ),
    "images": Split(
        rest="oci.image",
        pieces={
            "transports.registry": ["RemoteOrigin", "RegistrySource"],
            "transports.layout": ["LayoutOrigin", "LayoutSource"],
            "transports.locations": ["resolve_base"],
        },
        docs={
            "oci.image": '''"""Images as values: an image, its layers and where each layer's bytes are read.

An :class:`Image` never holds layer bytes. Each :class:`Layer` carries its descriptor, its
diff_id and its origin (a :class:`BlobOrigin`): a repository of a registry
(``transports.registry.RemoteOrigin``), an OCI layout directory
(``transports.layout.LayoutOrigin``), an archive (``transports.archive.ArchiveOrigin``), a local
file (:class:`FileOrigin`), or the local blob cache (``None``: a layer imagesmith built). Bytes
are read only when a sink really needs them. Appending returns a new image; the manifest is
computed from the value, so the same inputs always give the same manifest bytes.

An :class:`ImageSource` (the protocol every transport's source implements) reads an image's raw
documents (bytes exactly as stored, so copies keep their digests), small blobs such as configs,
and tells the origin of every other blob. :func:`choose_platform` walks a source's index to one
platform's manifest; ``transports.locations.resolve_base`` reads a base image through it.
"""''',
        },
    ),
    "locations": Split(
        rest="transports.locations",
        pieces={
            "transports.registry": ["_UNSUPPORTED", "_TRANSPORT_PREFIXES", "RegistryLocation"],
            "transports.layout": ["LayoutLocation"],
            "transports.archive": ["ArchiveLocation"],
            "transports.daemon": ["DaemonLocation"],
        },
    ),
    "transfer": Split(
        rest="transports.base",
        pieces={
            "transports.registry": ["RegistrySink"],
            "transports.layout": ["LayoutSink"],
            "transports.archive": ["ArchiveSink"],
            "transports.daemon": ["DaemonSink"],
            "transports.locations": ["as_location", "open_source", "open_sink"],
            "transports.copy": [
                "_store_key",
                "write_images",
                "CopyResult",
                "_Plan",
                "_collect",
                "copy_image",
            ],
        },
        copy=["log", "T", "PlatformChoice"],
        docs={
            "transports.base": '''"""What every transport shares: the sink protocol and writing an image value onto a sink.

A sink is where an image is written: a registry repository, an OCI layout, a docker archive,
or a Docker-compatible daemon (through an archive); each kind's sink lives in its own module
(``transports/registry.py``, ``layout.py``, ``archive.py``, ``daemon.py``). Every sink follows
the same order, which keeps each of them consistent after an interruption: blobs first (in
parallel), then the config, then manifests (an index's children before the index), the named
top document last.

Where bytes come from is a blob's origin (:mod:`imagesmith.oci.image`). A sink asks for them
only when it lacks the blob, and takes the cheapest road: a registry HEADs the blob, then mounts
it from another repository of the same registry, and only then uploads. Uploads (which may be
retried from the start) and archive writes (which must not wait on the network while holding
the archive) read from a local file: the blob cache, filled once and verified (:func:`fetch_blob`),
or the origin's own file (a layout).

:func:`write_image` writes an :class:`~imagesmith.oci.image.Image` value built by the pipeline;
``transports.copy`` copies raw images and writes several images in one run.
"""''',
            "transports.copy": '''"""Copying raw images between any two locations, and writing several image values in one run.

:func:`copy_image` copies raw manifest bytes, never re-serialised, so a copy keeps every digest.
:func:`write_images` writes images that share blobs so each blob is written once per store.
"""''',
        },
    ),
    "merge": Split(
        rest="ops.merge",
        pieces={"oci.index": ["_FAMILY_NAMES", "_is_attestation", "_platform_key", "index_document"]},
        docs={
            "oci.index": '''"""Index documents from descriptors: deterministic bytes, platforms sorted, attestations last."""''',
        },
    ),
    "packages": Split(
        rest="inputs.packages",
        pieces={
            "inputs.load": [
                "_wrapped_spec",
                "load_package",
                "_wrapped_content",
                "_looks_like_tarball",
                "load_packages",
                "_load_all",
            ],
        },
        docs={
            "inputs.load": '''"""Loading packages: package files, Spack prefixes, tarballs and build caches, in dependency order.

:func:`load_package` reads one input (a package file, a Spack install prefix or spec, a
build-cache tarball, or a Spack build cache), :func:`load_packages` a list of them with every
dependency, sorted so dependencies come first. It sits above both :mod:`imagesmith.inputs.packages`
(the package value) and :mod:`imagesmith.inputs.spack` (Spack's inputs), which is what keeps
the two from importing each other.
"""''',
        },
    ),
    "pipeline": Split(
        rest="pipeline.run",
        pieces={
            "oci.vocabulary": ["PROFILE_SCRIPT_PATH", "LABEL_NAME", "LABEL_VERSION", "LABEL_HASH", "ANNOTATION"],
            "pipeline.results": [
                "BuildOptions",
                "BuiltPackage",
                "StackLayer",
                "GroupLayer",
                "_single_layers",
                "_Written",
                "BuildResult",
                "_tag_of",
                "_notes",
                "_spack_entry",
                "_PROFILE_PROBLEM",
                "MultiBuildResult",
                "ImportResult",
            ],
            "pipeline.layers": [
                "_early_uploads",
                "content_layer",
                "_inspected_depth",
                "_rebuild_origin",
                "adopted_layer",
                "build_package_layers",
                "_registry_layer",
                "_registry_origin",
                "_layer_problem",
                "plan_stacks",
                "single_layer_keys",
                "build_group_layers",
                "stack_layers",
                "_platform_layers",
                "_layer_meter",
            ],
            "pipeline.assemble": [
                "_created",
                "_history_of",
                "assemble",
                "_profile_layer",
                "_index_hash",
                "_platform_index",
            ],
            "pipeline.destinations": [
                "_push_target",
                "_probe_target",
                "_platform_slug",
                "_rendered_tag",
                "target_reference",
                "_tag_reference",
                "check_output",
                "plan_destinations",
                "_name_of",
                "write_destinations",
                "_early_uploads_allowed",
                "_multi_tag",
                "_each_targets",
                "_each_location",
            ],
            "pipeline.checks": ["check_runtime_closure", "check_trust_destinations", "attach_and_sign"],
            "ops.inspect": ["InspectResult", "inspect"],
        },
        docs={
            "pipeline.run": '''"""The build entry points: ``build``, ``build_each``, ``build_platforms``,
``build_each_platforms`` and ``import_rootfs``. Orchestration only.

Data flows one way::

    inputs -> plan (base location, platform, packages in dependency order, options)
           -> base (manifest + config only) -> layers (one streaming pass each, into the cache)
           -> config + manifest -> sink (registry, OCI layout, docker archive, daemon)

Each step lives in its own module of this package: :mod:`.results` (options and results),
:mod:`.layers` (package and group layers), :mod:`.assemble` (config, manifest, index),
:mod:`.destinations` (names and where the image goes), :mod:`.checks` (the closure check before
writing; SBOMs and signatures after). This one wires them together.
"""''',
            "pipeline.results": '''"""What a build is asked for and what it returns: :class:`BuildOptions` and the result values
(:class:`BuildResult`, :class:`MultiBuildResult`, :class:`ImportResult`, :class:`BuiltPackage`,
:class:`StackLayer`)."""''',
            "pipeline.layers": '''"""The layers of a build: each package's layer (built, reused from its record, or adopted from a
Spack tarball or registry), the layer plan's groups, and each image's stack of layers. Layers
are built in parallel and, when the target is a registry, uploaded while they are compressed."""''',
            "pipeline.assemble": '''"""Assembling images: the config (environment, command, labels, Spack's keys, history) and
manifest of one image on its base, and the index of a multi-platform build."""''',
            "pipeline.destinations": '''"""Where a build's image goes: the checks of its name and output before any work, the target
reference (tag template), the complete list of destinations, and writing to each of them."""''',
            "pipeline.checks": '''"""The checks around writing an image: the runtime-closure check before anything is written,
the refusal of an SBOM or signature with nowhere to go, and, after the image is written, its
SBOMs attached and its signatures pushed."""''',
            "oci.vocabulary": '''"""The words imagesmith writes into images: config labels naming the package, the OCI
annotation prefix, and the profile script's path. One place, so the build that writes them and
the readers (repository index, pull) agree."""''',
            "ops.inspect": '''"""``inspect``: what an image (or index) at a location is, read without its layers."""''',
        },
    ),
}

NEW_PACKAGES: dict[str, str] = {
    "oci": "Image values with no I/O: digests, media types, references, the OCI documents, images "
    "as values, index documents, and the vocabulary imagesmith writes into images.",
    "store": "Local storage: the atomic blob store, the blob cache, and OCI layout directories.",
    "tar": "The bytes of a layer: the tar format (one reader), the writer, compression, building "
    "a layer in one streaming pass, and safe unpacking.",
    "transports": "Where images are read and written, one module per location kind (its location, "
    "source, origin and sink): registry.py, layout.py, archive.py, daemon.py; base.py holds "
    "what they share and locations.py parses and opens them.",
    "inputs": "What a build is made of: packages (package files, Spack prefixes, build caches, "
    "environments) and environment modifications, loaded in dependency order.",
    "artifacts": "What is attached to an image after it is written: SBOMs, referrers, signatures.",
    "pipeline": "The build pipeline, one job per module: results (options and results), layers, "
    "assemble, destinations, checks, and run (the entry points).",
    "ops": "The operations besides building, each over the layers below: inspect, pull, merge (images "
    "into an index, per-platform builds joined) and the repository indexes.",
    "generate": "Generated files: Makefiles and CI pipelines for a stack.",
}

ROOT = Path.cwd()
SRC = ROOT / PKG


def path_of(module: str) -> Path:
    return SRC / (module.replace(".", "/") + ".py")


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# Splitting


@dataclass
class Chunk:
    names: list[str]
    text: str
    node: ast.stmt


def top_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def is_header(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import | ast.ImportFrom):
        return True
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def parse_module(text: str) -> tuple[str, list[ast.stmt], list[Chunk], list[str]]:
    """(docstring source, header statements, body chunks, __all__)."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    body = list(tree.body)
    doc = ""
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        doc = "".join(lines[body[0].lineno - 1 : body[0].end_lineno])
        body = body[1:]
    header: list[ast.stmt] = []
    while body and is_header(body[0]):
        header.append(body.pop(0))
    exported: list[str] = []
    chunks: list[Chunk] = []
    prev_end = header[-1].end_lineno if header else 0
    for node in body:
        names = top_names(node)
        start = node.lineno
        decorators = getattr(node, "decorator_list", [])
        if decorators:
            start = min(d.lineno for d in decorators)
        # leading comments belong to the statement they stand above
        first = start - 1
        while first - 1 >= (prev_end or 0) and lines[first - 1].lstrip().startswith("#"):
            first -= 1
        seg = "".join(lines[first : node.end_lineno])
        prev_end = node.end_lineno or 0
        if names == ["__all__"]:
            exported = list(ast.literal_eval(node.value))  # type: ignore[attr-defined]
            continue
        chunks.append(Chunk(names, seg, node))
    return doc, header, chunks, exported


def used_names(node: ast.AST) -> set[str]:
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            # string annotations and cast("X", ...) targets
            found.update(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", n.value) if len(n.value) < 200 else [])
    return found


# definitions of the old layout: old module -> {name: new module}
DEFINED: dict[str, dict[str, str]] = {}
# names a split module imported (not defined): old module -> {name: (old source module, name)}
REEXPORTED: dict[str, dict[str, tuple[str, str]]] = {}


def header_imports(module: str, header: list[ast.stmt]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for node in header:
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                source = resolve_from(module, sub, is_init=False)
                if source is None:
                    continue
                for alias in sub.names:
                    out[alias.asname or alias.name] = (source, alias.name)
    return out


def resolve_from(module: str, node: ast.ImportFrom, is_init: bool) -> str | None:
    """The old-layout module (relative to imagesmith, "" for the package) an ImportFrom names."""
    if node.level:
        parts = module.split(".") if module else []
        package = parts if is_init else parts[:-1]
        keep = len(package) - (node.level - 1)
        base = package[: max(keep, 0)]
        target = ".".join(base + ([node.module] if node.module else []))
        return target
    if node.module == PKG:
        return ""
    if node.module and node.module.startswith(PKG + "."):
        return node.module[len(PKG) + 1 :]
    return None


def plan_splits() -> dict[str, tuple[str, list[ast.stmt], list[Chunk], list[str]]]:
    parsed = {}
    for old, split in SPLITS.items():
        text = path_of(old).read_text()
        doc, header, chunks, exported = parse_module(text)
        parsed[old] = (doc, header, chunks, exported)
        owner: dict[str, str] = {}
        wanted = {name: piece for piece, names in split.pieces.items() for name in names}
        for chunk in chunks:
            for name in chunk.names:
                owner[name] = wanted.get(name, split.rest)
        missing = set(wanted) - set(owner)
        if missing:  # names of another version of the module: nothing to place
            print(f"relayout: {old}.py defines no {sorted(missing)}", file=sys.stderr)
        DEFINED[old] = owner
        REEXPORTED[old] = header_imports(old, header)
    return parsed


def write_pieces(old: str, parsed: tuple[str, list[ast.stmt], list[Chunk], list[str]]) -> None:
    split = SPLITS[old]
    doc, header, chunks, exported = parsed
    text = path_of(old).read_text()
    lines = text.splitlines(keepends=True)
    header_text = "".join(lines[header[0].lineno - 1 : header[-1].end_lineno]) if header else ""
    header_text = header_text.replace("from __future__ import annotations\n", "")
    owner = DEFINED[old]
    modules = [split.rest, *split.pieces]
    by_module: dict[str, list[Chunk]] = {m: [] for m in modules}
    copies = [c for c in chunks if set(c.names) & set(split.copy)]
    for chunk in chunks:
        if chunk in copies:
            continue
        target = owner[chunk.names[0]] if chunk.names else split.rest
        by_module[target].append(chunk)
    # git mv the original to the remainder's place first (rename detection), then write all
    dest = path_of(split.rest)
    if split.rest != old:
        dest.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(path_of(old).relative_to(ROOT)), str(dest.relative_to(ROOT)))
    for module in modules:
        mine = by_module[module]
        uses: set[str] = set()
        for chunk in mine:
            uses |= used_names(chunk.node)
        own = {n for c in mine for n in c.names}
        extra: dict[str, list[str]] = {}
        for name in sorted(uses - own):
            home = owner.get(name)
            if home is not None and home != module and name not in split.copy:
                extra.setdefault(home, []).append(name)
        copied = [c for c in copies if set(c.names) & uses]
        # a copied statement may use other copied names (PlatformChoice uses Platform: imported)
        out = [split.docs.get(module, doc if module == split.rest else '"""' + module + '"""').rstrip() + "\n\n"]
        out.append("from __future__ import annotations\n\n")
        out.append(header_text.strip("\n") + "\n")
        for home, names in sorted(extra.items()):
            out.append(f"from {PKG}.{home} import {', '.join(names)}\n")
        public = [n for n in exported if n in own]
        if public:
            out.append("\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in public) + "]\n")
        for chunk in copied:
            out.append("\n" + chunk.text.strip("\n") + "\n")
        body = ""
        for chunk in mine:
            body += "\n\n" + chunk.text.strip("\n") + "\n"
        out.append(body)
        text_out = "".join(out)
        text_out = re.sub(r"\n{4,}", "\n\n\n", text_out)
        path = path_of(module)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and module != split.rest:
            # a piece that lands in a module another split (or move) also fills: append the body
            existing = path.read_text()
            text_out = merge_modules(existing, text_out)
        path.write_text(text_out)


def merge_modules(existing: str, new: str) -> str:
    """Two generated modules into one: imports of both, then both bodies (existing first)."""
    e_doc, e_header, e_chunks, e_all = parse_module(existing)
    n_doc, n_header, n_chunks, n_all = parse_module(new)
    e_lines = existing.splitlines(keepends=True)
    n_lines = new.splitlines(keepends=True)

    def header_of(lines: list[str], header: list[ast.stmt]) -> str:
        if not header:
            return ""
        return "".join(lines[header[0].lineno - 1 : header[-1].end_lineno]).replace(
            "from __future__ import annotations\n", ""
        )

    out = [e_doc.rstrip() + "\n\n", "from __future__ import annotations\n\n"]
    out.append(header_of(e_lines, e_header).strip("\n") + "\n")
    out.append(header_of(n_lines, n_header).strip("\n") + "\n")
    names = list(dict.fromkeys(e_all + n_all))
    if names:
        out.append("\n__all__ = [\n" + "".join(f'    "{n}",\n' for n in names) + "]\n")
    seen: set[str] = set()
    for chunk in e_chunks + n_chunks:
        key = chunk.text.strip()
        if chunk.names and set(chunk.names) <= seen and key:
            continue  # a copied statement (log, T) both brought
        seen.update(chunk.names)
        out.append("\n\n" + chunk.text.strip("\n") + "\n")
    return re.sub(r"\n{4,}", "\n\n\n", "".join(out))


# ---------------------------------------------------------------------------------------------
# Import rewriting


def old_modules() -> set[str]:
    found = set()
    for p in SRC.rglob("*.py"):
        rel = p.relative_to(SRC).with_suffix("")
        name = ".".join(rel.parts)
        found.add(name[: -len(".__init__")] if name.endswith("__init__") else name)
    return found


def new_home(old_module: str, name: str | None, depth: int = 0) -> tuple[str, str]:
    """(new module, name) for ``name`` imported from old module ``old_module`` (or the module
    itself when ``name`` is a submodule)."""
    if depth > 5:
        return old_module, name or ""
    if name is not None:
        sub = f"{old_module}.{name}" if old_module else name
        if sub in MOVES or sub in SPLITS or sub in OLD_MODULES:
            return parent_and_leaf(map_module(sub))
    if old_module in SPLITS and name is not None:
        owner = DEFINED[old_module]
        if name in owner:
            return owner[name], name
        if name in REEXPORTED[old_module]:
            src, real = REEXPORTED[old_module][name]
            return new_home(src, real, depth + 1)
        return SPLITS[old_module].rest, name
    return map_module(old_module), name or ""


def map_module(old: str) -> str:
    if old in MOVES:
        return MOVES[old]
    if old in SPLITS:
        return SPLITS[old].rest
    return old


def parent_and_leaf(module: str) -> tuple[str, str]:
    if "." in module:
        parent, leaf = module.rsplit(".", 1)
        return parent, leaf
    return "", module


def render_from(module: str, names: list[str], indent: str) -> str:
    target = f"{PKG}.{module}" if module else PKG
    return f"{indent}from {target} import {', '.join(names)}\n"


def module_of_file(path: Path) -> tuple[str, bool] | None:
    try:
        rel = path.relative_to(SRC)
    except ValueError:
        return None
    name = ".".join(rel.with_suffix("").parts)
    if name.endswith("__init__"):
        return name[: -len("__init__")].rstrip("."), True
    return name, False


def rewrite_imports(path: Path, as_module: str | None = None, self_module: str | None = None) -> bool:
    """Rewrite the imports of one file; ``as_module`` is the OLD module name the file's
    relative imports are resolved against (a piece of a split resolves like its original)."""
    text = path.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    located = module_of_file(path)
    module, is_init = (as_module, False) if as_module is not None else (located or (None, False))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and module is None:
                continue
            source = resolve_from(module or "", node, is_init) if node.level else resolve_from("", node, False)
            if source is None:
                continue
            groups: dict[str, list[str]] = {}
            for alias in node.names:
                home, real = new_home(source, alias.name)
                if self_module is not None and home == self_module and node.col_offset == 0:
                    continue  # defined in this very module now
                entry = real + (f" as {alias.asname}" if alias.asname else "")
                if alias.asname is None and real != alias.name:
                    entry = f"{real} as {alias.name}"
                groups.setdefault(home, []).append(entry)
            indent = " " * node.col_offset
            new = "".join(render_from(home, names, indent) for home, names in groups.items())
            if not new:
                new = f"{indent}pass\n" if node.col_offset else ""
            # a trailing comment on the import's last line survives
            last = lines[node.lineno - 1] if "  # noqa" in lines[node.lineno - 1] else lines[node.end_lineno - 1]
            comment = ""
            if "#" in last and ")" not in last.split("#", 1)[1]:
                code, _, rest = last.partition("  #")
                if rest:
                    comment = "  #" + rest.rstrip("\n")
            if comment and "noqa" in comment:
                new = "".join(line + comment + "\n" for line in new.rstrip("\n").split("\n"))
            elif comment:
                new = new.rstrip("\n") + comment + "\n"
            edits.append((node.lineno, node.end_lineno or node.lineno, new))
        elif isinstance(node, ast.Import):
            parts = []
            changed = False
            for alias in node.names:
                if alias.name == PKG or not alias.name.startswith(PKG + "."):
                    parts.append(alias.name + (f" as {alias.asname}" if alias.asname else ""))
                    continue
                new_mod = map_module(alias.name[len(PKG) + 1 :])
                changed = True
                parts.append(f"{PKG}.{new_mod}" + (f" as {alias.asname}" if alias.asname else ""))
            if changed:
                indent = " " * node.col_offset
                edits.append((node.lineno, node.end_lineno or node.lineno, f"{indent}import {', '.join(parts)}\n"))
    if not edits:
        return False
    for start, end, new in sorted(edits, reverse=True):
        lines[start - 1 : end] = [new]
    path.write_text("".join(lines))
    return True


_CODE_IMPORT = re.compile(r"^(?P<indent>[ \t\"']*)from imagesmith\.(?P<mod>[\w.]+) import (?P<names>[\w, ]+?)(?P<tail>\\n\"|\\n'|\"|'|)$")


_CODE_PLAIN_IMPORT = re.compile(r"^(?P<indent>[ \t\"']*)import imagesmith\.(?P<mod>[\w.]+)(?P<tail>\\n\"|\\n'|\"|'|)$")


def rewrite_code_in_strings(text: str) -> str:
    """``from imagesmith.X import a`` and ``import imagesmith.X`` lines inside strings (code run
    in a subprocess)."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        plain = _CODE_PLAIN_IMPORT.match(body)
        if plain and plain["indent"].strip() and plain["mod"] in OLD_MODULES:
            new = map_module(plain["mod"])
            body = f"{plain['indent']}import {PKG}.{new}{plain['tail']}"
            out.append(body + line[len(line.rstrip("\n")) :])
            continue
        match = _CODE_IMPORT.match(body)
        if match and match["mod"] in OLD_MODULES and (match["mod"] in MOVES or match["mod"] in SPLITS):
            groups: dict[str, list[str]] = {}
            for name in (n.strip() for n in match["names"].split(",")):
                home, real = new_home(match["mod"], name)
                groups.setdefault(home, []).append(real if real == name else f"{real} as {name}")
            if len(groups) == 1:
                [(home, names)] = groups.items()
                body = f"{match['indent']}from {PKG}.{home} import {', '.join(names)}{match['tail']}"
            elif not match["tail"] and not match["indent"].strip():
                # a plain code line (a doc's example): one import per module
                body = "\n".join(
                    f"{match['indent']}from {PKG}.{home} import {', '.join(names)}" for home, names in groups.items()
                )
            line = body + line[len(line.rstrip("\n")) :]
        out.append(line)
    return "".join(out)


_DOTTED = re.compile(r"\bimagesmith\.([a-z_]+)(?:\.([A-Za-z_]\w*))?")


def rewrite_prose(line: str) -> str:
    """``imagesmith.old.Name`` in docstrings and comments: the name's new home."""
    if "getLogger(" in line or re.match(r"\s*(from|import)\s", line):
        return line  # logger names stay: users filter on them

    def one(match: re.Match[str]) -> str:
        old, name = match[1], match[2]
        if old not in MOVES and old not in SPLITS:
            return match[0]
        if old in PUBLIC_NAMES:
            return match[0]  # imagesmith.pull is the function: only quoted module paths move
        if name is None:
            if match.string[match.end() : match.end() + 1] == "(":
                return match[0]  # a call of the public function of that name (imagesmith.pull(...))
            return f"{PKG}.{map_module(old)}"
        home, real = new_home(old, name)
        if home == "":
            return f"{PKG}.{real}"
        return f"{PKG}.{home}.{real}"

    return _DOTTED.sub(one, line)


_LAZY_ENTRY = re.compile(r'^(?P<head>\s*"(?P<name>\w+)": ")(?P<module>\.[\w.]+)(?P<tail>",?.*)$')


def rewrite_lazy_table(path: Path) -> None:
    """``"Name": ".module"`` entries (the package's lazy-import table, PEP 562): each name's new
    home."""
    out = []
    for line in path.read_text().splitlines(keepends=True):
        match = _LAZY_ENTRY.match(line.rstrip("\n"))
        if match:
            old = match["module"][1:]
            if old in MOVES or old in SPLITS:
                home, _ = new_home(old, match["name"])
                line = f"{match['head']}.{home}{match['tail']}\n"
        out.append(line)
    path.write_text("".join(out))


def rewrite_strings(path: Path) -> None:
    """Dotted module paths in strings (monkeypatch targets, log names) of moved modules, and
    imports in code held in strings."""
    text = path.read_text()
    new = rewrite_code_in_strings(text)
    new = "".join(rewrite_prose(line) for line in new.splitlines(keepends=True))
    for old, target in sorted(MOVES.items(), key=lambda kv: -len(kv[0])):
        new = re.sub(rf'(["\'])imagesmith\.{re.escape(old)}([."\'])', rf"\1imagesmith.{target}\2", new)
    if new != text:
        path.write_text(new)


OLD_MODULES: set[str] = set()
# The package's public names (its __all__): a module of the same name (pull, login) is named in
# prose and code as the function, so only quoted module paths of it are rewritten.
PUBLIC_NAMES: set[str] = set()


def public_names() -> set[str]:
    tree = ast.parse((SRC / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def main() -> None:
    if not (SRC / "pipeline.py").exists():
        sys.exit("relayout: imagesmith/pipeline.py is gone: this tree has the new layout already")
    OLD_MODULES.update(old_modules())
    PUBLIC_NAMES.update(public_names())
    parsed = plan_splits()
    files = [p for d in (SRC, ROOT / "tests", ROOT / "examples") for p in d.rglob("*.py")
             if ".data" not in p.parts]  # fmt: skip
    # 1. rewrite imports everywhere while the tree is still flat (relative imports resolve)
    originals = {p: module_of_file(p) for p in files}
    for path in files:
        if path.stem in ("relayout",):
            continue
        located = originals[path]
        if located is not None and located[0] in SPLITS:
            continue  # split modules are rewritten piece by piece below
        rewrite_strings(path)
        rewrite_imports(path)
        if path == SRC / "__init__.py":
            rewrite_lazy_table(path)
    for old in SPLITS:
        rewrite_strings(path_of(old))
    parsed = plan_splits()  # again: the split modules' prose was just rewritten
    # the docs: imports in examples and dotted names in prose
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        rewrite_strings(doc)
    # 2. whole-module moves
    for package, text in NEW_PACKAGES.items():
        init = SRC / package / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            wrapped = textwrap.fill(text, width=96)
            init.write_text(f'"""{wrapped}\n"""\n')
            git("add", str(init.relative_to(ROOT)))
    for old, new in MOVES.items():
        if not path_of(old).exists():
            continue  # a module this version of the tree does not have
        dest = path_of(new)
        dest.parent.mkdir(parents=True, exist_ok=True)
        git("mv", str(path_of(old).relative_to(ROOT)), str(dest.relative_to(ROOT)))
    # 3. splits: each piece's imports resolved as its original module's were
    order = ["layers", "locations", "images", "transfer", "merge", "packages", "pipeline"]
    for old in order:
        write_pieces(old, parsed[old])
        split = SPLITS[old]
        for module in [split.rest, *split.pieces]:
            rewrite_imports(path_of(module), as_module=old, self_module=module)
            git("add", str(path_of(module).relative_to(ROOT)))
    ruff = str(ROOT / ".venv/bin/ruff")
    for select in ("I001,F401", "RUF022"):
        subprocess.run([ruff, "check", "-q", "--fix", "--select", select, PKG, "tests", "examples"], cwd=ROOT)
    git("add", "-A", PKG, "tests", "examples", "docs", "README.md")
    print("relayout: done")


if __name__ == "__main__":
    main()
