"""podman and skopeo that verify sigstore signatures, with a policy of the test's own.

Debian 12's podman 4.3.1 and skopeo 1.9.3 are built with sigstore verification disabled (a
Debian-local patch: every pull under a ``sigstoreSigned`` policy fails with "Debian-local change:
sigstore disabled"). ``make tests/.data/trixie/bin/podman`` fetches Debian 13's podman 5.4 and
skopeo 1.18 (upstream containers/image sigstore code) with a private apt configuration and points
them at Debian 13's own glibc with patchelf; :class:`Verifier` runs them isolated from the host's
configuration: its own storage, registries.conf, ``policy.json`` and ``registries.d`` (with
``use-sigstore-attachments: true`` for the test registry).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tests" / ".data" / "trixie" / "bin"
TOOLS_TARGET = "tests/.data/trixie/bin/podman"


def available() -> bool:
    return (TOOLS / "podman").is_file() and (TOOLS / "skopeo").is_file()


class Verifier:
    """A podman and a skopeo whose policy requires a sigstore signature by ``public_key`` for
    every image of ``registry`` (plain http), and rejects everything else."""

    def __init__(self, workdir: Path, registry: str, public_key: Path) -> None:
        self.workdir = workdir
        self.registry = registry
        d = workdir
        (d / "home/.config/containers/registries.d").mkdir(parents=True)
        self.registries_d = d / "home/.config/containers/registries.d"
        (self.registries_d / "test.yaml").write_text(
            f"docker:\n  {registry}:\n    use-sigstore-attachments: true\n"
        )
        self.policy = d / "home/.config/containers/policy.json"
        self.policy.write_text(
            json.dumps(
                {
                    "default": [{"type": "reject"}],
                    "transports": {
                        "docker": {
                            registry: [
                                {
                                    "type": "sigstoreSigned",
                                    "keyPath": str(public_key),
                                    "signedIdentity": {"type": "matchRepoDigestOrExact"},
                                }
                            ]
                        }
                    },
                },
                indent=2,
            )
        )
        (d / "registries.conf").write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry}"\ninsecure = true\n'
        )
        (d / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{d / "root"}"\nrunroot = "{d / "runroot"}"\n'
        )
        (d / "containers.conf").write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')

    def _env(self) -> dict[str, str]:
        d = self.workdir
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(d / "home"),  # policy.json and registries.d are read from there
            "CONTAINERS_REGISTRIES_CONF": str(d / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(d / "storage.conf"),
            "CONTAINERS_CONF": str(d / "containers.conf"),
            "PODMAN_IGNORE_CGROUPSV1_WARNING": "1",
            "TMPDIR": str(d),
        }

    def podman_pull(self, reference: str) -> subprocess.CompletedProcess[str]:
        d = self.workdir
        return subprocess.run(
            [
                str(TOOLS / "podman"),
                "--root",
                str(d / "root"),
                "--runroot",
                str(d / "runroot"),
                "--storage-driver",
                "vfs",
                "pull",
                reference,
            ],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def skopeo_copy(self, reference: str, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(TOOLS / "skopeo"),
                "--policy",
                str(self.policy),
                "--registries.d",
                str(self.registries_d),
                "copy",
                "--src-tls-verify=false",
                f"docker://{reference}",
                f"dir:{self.workdir / name}",
            ],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
