"""The typed API reaches users: a downstream project checked by ``mypy --strict`` sees
imagesmith's own types (the ``py.typed`` marker), not ``Any``.

The probe is checked from a directory outside the repository, so mypy finds imagesmith the way
a user's project does: as an installed package (site-packages, or the editable install's path).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imagesmith

PROBE = """\
import imagesmith


def use(packages: list[imagesmith.Package]) -> None:
    result = imagesmith.build("registry.example/base:1", packages, repo="registry.example/stack")
    reveal_type(result)
    wrong: int = result.reference
"""


def test_the_package_carries_the_py_typed_marker() -> None:
    assert (Path(imagesmith.__file__).parent / "py.typed").is_file()


def _strict_mypy(directory: Path, probe: str) -> tuple[int, str]:
    """``mypy --strict`` on ``probe`` in ``directory`` (outside the repository), as a user runs it."""
    (directory / "probe.py").write_text(probe)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "probe.py"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr


def test_a_downstream_strict_mypy_sees_imagesmith_types(tmp_path: Path) -> None:
    returncode, out = _strict_mypy(tmp_path, PROBE)
    assert "missing library stubs or py.typed marker" not in out, out
    assert 'Revealed type is "imagesmith.' in out and 'BuildResult"' in out, out
    # A wrong use is an error mypy reports: the type is real, not Any.
    assert "Incompatible types in assignment" in out, out
    assert returncode == 1, out


SESSION_PROBE = """\
import imagesmith


def use(packages: list[imagesmith.Package]) -> None:
    with imagesmith.Session(cache="/tmp/cache") as session:
        result = session.build("registry.example/base:1", packages, repo="registry.example/stack")
        reveal_type(result)
        session.build("registry.example/base:1", packages, repo=1)
"""


def test_a_session_method_has_the_operation_s_signature(tmp_path: Path) -> None:
    """``Session.build`` is typed as ``imagesmith.build`` is: its result, and its arguments."""
    returncode, out = _strict_mypy(tmp_path, SESSION_PROBE)
    assert 'Revealed type is "imagesmith.' in out and 'BuildResult"' in out, out
    assert 'Argument "repo"' in out and "incompatible type" in out, out
    assert returncode == 1, out
