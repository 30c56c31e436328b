"""Benchmark (`make bench`): pull an image and unpack it into a directory, imagesmith vs peers.

The two big workloads of bench_layers (``software``, ~1 GiB in ~200 files; ``smallfiles``,
~200 MiB in ~50,000 files; ``BENCH_SCALE`` scales both) are pushed once by imagesmith as one
layer on the busybox base to a CNCF distribution registry on loopback. Then, ``BENCH_RUNS``
times each (median reported), into a new directory on the same file system every time:

* ``imagesmith pull REF --rootfs DIR``: *cold* with an empty cache, *warm* with the blobs
  cached (the same cache, a new directory);
* ``skopeo copy docker://REF oci:LAYOUT`` + ``umoci unpack --rootless``: cold with a new
  layout, warm with the layout already there (``umoci unpack`` alone);
* ``podman pull`` + ``podman create`` + ``podman export | tar -x``: cold with empty storage
  (``vfs``, as in bench_layers), warm with the image in storage;
* the *floor*: each layer blob, base first, inflated by ISA-L (python-isal's ``igzip``, the
  package imagesmith itself depends on) and piped into GNU ``tar -x``: no verification, no
  safety, nothing but inflating and writing files.

Peak RSS is the largest process of a job (GNU ``time``); CPU is the user+sys seconds of the
job's processes. The script checks that every tree has the workload's files (count and bytes).
Writes a table and JSON to .bench/pull.json (or the path in argv[1]).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_layers import (  # noqa: E402 - the workloads and settings bench_layers measures
    GNU_TIME,
    PREFIX,
    RUNS,
    SCALE,
    MiB,
    finish_tree,
    import_base,
    make_many,
    make_software,
)
from servers import DistributionRegistry, Podman  # noqa: E402


class Failed(Exception):
    pass


class Job:
    """Commands that make one 'pull this image into a directory' job: wall, CPU, peak RSS."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.rss_kib = 0

    def run(self, cmd: list[str], env: dict[str, str] | None = None) -> str:
        full = cmd
        fd, stats = tempfile.mkstemp(prefix="bench-time-")
        os.close(fd)
        if os.path.exists(GNU_TIME):
            full = [GNU_TIME, "-f", "%M %U %S", "-o", stats, *cmd]
        start = time.perf_counter()
        done = subprocess.run(full, env=env, capture_output=True, text=True, check=False)
        self.seconds += time.perf_counter() - start
        lines = Path(stats).read_text().split("\n")
        os.unlink(stats)
        fields = [line.split() for line in lines if len(line.split()) == 3]
        if fields:
            rss, user, sys_ = fields[-1]
            self.rss_kib = max(self.rss_kib, int(rss))
            self.cpu += float(user) + float(sys_)
        if done.returncode != 0:
            raise Failed(f"{' '.join(cmd[:4])}... exit {done.returncode}:\n{done.stderr[-1500:]}")
        return done.stdout


