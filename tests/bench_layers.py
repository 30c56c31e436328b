"""Benchmark (`make bench`): one big prefix -> one layer -> pushed, imagesmith vs the usual tools.

Three generated workloads (deterministic seed, written to a temp dir, nothing downloaded):

* ``software``: ~1 GiB resembling compiled software: ELF-headed binaries and libraries of
  code-like bytes (compressible ~3x), text files, and ~20% incompressible random data;
* ``smallfiles``: ~200 MiB in ~50,000 small files;
* ``tiny``: ~5 MiB in 100 files.

``BENCH_SCALE`` (default 1.0) scales the sizes and the small-file count; ``BENCH_RUNS``
(default 3) is how many times each measurement is repeated (the median is reported).

For each workload and tool: *cold* (new registry repository, empty imagesmith cache / empty
podman-buildah storage / new OCI layout) and *warm* (the same job again, nothing changed, same
cache/storage). Every job pushes to a CNCF distribution registry on loopback, on top of a
busybox base in that registry. Tools:

* ``imagesmith build --base-image BASE --tag REF PKG.json``;
* ``podman build`` (FROM base, COPY prefix, ENV PATH) + ``podman push``;
* ``buildah`` from / copy / config --env / commit / push (when installed);
* ``skopeo copy`` base -> OCI layout, ``umoci insert`` + ``umoci config``, ``skopeo copy`` -> registry.

Podman and buildah use the isolated setup of tests/servers.py ``Podman`` (vfs storage driver,
the only one that works in this sandbox). Peak RSS is the largest process of each command, as
reported by ``/usr/bin/time -f %M`` (GNU time; 0 when it is missing). The *floor* is the
registry's own acceptance rate: imagesmith's compressed layer blob uploaded alone, one
monolithic PUT through ``RegistryClient.upload_blob``. The script fails unless imagesmith's
cold runs all give the same digest.

Writes a table to the terminal and JSON to .bench/layers.json (or the path in argv[1]).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from servers import DistributionRegistry, Podman, busybox_rootfs  # noqa: E402

from imagesmith.oci.digests import Digest  # noqa: E402
from imagesmith.registry.client import RegistryClient  # noqa: E402
from imagesmith.registry.transport import RegistryOptions  # noqa: E402

MiB = 1024 * 1024
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
RUNS = max(1, int(os.environ.get("BENCH_RUNS", "3")))
PREFIX = "/opt/bench"
PATH_VALUE = f"{PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GNU_TIME = "/usr/bin/time"
EPOCH = 1700000000  # fixed mtime: the generated tree is byte-for-byte the same every run

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


# -- workloads


def _code_bytes(rng: random.Random, n: int) -> bytes:
    """Code-like bytes: a small vocabulary of 'instructions' with repeats (gzip ~3x)."""
    vocab = [rng.randbytes(rng.randint(2, 8)) for _ in range(512)]
    out = bytearray()
    recent: list[bytes] = []
    while len(out) < n:
        if recent and rng.random() < 0.35:
            out += rng.choice(recent)  # repeated sequences, as in real code
        else:
            seq = b"".join(rng.choice(vocab) for _ in range(rng.randint(4, 24)))
            seq += rng.randbytes(rng.randint(1, 6))  # operands / addresses
            out += seq
            recent.append(seq)
            if len(recent) > 64:
                recent.pop(0)
    return bytes(out[:n])


_ELF_HEADER = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x03\x00\x3e\x00\x01\x00\x00\x00"
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "that",
    "with",
    "on",
    "as",
    "are",
    "this",
    "be",
    "by",
    "from",
    "or",
    "an",
    "which",
    "config",
    "install",
    "library",
    "function",
    "return",
    "value",
    "error",
    "file",
    "option",
    "default",
    "version",
    "build",
    "include",
    "static",
    "const",
    "struct",
    "void",
    "int",
    "char",
    "unsigned",
    "size_t",
    "NULL",
    "if",
    "else",
    "while",
    "switch",
    "case",
]


def _text(rng: random.Random, n: int) -> bytes:
    words: list[str] = []
    total = 0
    while total < n:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "\n"
        words.append(line)
        total += len(line)
    return "".join(words).encode()[:n]


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def make_software(root: Path, total: int, seed: int = 11) -> None:
    """ELF-ish binaries and libraries, text, and ~20% random data, ``total`` bytes."""
    rng = random.Random(seed)
    code_pool = _code_bytes(rng, 8 * MiB)  # slices of it keep generation fast at 1 GiB
    written = 0
    i = 0
    while written < total:
        i += 1
        kind = rng.random()
        if kind < 0.2:  # incompressible: data files, embedded compressed assets
            size = rng.randint(256 * 1024, 8 * MiB)
            path, data, mode = root / "share/data" / f"blob{i}.bin", rng.randbytes(size), 0o644
        elif kind < 0.3:  # text: headers, docs, scripts
            size = rng.randint(2 * 1024, 256 * 1024)
            path, data, mode = root / "share/doc" / f"doc{i}.txt", _text(rng, size), 0o644
        else:  # executables and shared libraries
            size = rng.randint(64 * 1024, 12 * MiB)
            start = rng.randrange(0, len(code_pool) - 1)
            body = bytearray()
            while len(body) < size:
                body += code_pool[start : start + size - len(body)]
                start = 0
            data = _ELF_HEADER + bytes(body[: size - len(_ELF_HEADER)])
            if kind < 0.55:
                path, mode = root / "bin" / f"tool{i}", 0o755
            else:
                path, mode = root / "lib" / f"libbench{i}.so.1", 0o755
        data = data[: max(0, min(len(data), total - written))] or b"\n"
        _write(path, data, mode)
        written += len(data)


def make_many(root: Path, count: int, total: int, seed: int) -> None:
    """``count`` small files totalling ~``total`` bytes, half text, 30% code, 20% random."""
    rng = random.Random(seed)
    code_pool = _code_bytes(rng, 1 * MiB)
    mean = max(1, total // count)
    for i in range(count):
        size = max(1, int(rng.expovariate(1 / mean)))
        kind = rng.random()
        if kind < 0.5:
            data = _text(rng, size)
        elif kind < 0.8:
            start = rng.randrange(0, len(code_pool) - size) if size < len(code_pool) else 0
            data = code_pool[start : start + size]
        else:
            data = rng.randbytes(size)
        _write(root / f"d{i % 97:02d}" / f"s{i // 97:03d}" / f"f{i}.dat", data)


def finish_tree(root: Path) -> int:
    """Fixed mtimes everywhere; a bin/ entry point; returns the tree's byte count."""
    script = root / "bin" / "bench-hello"
    _write(script, b"#!/bin/sh\necho bench\n", 0o755)
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            total += os.path.getsize(p)
            os.utime(p, (EPOCH, EPOCH))
    for dirpath, _dirs, _names in os.walk(root, topdown=False):
        os.utime(dirpath, (EPOCH, EPOCH))
    return total


