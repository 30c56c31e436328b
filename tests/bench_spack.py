"""Benchmark (`make bench`): a cold push of a Spack build-cache tarball, imagesmith vs Spack.

One Spack package holds ~1 GiB x ``BENCH_SCALE`` of software-like content (the ``software``
generator of tests/bench_layers.py, written into the install prefix of the kit's ``kit-data``,
installed by the real Spack 1.2 of the kit in ../shared/spack into an install tree of the
bench's own). Spack pushes it once to a layout-3 build cache on disk (untimed: that is the
input). Then, each run to a new repository of a TLS registry on loopback (Spack pushes to
registries over https only), on a busybox base there, with nothing in any cache:

* ``imagesmith``: ``imagesmith build --base-image BASE --repo REPO <spec.manifest.json>``, its
  blob cache empty. The tarball is the layer as is: one read of the file (hashed, gunzipped,
  every member checked, uploaded meanwhile), no compression;
* ``imagesmith (prefix)``: the same package from its install prefix (archived, gzipped and
  given Spack's relocation record), for comparison;
* ``spack``: ``spack buildcache push --unsigned --only package --base-image BASE`` to an OCI
  mirror of that repository (Spack archives and gzips the prefix, uploads it, copies the base);
* ``registry floor``: the tarball uploaded alone, one monolithic PUT through
  ``RegistryClient.upload_blob``: the registry's own time to accept those bytes.

Spack's figures include its start-up (loading its package repository), reported on its own as
``spack start-up`` (``spack -C SCOPE find /HASH``). Every figure is the median of
``BENCH_RUNS`` (default 3) runs. The script fails unless imagesmith's layer has Spack's
checksum as digest. Writes a table and JSON to .bench/spack.json (or the path in argv[1]).
Needs the kit (``IMAGESMITH_SPACK_KIT`` or ../shared/spack) and ~5 GiB x scale of temp space.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_layers  # noqa: E402
from bench_layers import MiB, make_software  # noqa: E402
from servers import DistributionRegistry, busybox_rootfs  # noqa: E402
from spackkit import SpackKit, kit_available, kit_directory, kit_hint  # noqa: E402

from imagesmith.oci.digests import Digest  # noqa: E402
from imagesmith.registry.client import RegistryClient  # noqa: E402
from imagesmith.registry.transport import RegistryOptions  # noqa: E402

SCALE = bench_layers.SCALE
RUNS = bench_layers.RUNS
PACKAGE = "kit-data"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd``; (seconds, stdout); a failure stops the bench with its output."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:6])}... exit {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


class Scope:
    """The kit's Spack with an install tree, download cache and mirrors of the bench's own."""

    def __init__(self, kit: SpackKit, root: Path, ca: Path) -> None:
        self.kit = kit
        self.dir = root / "scope"
        self.dir.mkdir(parents=True)
        (self.dir / "config.yaml").write_text(
            f"config:\n  install_tree:\n    root: {root / 'tree'}\n  source_cache: {root / 'downloads'}\n"
        )
        (self.dir / "mirrors.yaml").write_text("mirrors:: {}\n")
        self.env = kit.environ(SSL_CERT_FILE=str(ca))

    def command(self, *args: str) -> list[str]:
        return [str(self.kit.bin), "-C", str(self.dir), *args]

    def run(self, *args: str) -> tuple[float, str]:
        return timed(self.command(*args), self.env)


def imagesmith(args: list[str], cache: Path, ca: Path) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
    env.pop("SOURCE_DATE_EPOCH", None)
    seconds, out = timed([sys.executable, "-m", "imagesmith", "--ca-cert", str(ca), *args, "--json"], env)
    result: dict[str, object] = json.loads(out)
    return seconds, result


def registry_floor(host: str, ca: Path, tarball: Path, repo: str) -> float:
    """The tarball uploaded alone, in one monolithic PUT (seconds)."""
    size = tarball.stat().st_size
    digest = _digest_of(tarball)
    options = RegistryOptions(ca_cert=ca, chunk_size=size + 1, timeout=600)
    with RegistryClient(host, options) as client:
        start = time.perf_counter()
        client.upload_blob(repo, digest, size, lambda: tarball.open("rb"))
        return time.perf_counter() - start


def _digest_of(path: Path) -> Digest:
    from imagesmith.oci.digests import sha256_of_file

    with path.open("rb") as f:
        return sha256_of_file(f)[0]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/spack.json")
    if not kit_available():
        sys.exit(f"bench: {kit_hint()}")
    tmp_parent = os.environ.get("BENCH_TMPDIR")
    need = int(1024 * MiB * SCALE * 5)
    free = shutil.disk_usage(tmp_parent or tempfile.gettempdir()).free
    if free < need:
        sys.exit(f"bench: needs ~{need / 2**30:.1f} GiB free in the temp dir, has {free / 2**30:.1f}")
    t0 = time.perf_counter()
    kit = SpackKit(kit_directory("1.2", Path(tempfile.gettempdir())), "1.2")
    with (
        tempfile.TemporaryDirectory(prefix="imagesmith-bench-spack-", dir=tmp_parent) as tmp_name,
        DistributionRegistry(tls=True, workdir=Path(tmp_name, "registry")) as registry,
    ):
        tmp = Path(tmp_name)
        host, ca = registry.host, registry.ca_cert
        assert ca is not None
        base = f"{host}/base/busybox:1"
        imagesmith(["import", str(busybox_rootfs(tmp / "rootfs")), "--tag", base], tmp / "cache-base", ca)
        scope = Scope(kit, tmp / "spack", ca)
        print(f"installing {PACKAGE} with Spack {kit.version} into the bench's own tree", flush=True)
        scope.run("install", PACKAGE)
        _, out = scope.run("find", "--format", "{hash} {prefix}", PACKAGE)
        dag_hash, prefix_text = out.split()
        prefix = Path(prefix_text)
        start = time.perf_counter()
        make_software(prefix / "share" / "bench", int(1024 * MiB * SCALE))
        content = sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file() and not f.is_symlink())
        print(
            f"content: {content / MiB:.0f} MiB in {prefix} "
            f"(generated in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        fs = tmp / "fscache"
        seconds, _ = scope.run(
            "buildcache", "push", "--unsigned", "--only", "package", str(fs), f"/{dag_hash}"
        )
        print(f"spack buildcache push to a layout-3 directory (the input): {seconds:.1f} s", flush=True)
        manifest = next((fs / "v3" / "manifests" / "spec" / PACKAGE).glob("*.spec.manifest.json"))
        records = json.loads(manifest.read_text())["data"]
        (record,) = [r for r in records if r["mediaType"].startswith("application/vnd.spack.install")]
        checksum = f"sha256:{record['checksum']}"
        tarball = fs / "blobs" / "sha256" / record["checksum"][:2] / record["checksum"]
        tarball_bytes = tarball.stat().st_size
        print(f"tarball: {tarball_bytes / MiB:.0f} MiB ({checksum[:19]}...)", flush=True)

        figures: dict[str, list[float]] = {
            "imagesmith": [],
            "imagesmith (prefix)": [],
            "spack": [],
            "registry floor": [],
            "spack start-up": [],
        }
        errors: list[str] = []
        for i in range(RUNS):
            seconds, result = imagesmith(
                ["build", "--base-image", base, "--repo", f"{host}/bench/ims-{i}", str(manifest)],
                tmp / f"cache-{i}",
                ca,
            )
            figures["imagesmith"].append(seconds)
            layers = result["layers"]
            assert isinstance(layers, list)
            if layers[-1]["digest"] != checksum:
                errors.append(f"imagesmith's layer is {layers[-1]['digest']}, Spack's checksum {checksum}")
            seconds, _ = imagesmith(
                ["build", "--base-image", base, "--repo", f"{host}/bench/prefix-{i}", str(prefix)],
                tmp / f"cache-prefix-{i}",
                ca,
            )
            figures["imagesmith (prefix)"].append(seconds)
            shutil.rmtree(tmp / f"cache-{i}", ignore_errors=True)
            shutil.rmtree(tmp / f"cache-prefix-{i}", ignore_errors=True)
            (scope.dir / "mirrors.yaml").write_text(
                f"mirrors::\n  bench:\n    url: oci://{host}/bench/spack-{i}\n    signed: false\n"
            )
            seconds, _ = scope.run(
                "buildcache",
                "push",
                "--unsigned",
                "--only",
                "package",
                "--base-image",
                base,
                "bench",
                f"/{dag_hash}",
            )
            figures["spack"].append(seconds)
            figures["registry floor"].append(registry_floor(host, ca, tarball, f"bench/floor-{i}"))
            figures["spack start-up"].append(scope.run("find", f"/{dag_hash}")[0])
            print(
                "  run {}: {}".format(i + 1, ", ".join(f"{k} {v[-1]:.1f} s" for k, v in figures.items())),
                flush=True,
            )

    total = time.perf_counter() - t0
    ims = median(figures["imagesmith"])
    report: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "spack": kit.version,
        },
        "scale": SCALE,
        "runs": RUNS,
        "content_bytes": content,
        "tarball_bytes": tarball_bytes,
        "same_digest_as_spack": not errors,
        "seconds": {k: round(median(v), 2) for k, v in figures.items()},
        "runs_seconds": {k: [round(x, 2) for x in v] for k, v in figures.items()},
        "vs_imagesmith": {k: round(median(v) / ims, 2) for k, v in figures.items()},
        "errors": errors,
        "total_seconds": round(total, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nSpack {kit.version}; content {content / MiB:.0f} MiB, tarball {tarball_bytes / MiB:.0f} MiB; "
        f"scale {SCALE}, {RUNS} run(s), medians"
    )
    print(f"{'cold push':22}{'seconds':>9}{'MiB/s':>9}{'x imagesmith':>14}")
    for name, values in figures.items():
        seconds = median(values)
        rate = tarball_bytes / MiB / seconds if name != "spack start-up" else float("nan")
        print(f"{name:22}{seconds:>9.2f}{rate:>9.1f}{seconds / ims:>13.2f}x")
    print(f"\ntotal {total:.0f} s; written to {out_path}")
    if errors:
        print("bench: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
