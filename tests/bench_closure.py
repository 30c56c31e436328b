"""Benchmark (`make bench`): what the runtime-closure check costs on a realistic base.

The base is this machine's own library directory (``/usr/lib/<multiarch>``, with the merged-/usr
links and ld.so.conf of a Debian root) imported as one layer; the package is a copy of
``/usr/bin`` (every program a Debian machine has, most of them dynamic ELF executables).
Measured, each in a fresh process so the peak RSS is the check's own: the build without the
check, the check reading every layer (cold: no records), the check from the records (warm),
the size of the largest record, and the peak RSS of a cold check.

Writes a table to the terminal and JSON to .bench/closure.json (or the path in argv[1]).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TRIPLET = "x86_64-linux-gnu"

_CHECK = """
import json, resource, sys, time
from pathlib import Path
from imagesmith.store.cache import BlobCache
from imagesmith.pipeline.closure import check_closure
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.transport import RegistryOptions
from imagesmith.transports.locations import resolve_base
from imagesmith.transports.locations import open_source
from imagesmith.oci.model import Platform
cache = BlobCache(Path(sys.argv[1]))
layers = json.loads(sys.argv[3])
with RegistryPool(RegistryOptions.from_env()) as pool, open_source(sys.argv[2], pool) as source:
    image = resolve_base(pool, source, Platform.host()).image
    started = time.perf_counter()
    from imagesmith.oci.digests import Digest
    report = check_closure(image, {Digest.parse(d): "bin" for d in layers}, pool=pool, cache=cache)
    seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "checked": report.checked, "findings": len(report.findings), "summary": report.summary(),
                  "lines": [f.line()[:160] for f in report.findings[:3]]}))
"""


def _rootfs(dest: Path) -> None:
    usr = dest / "usr"
    (usr / "lib").mkdir(parents=True)
    shutil.copytree(f"/usr/lib/{TRIPLET}", usr / "lib" / TRIPLET, symlinks=True)
    (usr / "lib64").mkdir()
    (usr / "lib64/ld-linux-x86-64.so.2").symlink_to(f"/lib/{TRIPLET}/ld-linux-x86-64.so.2")
    for name in ("lib", "lib64", "bin"):
        (dest / name).symlink_to(f"usr/{name}")
    (usr / "bin").mkdir()
    (dest / "etc/ld.so.conf.d").mkdir(parents=True)
    (dest / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (dest / f"etc/ld.so.conf.d/{TRIPLET}.conf").write_text(f"/usr/local/lib/{TRIPLET}\n/lib/{TRIPLET}\n")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".bench/closure.json")
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-closure-") as tmp:
        root = Path(tmp)
        _rootfs(root / "rootfs")
        shutil.copytree("/usr/bin", root / "pkg/bin", symlinks=True)
        (root / "pkg.json").write_text(
            json.dumps({"name": "bin", "version": "1", "prefix": "/opt/bin", "content": "pkg"})
        )
        cache = root / "cache"
        flags = ["-m", "imagesmith", "--cache-dir", str(cache)]
        subprocess.run(
            [python, *flags, "import", str(root / "rootfs"), "--output", f"oci:{root / 'base'}:1"],
            check=True,
            capture_output=True,
        )
        started = time.perf_counter()
        built = subprocess.run(
            [
                python,
                *flags,
                "build",
                "--base-image",
                f"oci:{root / 'base'}:1",
                "--output",
                f"oci:{root / 'out'}:1",
                "--check=off",
                "--json",
                str(root / "pkg.json"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        build_seconds = time.perf_counter() - started
        layers = [layer["digest"] for layer in json.loads(built.stdout)["layers"]]
        runs = []
        for _ in ("cold", "warm"):
            command = [python, "-c", _CHECK, str(cache), f"oci:{root / 'out'}:1", json.dumps(layers)]
            proc = subprocess.run(command, check=True, capture_output=True, text=True)
            runs.append(json.loads(proc.stdout))
        records = sorted((cache / "records").glob("*.json"), key=lambda p: p.stat().st_size)
        files = sum(1 for p in (root / "rootfs").rglob("*"))
        result = {
            "base_files": files,
            "base_bytes": sum(p.lstat().st_size for p in (root / "rootfs").rglob("*") if not p.is_symlink()),
            "package_files": sum(1 for _ in (root / "pkg").rglob("*")),
            "build_without_check_s": round(build_seconds, 2),
            "check_cold_s": round(runs[0]["seconds"], 2),
            "check_warm_s": round(runs[1]["seconds"], 2),
            "check_cold_rss_mib": round(runs[0]["rss_mib"]),
            "check_warm_rss_mib": round(runs[1]["rss_mib"]),
            "largest_record_bytes": records[-1].stat().st_size if records else 0,
            "elf_files_checked": runs[0]["checked"],
            "findings": runs[0]["findings"],
            "summary": runs[0]["summary"],
            "first_findings": runs[0]["lines"],
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:<26} {value}")


if __name__ == "__main__":
    main()
