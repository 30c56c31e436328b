"""A realistic Debian base and a compiled stack for the runtime-closure tests.

No Debian root filesystem exists in the tests and Docker Hub is unreachable, so
:func:`debian_rootfs` builds a small one from this Debian machine's own files, laid out as
Debian 12 lays them out: merged ``/usr`` (``bin``, ``lib``, ``lib64``, ``sbin`` are symlinks
into ``usr``), libraries under the multiarch directory ``/usr/lib/x86_64-linux-gnu`` with
their soname links (``libz.so.1 -> libz.so.1.2.13``), the loader reached through
``/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`` (an absolute
link through a directory link), ``/etc/ld.so.conf`` including ``ld.so.conf.d/*.conf``, and
busybox for a shell. Programs compiled here with gcc run in it (proven by podman).

:func:`compile_stack` compiles a small stack with the host gcc: ``libgreet`` (a shared
library linking libm), ``hello`` (a C program linking libgreet through DT_RUNPATH and libz
from the base, and a C++ program linking libstdc++ from the base and its own helper library
through ``$ORIGIN``), and ``broken`` (a program linking ``libnothere.so.1``, which no layer
and not the base has).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

from servers import BUSYBOX_APPLETS

TRIPLET = "x86_64-linux-gnu"
HOST_LIBS = Path("/usr/lib") / TRIPLET
# The libraries the base ships: (soname, the file it names on this machine).
BASE_LIBS = ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1")


def available() -> str | None:
    """Why the kit cannot run here (None when it can): an x86_64 Debian with gcc and g++."""
    if platform.machine() != "x86_64":
        return f"the Debian-base kit copies this machine's x86_64 libraries; this is {platform.machine()}"
    for tool in ("gcc", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install gcc g++"
    missing = [name for name in BASE_LIBS if not (HOST_LIBS / name).exists()]
    if missing:
        return f"{', '.join(missing)} not in {HOST_LIBS}: apt-get install libc6 libstdc++6 zlib1g"
    return None


def debian_rootfs(dest: Path) -> Path:
    """A Debian-12-like root filesystem at ``dest`` (see the module docstring)."""
    usr = dest / "usr"
    libdir = usr / "lib" / TRIPLET
    for sub in (
        usr / "bin",
        usr / "sbin",
        libdir,
        usr / "lib64",
        dest / "etc/ld.so.conf.d",
        dest / "tmp",
        dest / "root",
    ):
        sub.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (dest / name).symlink_to(f"usr/{name}")
    for soname in BASE_LIBS:
        source = HOST_LIBS / soname
        real = source.resolve()
        shutil.copyfile(real, libdir / real.name)
        (libdir / real.name).chmod(0o755)
        if real.name != soname:
            (libdir / soname).symlink_to(real.name)
    (usr / "lib64/ld-linux-x86-64.so.2").symlink_to(f"/lib/{TRIPLET}/ld-linux-x86-64.so.2")
    shutil.copyfile("/bin/busybox", usr / "bin/busybox")
    (usr / "bin/busybox").chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        (usr / "bin" / applet).symlink_to("busybox")
    (dest / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n\n")
    (dest / "etc/ld.so.conf.d/libc.conf").write_text("# libc default configuration\n/usr/local/lib\n")
    (dest / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text(
        f"# Multiarch support\n/usr/local/lib/{TRIPLET}\n/lib/{TRIPLET}\n/usr/lib/{TRIPLET}\n"
    )
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    (dest / "tmp").chmod(0o1777)
    return dest


def _cc(compiler: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run([compiler, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{compiler} {' '.join(args)} failed: {proc.stderr[-2000:]}")


def _package(path: Path, name: str, prefix: str, content: str, depends: list[str]) -> Path:
    path.write_text(
        json.dumps({"name": name, "version": "1.0", "prefix": prefix, "content": content, "depends": depends})
    )
    return path


def compile_stack(root: Path) -> dict[str, Path]:
    """Compile the stack under ``root``; returns the package files by name (``libgreet``,
    ``hello``, ``broken``), whose prefixes are ``/opt/stack/NAME-1.0``."""
    src = root / "src"
    src.mkdir(parents=True)
    greet = root / "libgreet"
    (greet / "lib").mkdir(parents=True)
    (src / "greet.c").write_text(
        "#include <math.h>\n#include <stdio.h>\n"
        'void greet(const char *who) { printf("hello %s from libgreet (%.0f)\\n", who, sqrt(1764.0)); }\n'
    )
    _cc(
        "gcc",
        "-shared",
        "-fPIC",
        "-Wl,-soname,libgreet.so.1",
        "-o",
        str(greet / "lib/libgreet.so.1.0"),
        "greet.c",
        "-lm",
        cwd=src,
    )
    (greet / "lib/libgreet.so.1").symlink_to("libgreet.so.1.0")
    (greet / "lib/libgreet.so").symlink_to("libgreet.so.1")

    hello = root / "hello"
    (hello / "bin").mkdir(parents=True)
    (hello / "lib").mkdir(parents=True)
    (src / "hello.c").write_text(
        "#include <zlib.h>\n#include <stdio.h>\nvoid greet(const char *);\n"
        'int main(void) { greet("hello"); printf("zlib %s\\n", zlibVersion()); return 0; }\n'
    )
    (src / "zlib.h").write_text("const char *zlibVersion(void);\n")
    (src / "libz.so").symlink_to(HOST_LIBS / "libz.so.1")
    _cc(
        "gcc",
        "-o",
        str(hello / "bin/hello"),
        "hello.c",
        f"-L{greet / 'lib'}",
        "-lgreet",
        f"-L{src}",
        "-lz",
        "-Wl,--enable-new-dtags,-rpath,/opt/stack/libgreet-1.0/lib",
        "-I.",
        cwd=src,
    )
    (src / "helper.cc").write_text('#include <string>\nstd::string helper() { return "helper"; }\n')
    _cc(
        "g++",
        "-shared",
        "-fPIC",
        "-Wl,-soname,libhelper.so",
        "-o",
        str(hello / "lib/libhelper.so"),
        "helper.cc",
        cwd=src,
    )
    (src / "hellocc.cc").write_text(
        "#include <iostream>\n#include <string>\nstd::string helper();\n"
        'int main() { std::cout << "hellocc with " << helper() << std::endl; return 0; }\n'
    )
    # DT_RPATH (old dtags) with $ORIGIN: the helper is found next to the program's lib dir.
    _cc(
        "g++",
        "-o",
        str(hello / "bin/hellocc"),
        "hellocc.cc",
        f"-L{hello / 'lib'}",
        "-lhelper",
        "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib",
        cwd=src,
    )

    broken = root / "broken"
    (broken / "bin").mkdir(parents=True)
    (src / "nothere.c").write_text("int nothere(void) { return 1; }\n")
    _cc(
        "gcc",
        "-shared",
        "-fPIC",
        "-Wl,-soname,libnothere.so.1",
        "-o",
        str(src / "libnothere.so"),
        "nothere.c",
        cwd=src,
    )
    (src / "broken.c").write_text("int nothere(void);\nint main(void) { return nothere(); }\n")
    _cc("gcc", "-o", str(broken / "bin/broken"), "broken.c", f"-L{src}", "-lnothere", cwd=src)

    return {
        "libgreet": _package(root / "libgreet.json", "libgreet", "/opt/stack/libgreet-1.0", "libgreet", []),
        "hello": _package(root / "hello.json", "hello", "/opt/stack/hello-1.0", "hello", ["libgreet.json"]),
        "broken": _package(root / "broken.json", "broken", "/opt/stack/broken-1.0", "broken", ["hello.json"]),
    }
