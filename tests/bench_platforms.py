"""Benchmark (`make bench`): a 2-platform build of platform-independent packages against one.

A stack of 10 packages (scripts and data: the ``software`` generator of bench_layers, 256 MiB
in all at ``BENCH_SCALE`` 1.0, split evenly, all named on the command line) is built on a
multi-platform busybox base (linux/amd64 and linux/arm64/v8, imported and merged by
imagesmith, as the tests' ``multiarch_base`` fixture does) and pushed to a CNCF distribution
registry on loopback, cold each time (new cache, new repository):

* ``imagesmith build --platform linux/amd64``: one image;
* ``imagesmith build --platform linux/amd64,linux/arm64/v8``: two images and their index.

The packages are the same on both platforms, so every package layer is the same blob: built,
checked and pushed once, and the second platform should cost its config, manifest and the
index. ``BENCH_RUNS`` repetitions (medians). Writes a table and .bench/platforms.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_layers import RUNS, SCALE, MiB, finish_tree, make_software, timed  # noqa: E402
from servers import DistributionRegistry, busybox_rootfs  # noqa: E402

PACKAGES = 10
BUSYBOX_ARM64 = HERE / ".data" / "busybox-arm64" / "busybox"
PLATFORMS = {"one": "linux/amd64", "two": "linux/amd64,linux/arm64/v8"}


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/platforms.json")
    if not BUSYBOX_ARM64.is_file():
        sys.exit(f"bench: {BUSYBOX_ARM64} is missing: run 'make {BUSYBOX_ARM64.relative_to(HERE.parent)}'")
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="imagesmith-bench-platforms-") as tmp_name,
        DistributionRegistry(workdir=Path(tmp_name, "registry")) as registry,
    ):
        tmp = Path(tmp_name)
        host = registry.host
        py = [sys.executable, "-m", "imagesmith", "--insecure-registry", host]
        env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(tmp / "cache-base")}
        parts = []
        for plat, busybox in (("linux/amd64", "/bin/busybox"), ("linux/arm64/v8", str(BUSYBOX_ARM64))):
            root = busybox_rootfs(tmp / f"rootfs-{plat.split('/')[1]}", busybox)
            part = f"{host}/base/busybox-multi:1-{plat.split('/')[1]}"
            cmd = [*py, "import", str(root), "--tag", part, "--platform", plat]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            parts.append(part)
        base = f"{host}/base/busybox-multi:1"
        subprocess.run([*py, "merge", *parts, "--tag", base], env=env, check=True, capture_output=True)

        files = []
        each = int(256 * MiB * SCALE / PACKAGES)
        for i in range(PACKAGES):
            content = tmp / f"pkg{i}"
            make_software(content, each, seed=100 + i)
            finish_tree(content)
            pkg = tmp / f"pkg{i}.json"
            pkg.write_text(
                json.dumps(
                    {
                        "name": f"pkg{i}",
                        "version": "1.0",
                        "prefix": f"/opt/pkg{i}",
                        "content": str(content),
                        "depends": [],
                    }
                )
            )
            files.append(str(pkg))
        print(
            f"registry {host}; {PACKAGES} packages, {each * PACKAGES / MiB:.0f} MiB; scale {SCALE}, "
            f"runs {RUNS}",
            flush=True,
        )

        times: dict[str, list[float]] = {"one": [], "two": []}
        cpus: dict[str, list[float]] = {"one": [], "two": []}
        for i in range(RUNS):
            for case, plats in PLATFORMS.items():
                run_env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(tmp / f"cache-{case}-{i}")}
                ref = f"{host}/bench/platforms-{case}-{i}:1"
                cmd = [*py, "build", "--base-image", base, "--platform", plats, "--tag", ref, *files]
                seconds, rss, _out, cpu = timed(cmd, run_env)
                times[case].append(seconds)
                cpus[case].append(cpu)
                print(
                    f"  {case} platform(s) {seconds:7.2f} s  cpu {cpu:6.2f} s  {rss / 1024:5.0f} MiB  "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )

    one, two = statistics.median(times["one"]), statistics.median(times["two"])
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "scale": SCALE,
        "runs": RUNS,
        "packages": PACKAGES,
        "one_platform_s": round(one, 2),
        "two_platforms_s": round(two, 2),
        "one_platform_cpu_s": round(statistics.median(cpus["one"]), 2),
        "two_platforms_cpu_s": round(statistics.median(cpus["two"]), 2),
        "ratio": round(two / one, 2),
        "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n2-platform build of the same packages: {two:.2f} s against {one:.2f} s for one: {two / one:.2f}x"
    )
    print(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
