"""`make demo`: the main job end to end, on the embedded registry.

1. start `imagesmith serve` (an OCI registry backed by OCI layouts) on a free loopback port;
2. `imagesmith import` a busybox root filesystem as the base image;
3. `imagesmith build` the example stack (examples/stack: hello depends on libgreet);
4. `imagesmith inspect` the result;
5. `docker run` it (the docker CLI against podman's Docker-compatible API) when podman exists.

Every step is the real CLI, printed before it runs. To point the same commands at a real
registry, drop --insecure-registry and use your repository (see README.md).
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import Podman, busybox_rootfs  # noqa: E402


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str, capture: bool = False) -> str:
    print("$ " + shlex.join(args), flush=True)
    result = subprocess.run(args, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        sys.exit(f"demo: command failed with exit code {result.returncode}")
    return result.stdout or ""


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Run `imagesmith serve` on a free port; yield its address."""
    command = [sys.executable, "-m", "imagesmith", "serve", "--root", str(root), "--addr", "127.0.0.1:0"]
    print("$ " + shlex.join(command) + " &", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    print(line, end="", flush=True)
    if not line.startswith("Serving "):
        proc.kill()
        sys.exit("demo: imagesmith serve did not start")
    try:
        yield line.split("http://", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def main() -> int:
    imagesmith = [sys.executable, "-m", "imagesmith"]
    with tempfile.TemporaryDirectory(prefix="imagesmith-demo-") as tmp, serve(Path(tmp, "registry")) as host:
        insecure = ["--insecure-registry", host]
        step(
            f"the embedded registry listens on {host}; its repositories are OCI layouts under {tmp}/registry"
        )

        step("import a busybox root filesystem as the base image")
        rootfs = busybox_rootfs(Path(tmp, "rootfs"))
        base = f"{host}/demo/busybox:latest"
        run(*imagesmith, *insecure, "import", str(rootfs), "--tag", base)

        step("build the example stack (hello depends on libgreet) onto it")
        out = run(
            *imagesmith,
            *insecure,
            "build",
            "--base-image",
            base,
            "--repo",
            f"{host}/demo/stack",
            "--json",
            str(HERE / "stack" / "hello.json"),
            capture=True,
        )
        result = json.loads(out)
        print(json.dumps(result, indent=2))
        reference = result["reference"]

        step("inspect what was pushed")
        run(*imagesmith, *insecure, "inspect", reference)

        step("build again: same inputs, same tag, same digest")
        again = json.loads(
            run(
                *imagesmith,
                *insecure,
                "build",
                "--base-image",
                base,
                "--repo",
                f"{host}/demo/stack",
                "--json",
                str(HERE / "stack" / "hello.json"),
                capture=True,
            )
        )
        same = again["digest"] == result["digest"] and again["tag"] == result["tag"]
        print(f"digest {again['digest']} -> {'identical' if same else 'DIFFERENT'}")
        if not same:
            return 1

        step("unpack only the package layers, as a consumer of the stack would")
        rootfs = Path(tmp, "unpacked")
        run(*imagesmith, *insecure, "pull", reference, "--rootfs", str(rootfs), "--packages-only")
        for path in sorted(p for p in rootfs.rglob("*") if p.is_file()):
            print(f"  /{path.relative_to(rootfs)}")

        if shutil.which("podman") and shutil.which("docker"):
            step("docker run the image (docker CLI -> podman's Docker-compatible API)")
            with Podman(workdir=Path(tmp, "podman")) as podman:
                podman.add_insecure_registry(host)
                podman.start_service()
                print(f"$ DOCKER_HOST={podman.docker_host} docker run --rm {reference} hello")
                ran = podman.docker("run", "--rm", reference, "hello")
                print(ran.stdout, end="")
                if ran.returncode != 0:
                    print(ran.stderr, file=sys.stderr)
                    return 1
        else:
            step("podman or docker is not installed: skipping docker run")
        step(f"done: {reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
