"""Start-up of the CLI: `--help`, `--version` and `completion` build the parser without loading
the library (requests, cryptography, jinja2, the pipeline); `version` names the codecs that
decide layer digests; the bash completion script loads in a real bash and completes.

Timing is measured by `make bench` (tests/bench_startup.py), not asserted here: what is
asserted is which modules a fresh interpreter imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_support import cli, ok

from imagesmith.artifacts import sbom, signing
from imagesmith.cli import args as cli_module  # the parser's defaults live there
from imagesmith.generate import ci
from imagesmith.ops import repoindex
from imagesmith.pipeline import budget, closure
from imagesmith.registry import server

HEAVY = ("imagesmith.pipeline.run", "imagesmith.registry.client", "requests", "cryptography", "jinja2")


def _modules_after(*argv: str) -> set[str]:
    """The modules a fresh interpreter holds after running the CLI with ``argv``."""
    code = (
        "import sys, contextlib, io\n"
        "from imagesmith.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({list(argv)!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('\\n'.join(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [("--version",), ("--help",), ("build", "--help"), ("completion", "bash"), ("index", "list", "-h")],
)
def test_help_version_and_completion_do_not_load_the_library(argv: tuple[str, ...]) -> None:
    loaded = _modules_after(*argv)
    assert "imagesmith.cli" in loaded
    assert not [m for m in HEAVY if m in loaded]


def test_a_command_still_loads_what_it_needs() -> None:
    # The lazy imports are real imports: a command that runs gets the library.
    assert "imagesmith.pipeline.run" in _modules_after("build", "--base-image", "x", "/nonexistent.json")


def test_the_parser_defaults_are_the_library_constants() -> None:
    assert cli_module.DEFAULT_MAX_LAYERS == budget.DEFAULT_MAX_LAYERS
    assert cli_module.CHECK_MODES == closure.CHECK_MODES
    assert cli_module.SBOM_FORMATS == sbom.SBOM_FORMATS
    assert cli_module.KEY_PASSWORD_ENV == signing.KEY_PASSWORD_ENV
    assert cli_module.DEFAULT_IDLE_TIMEOUT == server.DEFAULT_IDLE_TIMEOUT
    assert cli_module.INDEX_TAG == repoindex.INDEX_TAG
    assert cli_module.SPACK_INDEX_TAG == repoindex.SPACK_INDEX_TAG
    assert (cli_module.ENGINES, cli_module.DEFAULT_INSTALL) == (ci.ENGINES, ci.DEFAULT_INSTALL)


def test_import_imagesmith_is_lazy_but_complete() -> None:
    code = (
        "import sys, imagesmith; print('imagesmith.pipeline.run' in sys.modules, imagesmith.build.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "imagesmith.pipeline.run"]
    import imagesmith

    assert all(hasattr(imagesmith, name) for name in imagesmith.__all__)
    assert set(imagesmith.__all__) <= set(dir(imagesmith))


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_version_names_the_gzip_codec(backend: str) -> None:
    pytest.importorskip(backend)
    out = ok("version", env={"IMAGESMITH_GZIP": backend})
    lines = out.splitlines()
    assert lines[0].startswith("imagesmith ") and "Python " in lines[0]
    assert lines[1].startswith(f"gzip codec: gzip-6/{backend}-") and f"({backend};" in lines[1]
    assert lines[2].startswith("zstd codec: zstd-3/libzstd-")
    data = json.loads(ok("version", "--json", env={"IMAGESMITH_GZIP": backend}))
    assert data["gzip"]["backend"] == backend and data["gzip"]["codec"].startswith(f"gzip-6/{backend}-")


def test_version_refuses_an_unknown_gzip_backend() -> None:
    code, _, err = cli("version", env={"IMAGESMITH_GZIP": "pigz"})
    assert code == 1 and err == "imagesmith: error: IMAGESMITH_GZIP='pigz': use isal or zlib\n"


def _complete(*words: str) -> list[str]:
    """What bash completes for the command line ``words`` (the last is being typed)."""
    script = ok("completion", "bash")
    driver = (
        'source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); _imagesmith; '
        'complete -p imagesmith >&2; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", driver, "bash", *words], input=script, capture_output=True, text=True, check=True
    )
    assert done.stderr.strip() == "complete -o filenames -F _imagesmith imagesmith"
    return done.stdout.split()


def test_bash_completes_commands_actions_options_and_choices() -> None:
    assert _complete("imagesmith", "b") == ["build"]
    assert _complete("imagesmith", "--cache-dir", "/tmp", "in") == ["inspect", "index"]
    assert _complete("imagesmith", "index", "u") == ["update"]
    # --debug: the global options are accepted after the command too.
    assert _complete("imagesmith", "cache", "prune", "--d") == ["--debug", "--dry-run"]
    assert _complete("imagesmith", "build", "--compression", "z") == ["zstd"]
    assert _complete("imagesmith", "completion", "") == ["bash", "zsh"]
    assert "--base-image" in _complete("imagesmith", "build", "--")


def test_zsh_script_runs_the_bash_function_through_bashcompinit(capsys: pytest.CaptureFixture[str]) -> None:
    script = ok("completion", "zsh")
    assert script.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert script.endswith("complete -o filenames -F _imagesmith imagesmith\n")
    code, _, err = cli("completion", "fish")
    assert code == 2 and "invalid choice: 'fish'" in err
