"""Benchmark (`make bench`): a 1,000-package stack as 1,000 images, in one run vs one by one.

The stack is generated, not downloaded (tests/stackgen.py): 10 levels of 100 packages, each
on 1-3 packages below it, so closures grow with the level like a Spack stack's: the median
image has 17 layers, and 63 images would need more than the default budget of 125 layers
(the largest 269): those get grouped dependency layers. Both ways start from an empty cache
and push to their own repository of a real distribution registry on loopback:

- one run: ``imagesmith build --each`` over the whole stack, then the same run again (every
  blob already there);
- one by one: ``imagesmith build`` of each package, one process each, sharing one cache.

For each: wall time, peak RSS (the largest process), and HTTP requests counted from
``--debug`` (one log line per exchange), by kind. The script checks that every image is
within the budget, and that both ways give the same image for every package whose image
needs no group (an image over the budget alone is planned for its own closure, not the
stack's: see docs/budget.md).

Writes a table to the terminal and JSON to .bench/stack.json (or the path in argv[1]).
The stack has 1,000 packages times ``BENCH_SCALE`` (at least 100), or ``BENCH_STACK_PACKAGES``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from servers import DistributionRegistry, busybox_rootfs  # noqa: E402
from stackgen import write_stack  # noqa: E402

BUDGET = 125
_REQUEST = re.compile(r"imagesmith\.http: (\w+) (\S+) -> ")


def request_kind(method: str, url: str) -> str:
    if "/manifests/" in url:
        return f"{method} manifest"
    if "/blobs/uploads/" in url:
        return "POST mount" if "mount=" in url else f"{method} upload"
    if "/blobs/" in url:
        return f"{method} blob"
    return f"{method} other"


class Run:
    """One imagesmith process: wall seconds, peak RSS (KiB), requests by kind, stdout."""

    def __init__(self, args: list[str], cache: Path) -> None:
        env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
        env.pop("SOURCE_DATE_EPOCH", None)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "imagesmith", "--debug", *args], env=env, stdout=out, stderr=err
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.seconds = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            self.stdout = out.read().decode()
            stderr = err.read().decode()
        if proc.returncode != 0:
            sys.exit(f"bench: imagesmith {' '.join(args[:4])}... failed:\n{stderr[-2000:]}")
        self.rss_kib = usage.ru_maxrss  # Linux: KiB
        self.requests: Counter[str] = Counter(
            request_kind(m.group(1), m.group(2)) for m in map(_REQUEST.search, stderr.splitlines()) if m
        )

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def summary(seconds: float, rss_kib: int, requests: Counter[str]) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "requests": sum(requests.values()),
        "requests_by_kind": dict(sorted(requests.items())),
    }


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/stack.json")
    scaled = max(100, round(1000 * float(os.environ.get("BENCH_SCALE", "1"))))
    count = int(os.environ.get("BENCH_STACK_PACKAGES", scaled))
    with (
        tempfile.TemporaryDirectory(prefix="imagesmith-bench-") as tmp_name,
        DistributionRegistry(workdir=Path(tmp_name, "registry")) as registry,
    ):
        tmp = Path(tmp_name)
        stack = write_stack(tmp / "stack", count)
        host = registry.host
        flags = ["--insecure-registry", host]
        base = f"{host}/base/busybox:1"
        Run([*flags, "import", str(busybox_rootfs(tmp / "rootfs")), "--tag", base], tmp / "cache-import")
        over = sum(1 for name in stack.depends if len(stack.closure(name)) + 2 > BUDGET)
        print(f"stack: {count} packages, {over} images over {BUDGET} layers; registry {host}", flush=True)

        each = [
            *flags,
            "build",
            "--each",
            "--base-image",
            base,
            "--repo",
            f"{host}/batch",
            "--json",
            *map(str, stack.files),
        ]
        batch = Run(each, tmp / "cache-batch")
        results = json.loads(batch.stdout)
        print(f"one run (--each): {batch.seconds:.1f} s, {batch.total} requests", flush=True)
        again = Run(each, tmp / "cache-batch")
        print(f"the same run again: {again.seconds:.1f} s, {again.total} requests", flush=True)

        layer_counts = [1 + len(r["layers"]) for r in results]
        if max(layer_counts) > BUDGET:
            sys.exit(f"bench: an image has {max(layer_counts)} layers, over the budget of {BUDGET}")
        sizes = {layer["digest"]: layer["size"] for r in results for layer in r["layers"]}
        uses = Counter(layer["digest"] for r in results for layer in r["layers"])
        grouped = {layer["digest"] for r in results for layer in r["layers"] if len(layer["packages"]) > 1}
        batch_images = {r["layers"][-1]["package"]: (r["tag"], r["digest"]) for r in results}

        single_seconds, single_rss = 0.0, 0
        single_requests: Counter[str] = Counter()
        same = differ = 0
        for path, name in zip(stack.files, stack.depends, strict=True):
            alone = [*flags, "build", "--base-image", base, "--repo", f"{host}/single", "--json", str(path)]
            one = Run(alone, tmp / "cache-single")
            single_seconds += one.seconds
            single_rss = max(single_rss, one.rss_kib)
            single_requests += one.requests
            result = json.loads(one.stdout)
            if (result["tag"], result["digest"]) == batch_images[name]:
                same += 1
            elif len(stack.closure(name)) + 2 > BUDGET:
                differ += 1  # planned for its own closure: other groups than in the stack's plan
            else:
                sys.exit(f"bench: {name}'s image differs between the two ways but needs no group")
        print(f"one by one: {single_seconds:.1f} s, {sum(single_requests.values())} requests", flush=True)

    distinct_blobs = len(sizes) + len(results) + 1  # layers, one config per image, the base layer
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "packages": count,
        "images": len(results),
        "images_over_the_budget_alone": over,
        "largest_image_layers": max(layer_counts),
        "median_image_layers": sorted(layer_counts)[len(layer_counts) // 2],
        "distinct_layers": len(sizes),
        "group_layers": len(grouped),
        "layers_shared_by_several_images": sum(1 for n in uses.values() if n > 1),
        "layer_bytes": sum(sizes.values()),
        "group_layer_bytes": sum(sizes[d] for d in grouped),
        "distinct_blobs": distinct_blobs,
        "batch": summary(batch.seconds, batch.rss_kib, batch.requests),
        "batch_again": summary(again.seconds, again.rss_kib, again.requests),
        "one_by_one": summary(single_seconds, single_rss, single_requests),
        "identical_images": same,
        "images_planned_differently_alone": differ,
    }
    report["speedup"] = round(single_seconds / batch.seconds, 1)
    report["request_ratio"] = round(report["one_by_one"]["requests"] / report["batch"]["requests"], 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"{'':28}{'seconds':>10}{'peak RSS MiB':>14}{'requests':>10}")
    for label, key in (
        ("build --each (1 run)", "batch"),
        ("the same run again", "batch_again"),
        (f"build x {count} runs", "one_by_one"),
    ):
        row = report[key]
        print(f"{label:28}{row['seconds']:>10}{row['peak_rss_mib']:>14}{row['requests']:>10}")
    ratio = f"{report['speedup']:>9}x{'':14}{report['request_ratio']:>9}x"
    print(f"{'ratio (one by one / --each)':28}{ratio}")
    requests = report["batch"]["requests"]
    print(
        f"\n{len(results)} images, {distinct_blobs} distinct blobs ({len(sizes)} layers, {len(grouped)} "
        f"of them groups); one run: {requests / len(results):.2f} requests per image, "
        f"{requests / distinct_blobs:.2f} per distinct blob"
    )
    print(f"written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