def workloads(root: Path) -> dict[str, tuple[Path, int, int]]:
    """name -> (prefix directory, bytes, files)."""
    out: dict[str, tuple[Path, int, int]] = {}
    specs: dict[str, Callable[[Path], None]] = {
        "software": lambda d: make_software(d, int(1024 * MiB * SCALE)),
        "smallfiles": lambda d: make_many(d, max(100, int(50_000 * SCALE)), int(200 * MiB * SCALE), 13),
        "tiny": lambda d: make_many(d, 100, max(64 * 1024, int(5 * MiB * SCALE)), 17),
    }
    for name, make in specs.items():
        d = root / name / "prefix"
        start = time.perf_counter()
        make(d)
        size = finish_tree(d)
        files = sum(len(f) for _, _, f in os.walk(d))
        print(
            f"workload {name}: {size / MiB:.1f} MiB in {files} files "
            f"(generated in {time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        out[name] = (d, size, files)
    return out


# -- running things


class Failed(Exception):
    pass


def timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, int, str, float]:
    """Run ``cmd``; returns (seconds, peak RSS in KiB of its largest process, stdout, CPU
    seconds: user + sys of the command and its children)."""
    rss_file = None
    full = cmd
    if os.path.exists(GNU_TIME):
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        full = [GNU_TIME, "-f", "%M %U %S", "-o", rss_file, *cmd]
    start = time.perf_counter()
    done = subprocess.run(full, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    rss = 0
    cpu = 0.0
    if rss_file:
        text = Path(rss_file).read_text().strip().splitlines()
        os.unlink(rss_file)
        fields = text[-1].split() if text else []
        if len(fields) == 3 and fields[0].isdigit():
            rss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    if done.returncode != 0:
        raise Failed(f"{' '.join(cmd[:4])}... exit {done.returncode}:\n{done.stderr[-1500:]}")
    return elapsed, rss, done.stdout, cpu


class Job:
    """A sequence of commands that is one 'push this prefix as an image' job."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.rss = 0
        self.out = ""

    def run(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        s, r, out, cpu = timed(cmd, env, cwd)
        self.seconds += s
        self.cpu += cpu
        self.rss = max(self.rss, r)
        self.out = out
        return out


def imagesmith_job(host: str, base: str, pkg: Path, ref: str, cache: Path) -> tuple[Job, str]:
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
    env.pop("SOURCE_DATE_EPOCH", None)
    job = Job()
    out = job.run(
        [
            sys.executable,
            "-m",
            "imagesmith",
            "--insecure-registry",
            host,
            "build",
            "--base-image",
            base,
            "--tag",
            ref,
            "--json",
            str(pkg),
        ],
        env,
    )
    result = json.loads(out)
    if isinstance(result, list):
        result = result[0]
    return job, str(result["digest"])


def podman_job(pm: Podman, base: str, prefix: Path, ref: str, ctx: Path) -> Job:
    # The context is the prefix's parent (which holds nothing else); the Containerfile is outside.
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Containerfile").write_text(f"FROM {base}\nCOPY {prefix.name}/ {PREFIX}/\nENV PATH={PATH_VALUE}\n")
    job = Job()
    p = pm.base_command()
    env = pm.env()
    job.run(
        [
            *p,
            "build",
            "--tls-verify=false",
            "-q",
            "-f",
            str(ctx / "Containerfile"),
            "-t",
            ref,
            str(prefix.parent),
        ],
        env,
    )
    job.run([*p, "push", "--tls-verify=false", ref], env)
    return job


def buildah_job(pm: Podman, base: str, prefix: Path, ref: str) -> Job:
    d = pm.workdir
    b = ["buildah", "--root", str(d / "root"), "--runroot", str(d / "runroot"), "--storage-driver", "vfs"]
    env = pm.env()
    job = Job()
    ctr = job.run(
        [*b, "from", "--tls-verify=false", "--pull-never" if _has_image(b, env, base) else "--pull", base],
        env,
    ).strip()
    job.run([*b, "copy", ctr, str(prefix), PREFIX], env)
    job.run([*b, "config", "--env", f"PATH={PATH_VALUE}", ctr], env)
    job.run([*b, "commit", "-q", ctr, ref], env)
    job.run([*b, "push", "--tls-verify=false", ref], env)
    subprocess.run([*b, "rm", ctr], env=env, capture_output=True, check=False)
    return job


def _has_image(b: list[str], env: dict[str, str], ref: str) -> bool:
    done = subprocess.run([*b, "inspect", "--type", "image", ref], env=env, capture_output=True, check=False)
    return done.returncode == 0


def umoci_job(base: str, prefix: Path, ref: str, layout: Path) -> Job:
    job = Job()
    if not (layout / "index.json").exists():
        job.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{base}", f"oci:{layout}:base"])
    job.run(["umoci", "insert", "--image", f"{layout}:base", "--tag", "t", str(prefix), PREFIX])
    job.run(["umoci", "config", "--image", f"{layout}:t", "--config.env", f"PATH={PATH_VALUE}"])
    job.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{ref}"])
    return job


def layer_floor(host: str, ref_repo: str, tag: str, cache: Path, repo: str) -> tuple[float, int]:
    """Upload imagesmith's top layer blob alone (one monolithic PUT); (seconds, bytes)."""
    r = requests.get(
        f"http://{host}/v2/{ref_repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}, timeout=30
    )
    r.raise_for_status()
    layer = r.json()["layers"][-1]
    digest = Digest.parse(layer["digest"])
    size = int(layer["size"])
    blob = cache / "blobs" / digest.algorithm / digest.hex
    opts = RegistryOptions(insecure=frozenset({host}), chunk_size=max(size + 1, 64 * MiB), timeout=600)
    with RegistryClient(host, opts) as client:
        start = time.perf_counter()
        client.upload_blob(repo, digest, size, lambda: blob.open("rb"))
        return time.perf_counter() - start, size


# -- main


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def import_base(host: str, tmp: Path, cache: Path) -> str:
    """A busybox base image imported into the registry at ``host`` by imagesmith; its name."""
    base = f"{host}/base/busybox:1"
    rootfs = str(busybox_rootfs(tmp / "rootfs"))
    subprocess.run(
        [sys.executable, "-m", "imagesmith", "--insecure-registry", host, "import", rootfs, "--tag", base],
        env={**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)},
        check=True,
        capture_output=True,
    )
    return base


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/layers.json")
    tmp_parent = os.environ.get("BENCH_TMPDIR")
    need = int((1024 + 200 + 5) * MiB * SCALE * 12)  # trees + caches + vfs copies + registry
    free = shutil.disk_usage(tmp_parent or tempfile.gettempdir()).free
    if free < need:
        sys.exit(f"bench: needs ~{need / 2**30:.1f} GiB free in the temp dir, has {free / 2**30:.1f}")
    have_buildah = shutil.which("buildah") is not None
    t0 = time.perf_counter()
    results: dict[str, dict[str, object]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="imagesmith-bench-layers-", dir=tmp_parent) as tmp_name,
        DistributionRegistry(workdir=Path(tmp_name, "registry")) as registry,
    ):
        tmp = Path(tmp_name)
        host = registry.host
        base = import_base(host, tmp, tmp / "cache-import")
        loads = workloads(tmp / "work")
        print(
            f"registry {host}; scale {SCALE}, runs {RUNS}; buildah: {'yes' if have_buildah else 'no'}",
            flush=True,
        )

        for name, (prefix, size, files) in loads.items():
            pkg = tmp / f"{name}.json"
            pkg.write_text(
                json.dumps(
                    {
                        "name": name,
                        "version": "1.0",
                        "prefix": PREFIX,
                        "content": str(prefix),
                        "depends": [],
                        "env": {"prepend_path": {"PATH": "{prefix}/bin"}},
                    }
                )
            )
            tools: dict[str, dict[str, list[float]]] = {}
            digests: list[str] = []
            floors: list[float] = []
            layer_bytes = 0
            errors: dict[str, str] = {}

            record = functools.partial(_record, tools, name)
            for i in range(RUNS):
                # imagesmith
                cache = tmp / f"cache-{name}-{i}"
                repo = f"bench/{name}-imagesmith-{i}"
                job, digest = imagesmith_job(host, base, pkg, f"{host}/{repo}:tag", cache)
                record("imagesmith", "cold", job)
                digests.append(digest)
                job, digest2 = imagesmith_job(host, base, pkg, f"{host}/{repo}:tag", cache)
                record("imagesmith", "warm", job)
                if digest2 != digest:
                    errors["imagesmith"] = f"warm digest {digest2} != cold {digest}"
                secs, layer_bytes = layer_floor(host, repo, "tag", cache, f"bench/{name}-floor-{i}")
                floors.append(secs)
                shutil.rmtree(cache, ignore_errors=True)

                # peers: each in its own storage / layout, removed after the run
                peers: list[tuple[str, Callable[[], Job]]] = []
                bm: Podman | None = None
                pm = Podman()  # its own /tmp dir: podman refuses a runroot path over 50 chars
                pm.add_insecure_registry(host)
                pref = f"{host}/bench/{name}-podman-{i}:tag"
                peers.append(
                    ("podman", functools.partial(podman_job, pm, base, prefix, pref, tmp / f"ctx-{name}-{i}"))
                )
                if have_buildah:
                    bm = Podman()
                    bm.add_insecure_registry(host)
                    bref = f"{host}/bench/{name}-buildah-{i}:tag"
                    peers.append(("buildah", functools.partial(buildah_job, bm, base, prefix, bref)))
                uref = f"{host}/bench/{name}-umoci-{i}:tag"
                layout = tmp / f"oci-{name}-{i}"
                peers.append(("umoci+skopeo", functools.partial(umoci_job, base, prefix, uref, layout)))
                for tool, run in peers:
                    if tool in errors:
                        continue
                    try:
                        record(tool, "cold", run())
                        record(tool, "warm", run())
                    except Failed as e:
                        errors[tool] = str(e)
                        print(f"  {name:10} {tool:14} FAILED: {str(e)[:300]}", flush=True)
                for storage in (pm, bm):
                    if storage is not None:
                        storage.stop()  # removes containers, storage and the directory
                _rm_storage(layout)

            same = len(set(digests)) == 1
            if not same:
                errors["imagesmith-reproducible"] = f"cold runs gave {sorted(set(digests))}"
            ims_cold = median(tools["imagesmith"]["cold"])
            ims_warm = median(tools["imagesmith"]["warm"])
            entry: dict[str, object] = {
                "bytes": size,
                "files": files,
                "layer_bytes": layer_bytes,
                "compression_ratio": round(size / layer_bytes, 2) if layer_bytes else None,
                "same_digest_on_rebuild": same,
                "digest": digests[0],
                "registry_floor": {
                    "seconds": round(median(floors), 3),
                    "mib_per_s": round(layer_bytes / MiB / median(floors), 1),
                },
                "tools": {},
                "errors": errors,
            }
            for tool, t in tools.items():
                cold, warm = median(t.get("cold", [])), median(t.get("warm", []))
                entry["tools"][tool] = {  # type: ignore[index]
                    "cold_s": round(cold, 2),
                    "warm_s": round(warm, 2),
                    "cold_runs": [round(x, 2) for x in t.get("cold", [])],
                    "warm_runs": [round(x, 2) for x in t.get("warm", [])],
                    "peak_rss_mib": round(max(t.get("cold_rss", [0]) + t.get("warm_rss", [0]))),
                    "cold_input_mib_per_s": round(size / MiB / cold, 1),
                    # user + sys of the job's processes (the client's, not the registry's)
                    "cold_cpu_s": round(median(t.get("cold_cpu", [])), 2),
                    "cold_cpu_s_per_gib": round(median(t.get("cold_cpu", [])) / (size / 2**30), 2),
                    "cold_vs_imagesmith": round(cold / ims_cold, 2),
                    "warm_vs_imagesmith": round(warm / ims_warm, 2),
                }
            if not have_buildah:
                entry["tools"]["buildah"] = "not measured: not installed"  # type: ignore[index]
            results[name] = entry
            shutil.rmtree(prefix, ignore_errors=True)

    total = time.perf_counter() - t0
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "scale": SCALE,
        "runs": RUNS,
        "storage_driver_for_podman_buildah": "vfs",
        "total_seconds": round(total, 1),
        "workloads": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\ntotal {total:.0f} s; written to {out_path}")
    bad = [f"{w}: {k}" for w, e in results.items() for k in e["errors"]]  # type: ignore[attr-defined]
    if any("imagesmith" in b for b in bad):
        print("bench: imagesmith problems: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def _record(tools: dict[str, dict[str, list[float]]], name: str, tool: str, phase: str, job: Job) -> None:
    t = tools.setdefault(tool, {})
    t.setdefault(phase, []).append(job.seconds)
    t.setdefault(phase + "_rss", []).append(job.rss / 1024)
    t.setdefault(phase + "_cpu", []).append(job.cpu)
    print(
        f"  {name:10} {tool:14} {phase:4} {job.seconds:8.2f} s  cpu {job.cpu:7.2f} s  "
        f"{job.rss / 1024:7.0f} MiB  load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def _rm_storage(d: Path) -> None:
    if not d.exists():
        return
    # vfs layers can hold read-only dirs; make them writable, then delete.
    subprocess.run(["chmod", "-R", "u+rwX", str(d)], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


def print_table(report: dict[str, object]) -> None:
    print(f"\nscale {report['scale']}, {report['runs']} run(s), medians; ratio = tool / imagesmith")
    cols = ("cold s", "warm s", "cold x", "warm x")
    head = (
        f"{'workload':11}{'tool':14}"
        + "".join(f"{c:>8}" for c in cols)
        + f"{'RSS MiB':>9}{'MiB/s':>8}{'cpu s/GiB':>10}"
    )
    print(head)
    print("-" * len(head))
    for name, e in report["workloads"].items():  # type: ignore[attr-defined]
        for tool, t in e["tools"].items():
            if isinstance(t, str):
                print(f"{name:11}{tool:14}  {t}")
                continue
            times = f"{t['cold_s']:>8.2f}{t['warm_s']:>8.2f}"
            ratios = f"{t['cold_vs_imagesmith']:>7.2f}x{t['warm_vs_imagesmith']:>7.2f}x"
            print(
                f"{name:11}{tool:14}{times}{ratios}{t['peak_rss_mib']:>9}{t['cold_input_mib_per_s']:>8.1f}"
                f"{t['cold_cpu_s_per_gib']:>10.2f}"
            )
        f = e["registry_floor"]
        pad = " " * 33
        print(
            f"{name:11}{'registry PUT':14}{f['seconds']:>8.2f}{pad}{f['mib_per_s']:>8.1f}"
            f"   (layer {e['layer_bytes'] / MiB:.1f} MiB, {e['compression_ratio']}x; "
            f"same digest on rebuild: {e['same_digest_on_rebuild']})"
        )
        for tool, err in e["errors"].items():
            print(f"{name:11}{tool:14}  ERROR: {err.splitlines()[0][:100]}")


if __name__ == "__main__":
    sys.exit(main())