def tree_size(root: Path) -> tuple[int, int]:
    """(regular files, their bytes) under ``root``."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                size += st.st_size
    return files, size


def rm_tree(d: Path) -> None:
    if d.exists():
        subprocess.run(["chmod", "-R", "u+rwX", str(d)], capture_output=True, check=False)
        shutil.rmtree(d, ignore_errors=True)


def imagesmith_pull(host: str, ref: str, cache: Path, dest: Path) -> Job:
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
    job = Job()
    job.run(
        [
            sys.executable,
            "-m",
            "imagesmith",
            "--insecure-registry",
            host,
            "pull",
            ref,
            "--rootfs",
            str(dest),
            "--quiet",
        ],
        env,
    )
    return job


def umoci_pull(ref: str, layout: Path, dest: Path) -> Job:
    job = Job()
    if not (layout / "index.json").exists():
        job.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:t"])
    job.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:t", str(dest)])
    return job


def podman_pull(pm: Podman, ref: str, dest: Path) -> Job:
    p = " ".join(pm.base_command())
    env = pm.env()
    job = Job()
    job.run([*pm.base_command(), "pull", "-q", "--tls-verify=false", ref], env)
    ctr = job.run([*pm.base_command(), "create", ref, "/bin/true"], env).strip()
    dest.mkdir(parents=True)
    job.run(["sh", "-c", f'{p} export "$1" | tar -x -C "$2"', "sh", ctr, str(dest)], env)
    subprocess.run([*pm.base_command(), "rm", ctr], env=env, capture_output=True, check=False)
    return job


def floor(blobs: list[Path], dest: Path) -> Job:
    """ISA-L inflate of each layer piped into GNU tar -x, base first."""
    dest.mkdir(parents=True)
    job = Job()
    for blob in blobs:
        script = f'"{sys.executable}" -m isal.igzip -d -c "$1" | tar -x -C "$2"'
        job.run(["sh", "-c", script, "sh", str(blob), str(dest)])
    return job


def layer_blobs(cache: Path, host: str, repo: str) -> list[Path]:
    import requests

    accept = ", ".join(
        ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]
    )
    r = requests.get(f"http://{host}/v2/{repo}/manifests/1", headers={"Accept": accept}, timeout=30)
    r.raise_for_status()
    out = []
    for layer in r.json()["layers"]:
        algorithm, hexdigest = layer["digest"].split(":", 1)
        out.append(cache / "blobs" / algorithm / hexdigest)
    return out


class Results:
    """One workload's jobs per tool and phase, each checked to have unpacked the whole tree."""

    def __init__(self, name: str, files: int, size: int) -> None:
        self.name, self.files, self.size = name, files, size
        self.times: dict[str, dict[str, list[Job]]] = {}
        self.errors: dict[str, str] = {}

    def record(self, tool: str, phase: str, job: Job, dest: Path) -> None:
        root = dest / "rootfs" if tool == "umoci+skopeo" else dest  # umoci makes a bundle
        got = tree_size(root / PREFIX.lstrip("/"))
        if got != (self.files, self.size):
            self.errors[tool] = f"{phase}: {got[0]} files, {got[1]} bytes, not {self.files}, {self.size}"
        self.times.setdefault(tool, {}).setdefault(phase, []).append(job)
        print(
            f"  {self.name:10} {tool:14} {phase:4} {job.seconds:7.2f} s  cpu {job.cpu:6.2f} s  "
            f"{job.rss_kib / 1024:5.0f} MiB  load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        rm_tree(dest)

    def summary(self) -> dict[str, object]:
        entry: dict[str, object] = {"bytes": self.size, "files": self.files, "errors": self.errors}
        tools: dict[str, object] = {}
        for tool, phases in self.times.items():
            t: dict[str, object] = {}
            for phase, jobs in phases.items():
                t[f"{phase}_s"] = round(statistics.median(j.seconds for j in jobs), 2)
                t[f"{phase}_cpu_s"] = round(statistics.median(j.cpu for j in jobs), 2)
                t[f"{phase}_runs"] = [round(j.seconds, 2) for j in jobs]
            t["peak_rss_mib"] = round(max(j.rss_kib for js in phases.values() for j in js) / 1024)
            tools[tool] = t
        entry["tools"] = tools
        return entry


def workload(
    name: str, make: Callable[[Path], None], tmp: Path, host: str, base: str, env: dict[str, str]
) -> dict[str, object]:
    """Push the workload once, then pull it with every tool, cold and warm, RUNS times."""
    py = [sys.executable, "-m", "imagesmith", "--insecure-registry", host]
    prefix = tmp / name / "prefix"
    make(prefix)
    size = finish_tree(prefix)
    files = tree_size(prefix)[0]
    pkg = tmp / f"{name}.json"
    pkg.write_text(
        json.dumps({"name": name, "version": "1.0", "prefix": PREFIX, "content": str(prefix), "depends": []})
    )
    repo = f"bench/pull-{name}"
    ref = f"{host}/{repo}:1"
    subprocess.run(
        [*py, "build", "--base-image", base, "--tag", ref, "--quiet", str(pkg)],
        env=env,
        check=True,
    )
    shutil.rmtree(prefix)
    print(f"workload {name}: {size / MiB:.1f} MiB in {files} files, pushed as {ref}", flush=True)
    res = Results(name, files, size)
    for i in range(RUNS):
        cache = tmp / f"cache-{name}-{i}"
        for phase in ("cold", "warm"):
            dest = tmp / f"out-{name}-imagesmith-{phase}-{i}"
            res.record("imagesmith", phase, imagesmith_pull(host, ref, cache, dest), dest)
        dest = tmp / f"out-{name}-floor-{i}"
        res.record("floor", "warm", floor(layer_blobs(cache, host, repo), dest), dest)
        shutil.rmtree(cache, ignore_errors=True)

        layout = tmp / f"oci-{name}-{i}"
        pm = Podman()
        pm.add_insecure_registry(host)
        peers: list[tuple[str, Callable[[Path], Job]]] = [
            ("umoci+skopeo", functools.partial(umoci_pull, ref, layout)),
            ("podman", functools.partial(podman_pull, pm, ref)),
        ]
        try:
            for phase in ("cold", "warm"):
                for tool, run in peers:
                    if tool in res.errors:
                        continue
                    dest = tmp / f"out-{name}-{tool}-{phase}-{i}"
                    try:
                        res.record(tool, phase, run(dest), dest)
                    except Failed as exc:
                        res.errors[tool] = str(exc)
                        print(f"  {name:10} {tool:14} FAILED: {str(exc)[:300]}", flush=True)
                        rm_tree(dest)
        finally:
            pm.stop()
            rm_tree(layout)
    return res.summary()


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/pull.json")
    tmp_parent = os.environ.get("BENCH_TMPDIR")
    need = int((1024 + 200) * MiB * SCALE * 10)
    free = shutil.disk_usage(tmp_parent or tempfile.gettempdir()).free
    if free < need:
        sys.exit(f"bench: needs ~{need / 2**30:.1f} GiB free in the temp dir, has {free / 2**30:.1f}")
    t0 = time.perf_counter()
    results: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory(prefix="imagesmith-bench-pull-", dir=tmp_parent) as tmp_name,
        DistributionRegistry(workdir=Path(tmp_name, "registry")) as registry,
    ):
        tmp = Path(tmp_name)
        host = registry.host
        env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(tmp / "cache-push")}
        base = import_base(host, tmp, tmp / "cache-push")
        specs: dict[str, Callable[[Path], None]] = {
            "software": lambda d: make_software(d, int(1024 * MiB * SCALE)),
            "smallfiles": lambda d: make_many(d, max(100, int(50_000 * SCALE)), int(200 * MiB * SCALE), 13),
        }
        print(f"registry {host}; scale {SCALE}, runs {RUNS}; load {os.getloadavg()[0]:.2f}", flush=True)
        for name, make in specs.items():
            results[name] = workload(name, make, tmp, host, base, env)
    total = time.perf_counter() - t0
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_after": round(os.getloadavg()[0], 2),
        },
        "scale": SCALE,
        "runs": RUNS,
        "total_seconds": round(total, 1),
        "workloads": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\ntotal {total:.0f} s; written to {out_path}")
    bad = {
        f"{w}: {tool}": err
        for w, e in results.items()
        for tool, err in cast("dict[str, str]", cast("dict[str, object]", e)["errors"]).items()
        if tool in ("imagesmith", "floor")
    }
    if bad:
        print(f"bench: imagesmith problems: {bad}", file=sys.stderr)
        return 1
    return 0


def print_table(report: dict[str, object]) -> None:
    print(f"\npull --rootfs; scale {report['scale']}, {report['runs']} run(s), medians")
    head = f"{'workload':11}{'tool':14}{'cold s':>8}{'warm s':>8}{'cold cpu':>9}{'warm cpu':>9}{'RSS MiB':>9}"
    print(head)
    print("-" * len(head))
    for name, e in report["workloads"].items():  # type: ignore[attr-defined]
        for tool, t in e["tools"].items():
            cells = [f"{t[k]:>8.2f}" if k in t else f"{'-':>8}" for k in ("cold_s", "warm_s")]
            cells += [f"{t[k]:>9.2f}" if k in t else f"{'-':>9}" for k in ("cold_cpu_s", "warm_cpu_s")]
            print(f"{name:11}{tool:14}{''.join(cells)}{t['peak_rss_mib']:>9}")
        for tool, err in e["errors"].items():
            print(f"{name:11}{tool:14}  ERROR: {err.splitlines()[0][:100]}")


if __name__ == "__main__":
    sys.exit(main())
