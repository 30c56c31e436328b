"""Benchmark (`make bench`): a 100-package stack as 100 images, in one run vs one by one.

The stack is generated (not downloaded): 10 core libraries, 30 mid-level packages each
depending on 1-3 core ones, 60 applications each depending on 1-3 mid-level ones. Both ways
start from an empty cache and push to their own repository of a real distribution registry
on loopback. Requests are counted from `--debug` (one log line per HTTP exchange), the same
way for both. The script checks that both ways produce the same tags and digests.

Writes a table to the terminal and JSON to .bench/stack.json (or the path in argv[1]).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from servers import DistributionRegistry, busybox_rootfs  # noqa: E402


def make_stack(root: Path, seed: int = 7) -> list[Path]:
    """Write 100 package files with content; return them (every one, dependencies first)."""
    rng = random.Random(seed)
    files: list[Path] = []

    def package(name: str, depends: list[Path]) -> Path:
        prefix_dir = root / "content" / name
        for sub in ("bin", "lib", "share/doc"):
            (prefix_dir / sub).mkdir(parents=True, exist_ok=True)
        script = prefix_dir / "bin" / name
        script.write_text(f"#!/bin/sh\necho {name}\n")
        script.chmod(0o755)
        (prefix_dir / "lib" / f"lib{name}.so").write_bytes(rng.randbytes(4096))
        (prefix_dir / "share/doc" / "README").write_text(f"{name}\n" * 200)
        path = root / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "1.0",
                    "prefix": f"/opt/stack/{name}-1.0",
                    "content": f"content/{name}",
                    "depends": [d.name for d in depends],
                }
            )
        )
        files.append(path)
        return path

    core = [package(f"core{i}", []) for i in range(10)]
    mid = [package(f"mid{i}", rng.sample(core, rng.randint(1, 3))) for i in range(30)]
    for i in range(60):
        package(f"app{i}", rng.sample(mid, rng.randint(1, 3)))
    return files


def imagesmith(*args: str, cache: Path) -> tuple[float, int, str]:
    """Run the CLI; returns (seconds, HTTP requests, stdout)."""
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
    env.pop("SOURCE_DATE_EPOCH", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "imagesmith", "--debug", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: imagesmith {' '.join(args[:3])}... failed:\n{done.stderr[-2000:]}")
    requests = sum(1 for line in done.stderr.splitlines() if "imagesmith.http:" in line and " -> " in line)
    return elapsed, requests, done.stdout


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/stack.json")
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-") as tmp_name, \
            DistributionRegistry(workdir=Path(tmp_name, "registry")) as registry:  # fmt: skip
        tmp = Path(tmp_name)
        files = make_stack(tmp / "stack")
        host = registry.host
        base = f"{host}/base/busybox:1"
        imagesmith(
            "--insecure-registry",
            host,
            "import",
            str(busybox_rootfs(tmp / "rootfs")),
            "--tag",
            base,
            cache=tmp / "cache-import",
        )
        print(f"stack: {len(files)} packages; registry {host}", flush=True)

        batch_time, batch_requests, out = imagesmith(
            "--insecure-registry",
            host,
            "build",
            "--each",
            "--base-image",
            base,
            "--repo",
            f"{host}/batch",
            "--json",
            *map(str, files),
            cache=tmp / "cache-batch",
        )
        batch = {(r["tag"], r["digest"]) for r in json.loads(out)}
        print(f"one run (--each): {batch_time:.1f} s, {batch_requests} requests", flush=True)

        single_time = 0.0
        single_requests = 0
        singles = set()
        for path in files:
            seconds, requests, out = imagesmith(
                "--insecure-registry",
                host,
                "build",
                "--base-image",
                base,
                "--repo",
                f"{host}/single",
                "--json",
                str(path),
                cache=tmp / "cache-single",
            )
            single_time += seconds
            single_requests += requests
            result = json.loads(out)
            singles.add((result["tag"], result["digest"]))
        print(f"one by one:       {single_time:.1f} s, {single_requests} requests", flush=True)
        if batch != singles:
            sys.exit("bench: the two ways produced different images")

    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "packages": len(files),
        "images": len(batch),
        "batch": {"seconds": round(batch_time, 2), "requests": batch_requests},
        "one_by_one": {"seconds": round(single_time, 2), "requests": single_requests},
        "speedup": round(single_time / batch_time, 1),
        "request_ratio": round(single_requests / batch_requests, 1),
        "identical_images": True,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"{'':24}{'seconds':>10}{'requests':>10}")
    print(f"{'build --each (1 run)':24}{batch_time:>10.1f}{batch_requests:>10}")
    print(f"{'build x 100 runs':24}{single_time:>10.1f}{single_requests:>10}")
    print(f"{'ratio':24}{report['speedup']:>9}x{report['request_ratio']:>9}x")
    print(f"\nwritten to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
