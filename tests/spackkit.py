"""Real Spack for the tests: the offline kit in ``../shared/spack`` (see its README.md).

``SpackKit(dir, version)`` runs the kit's ``setup.sh`` once into ``dir`` (idempotent: a second
run takes about a second) and then runs ``spack`` commands with exactly the environment the
setup printed, never the host's. Locally the instances live in ``tests/.data/spack-<version>``
so a rerun reuses them; CI starts from nothing. No mock stands in for Spack anywhere.

The kit's location: ``IMAGESMITH_SPACK_KIT``, else ``../shared/spack`` beside the checkout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = Path(os.environ.get("IMAGESMITH_SPACK_KIT") or ROOT.parent / "shared" / "spack")
DATA = ROOT / "tests" / ".data"
VERSIONS = ("1.2", "0.23")


def kit_available() -> bool:
    return (KIT / "setup.sh").is_file()


def kit_hint() -> str:
    return (
        f"the Spack kit is not at {KIT}: set IMAGESMITH_SPACK_KIT to the folder holding setup.sh "
        "(../shared/spack beside the checkout)"
    )


class SpackError(RuntimeError):
    """A spack command failed: the message holds the command and the tail of its output."""


class SpackKit:
    """One Spack instance of the kit (``version`` 1.2 or 0.23) set up under ``directory``."""

    def __init__(self, directory: Path, version: str = "1.2") -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown Spack kit version {version!r}")
        self.version = version
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["bash", str(KIT / "setup.sh"), str(directory), version],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if proc.returncode != 0:
            raise SpackError(f"setup.sh {directory} {version} failed:\n{proc.stderr[-3000:]}")
        self.env: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                words = shlex.split(value.replace('"$PATH"', ""))
                self.env[name] = words[0] if words else ""
        path = self.env.pop("PATH", "").rstrip(":")
        self.root = Path(self.env["SPACK_ROOT"])
        self.bin = self.root / "bin" / "spack"
        self.path = f"{path}:{os.environ.get('PATH', '/usr/bin:/bin')}" if path else os.environ["PATH"]

    def environ(self, **extra: str) -> dict[str, str]:
        """The environment spack runs in: the host's minus Spack variables, plus the kit's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPACK_")}
        env.update(self.env)
        env["PATH"] = self.path
        env.update(extra)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``spack ARGS`` and return the finished process (stdout and stderr as text)."""
        proc = subprocess.run(
            [str(self.bin), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=self.environ(**(env or {})),
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise SpackError(
                f"spack {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def location(self, spec: str) -> Path:
        """The install prefix of an installed ``spec`` (``spack location -i``)."""
        return Path(self.run("location", "-i", spec).stdout.strip())

    def installed(self, spec: str) -> bool:
        return self.run("find", spec, check=False).returncode == 0


def kit_directory(version: str, scratch: Path) -> Path:
    """Where the tests keep a Spack instance: under tests/.data locally (reused between runs),
    under the session's scratch directory in CI (a fresh machine has nothing to reuse)."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        return scratch / f"spack-{version}"
    return DATA / f"spack-{version}"


if __name__ == "__main__":  # pragma: no cover - a manual check: python tests/spackkit.py 1.2
    version = sys.argv[1] if len(sys.argv) > 1 else "1.2"
    kit = SpackKit(kit_directory(version, Path("/tmp")), version)
    print(kit.run("--version").stdout.strip())
