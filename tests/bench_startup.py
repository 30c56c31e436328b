"""Benchmark (`make bench`): how long the `imagesmith` command takes to start.

Each case runs the installed console script (the one next to this interpreter) in a fresh
process, BENCH_RUNS x 10 times (at least 10), and reports the median and the fastest wall time;
`python -c pass` is the floor every Python program pays. Target: `--version` and `--help`
under 0.15 s, which they meet by not importing the library (imagesmith/cli/).

Writes a table to the terminal and JSON to .bench/startup.json (or the path in argv[1]).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 0.15


def _time(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".bench/startup.json")
    runs = max(10, int(os.environ.get("BENCH_RUNS", "3")) * 10)
    script = str(Path(sys.executable).with_name("imagesmith"))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "imagesmith --version": [script, "--version"],
        "imagesmith --help": [script, "--help"],
        "imagesmith build --help": [script, "build", "--help"],
        "imagesmith completion bash": [script, "completion", "bash"],
        "imagesmith version": [script, "version"],
        "python -c 'import imagesmith.pipeline.run'": [
            sys.executable,
            "-c",
            "import imagesmith.pipeline.run",
        ],
    }
    results = {}
    print(f"{'case':<42} {'median s':>9} {'min s':>7}   ({runs} runs each)")
    for name, argv in cases.items():
        times = _time(argv, runs)
        results[name] = {"median_seconds": statistics.median(times), "min_seconds": min(times), "runs": runs}
        print(f"{name:<42} {statistics.median(times):>9.3f} {min(times):>7.3f}")
    for name in ("imagesmith --version", "imagesmith --help"):
        verdict = "meets" if results[name]["median_seconds"] < TARGET_SECONDS else "MISSES"
        print(f"{name} {verdict} the {TARGET_SECONDS} s target")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target_seconds": TARGET_SECONDS, "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
