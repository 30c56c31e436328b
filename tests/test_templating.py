"""Templates: image tags and the profile script (checked by running it with a real sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from conftest import need

from imagesmith.errors import TemplateError, UsageError
from imagesmith.oci.references import validate_tag
from imagesmith.templating import (
    DEFAULT_TAG_TEMPLATE,
    environment,
    render_profile_script,
    render_tag,
    shell_quote,
    templates_dir,
)

HASH = "4fzq2abcdefghijklmnopqrstuvwxyz2"


# --- the environment ---------------------------------------------------------------------------


def test_environment_is_cached_and_strict() -> None:
    env = environment()
    assert env is environment()
    assert env.undefined is jinja2.StrictUndefined
    assert env.keep_trailing_newline
    assert not env.autoescape


def test_templates_are_found_in_the_checkout() -> None:
    assert (templates_dir() / "tag.j2").is_file()
    assert (templates_dir() / "profile.sh.j2").is_file()


def test_tag_template_file_matches_the_constant() -> None:
    assert (templates_dir() / "tag.j2").read_text().strip() == DEFAULT_TAG_TEMPLATE


# --- render_tag --------------------------------------------------------------------------------


def test_default_tag() -> None:
    tag = render_tag(None, name="python", version="3.11.2", hash=HASH, spack=True)
    assert tag == f"python-3.11.2-{HASH}.spack"
    assert render_tag(DEFAULT_TAG_TEMPLATE, name="python", version="3.11.2", hash=HASH, spack=True) == tag
    # Spack's suffix only for a Spack build-cache entry: Spack reads every *.spack tag's config.
    assert render_tag(None, name="python", version="3.11.2", hash=HASH) == f"python-3.11.2-{HASH}"


def test_default_tag_names_the_platform_of_a_one_platform_image() -> None:
    # Two machines building one platform-independent package (same hash) must not share a tag.
    amd = render_tag(None, name="tool", version="1", hash=HASH, platform="linux-amd64")
    arm = render_tag(None, name="tool", version="1", hash=HASH, platform="linux-arm64-v8")
    assert (amd, arm) == (f"tool-1-{HASH}.linux-amd64", f"tool-1-{HASH}.linux-arm64-v8")
    # Spack's tag stays Spack's (a Spack package is built for one target anyway).
    assert render_tag(None, name="tool", version="1", hash=HASH, spack=True, platform="linux-amd64") == (
        f"tool-1-{HASH}.spack"
    )


def test_custom_tag_with_extra_variables() -> None:
    tag = render_tag(
        "{{ name }}_{{ version }}_{{ arch }}_{{ hash[:7] }}",
        name="zlib",
        version="1.3",
        hash=HASH,
        arch="x86_64",
    )
    assert tag == "zlib_1.3_x86_64_4fzq2ab"


def test_tag_is_sanitised_like_spack() -> None:
    tag = render_tag(None, name="py-numpy", version="1.26.0+cuda@12", hash=HASH, spack=True)
    assert tag == f"py-numpy-1.26.0_cuda_12-{HASH}.spack"
    assert render_tag("{{ name }}", name="-x y/z", version="1", hash=HASH) == "_x_y_z"


def test_surrounding_whitespace_is_stripped() -> None:
    assert render_tag("  {{ name }}\n", name="a", version="1", hash=HASH) == "a"


def test_long_tag_keeps_first_64_and_last_64() -> None:
    name = "n" * 100
    version = "v" * 100
    tag = render_tag(None, name=name, version=version, hash=HASH, spack=True)
    full = f"{name}-{version}-{HASH}.spack"
    assert len(tag) == 128
    assert tag == full[:64] + full[-64:]
    assert tag.endswith(f"{HASH}.spack")
    validate_tag(tag)


def test_tag_of_exactly_128_is_kept() -> None:
    name = "n" * (128 - len(f"-1-{HASH}.spack"))
    tag = render_tag(None, name=name, version="1", hash=HASH, spack=True)
    assert tag == f"{name}-1-{HASH}.spack"
    assert len(tag) == 128


def test_undefined_variable_is_an_error_naming_it() -> None:
    with pytest.raises(TemplateError) as info:
        render_tag("{{ name }}-{{ flavour }}", name="a", version="1", hash=HASH)
    message = str(info.value)
    assert "'{{ name }}-{{ flavour }}'" in message
    assert "'flavour' is undefined" in message
    assert "available variables: hash, name, platform, spack, version" in message


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ name ", "syntax error"),
        ("{% if name %}x", "syntax error"),
        ("{{ name + 1 }}", "TypeError"),
        ("{{ name.__class__.__mro__ }}", "undefined|unsafe|SecurityError"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_broken_templates(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_tag(template, name="a", version="1", hash=HASH)


@pytest.mark.parametrize("template", ["", "   ", "{{ '' }}", "{% if false %}x{% endif %}"])
def test_empty_tag_is_an_error(template: str) -> None:
    with pytest.raises(TemplateError, match="rendered an empty tag"):
        render_tag(template, name="a", version="1", hash=HASH)


# --- render_profile_script ---------------------------------------------------------------------


def test_shell_quote() -> None:
    assert shell_quote("plain") == "'plain'"
    assert shell_quote("it's") == "'it'\\''s'"
    assert shell_quote("") == "''"


def test_profile_script_text() -> None:
    script = render_profile_script(["PATH=/opt/a/bin:/usr/bin", "LANG=C.UTF-8"], comment="image x\nbuilt y")
    lines = script.splitlines()
    assert lines[0].startswith("# /etc/profile.d/imagesmith.sh") and "generated by imagesmith" in lines[0]
    assert "# image x" in lines
    assert "# built y" in lines
    assert lines[-2:] == ["export PATH='/opt/a/bin:/usr/bin'", "export LANG='C.UTF-8'"]
    assert script.endswith("'\n")
    assert "\n\n" not in script


def test_profile_script_skips_names_sh_cannot_export() -> None:
    script = render_profile_script(["GOOD=1", "BAD-NAME=2", "1X=3"])
    assert "export GOOD='1'" in script
    assert "BAD-NAME" not in script and "1X" not in script


def test_profile_script_rejects_malformed_entries() -> None:
    with pytest.raises(UsageError, match="'NOEQUALS'"):
        render_profile_script(["NOEQUALS"])


TRICKY = {
    "PATH": "/opt/my tools/bin:/usr/bin:/bin",
    "SPACES": "  leading and trailing  ",
    "SINGLE": "it's a 'quoted' value''",
    "DOUBLE": 'say "hi" and \\"escaped\\"',
    "DOLLAR": "$HOME ${PATH} $(echo no) `echo no` $$ $1",
    "BACKSLASH": "a\\b\\\\c\\n\\t\\",
    "NEWLINE": "line one\nline two\n",
    "GLOB": "* ? [a-z] ~ ~root",
    "SEMICOLON": "a; echo injected; b && c || d | e > f < g & h",
    "EMPTY": "",
    "UNICODE": "héllo wörld ✓",
    "EQUALS": "a=b=c",
    "HASH": "# not a comment",
}


def run_sourced(shell: str, script: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "imagesmith.sh"
    path.write_text(script)
    dump = f"{shlex_quote(sys.executable)} -c 'import json, os; print(json.dumps(dict(os.environ)))'"
    result = subprocess.run(
        [shell, "-c", f". ./imagesmith.sh && exec {dump}"],
        cwd=tmp_path,
        env={"HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        check=True,
    )
    # Any command the script ran by mistake (echo injected) would break this JSON.
    assert result.stderr == ""
    env: dict[str, str] = json.loads(result.stdout)
    return env


def shlex_quote(text: str) -> str:
    return shell_quote(text)


@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
def test_profile_script_round_trips_through_a_real_shell(shell: str, tmp_path: Path) -> None:
    if shell == "busybox":
        found = shutil.which("busybox")
        if found is None:
            need(False, "busybox not installed")
        wrapper = tmp_path / "bbsh"
        wrapper.write_text(f'#!/bin/sh\nexec {found} sh "$@"\n')
        wrapper.chmod(0o755)
        shell = str(wrapper)
    script = render_profile_script([f"{k}={v}" for k, v in TRICKY.items()], comment="it's $HOME")
    env = run_sourced(shell, script, tmp_path)
    for key, value in TRICKY.items():
        assert env.get(key) == value, key


def test_templates_inside_the_package_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagesmith.templating as templating

    package = tmp_path / "site-packages" / "imagesmith"
    (package / "templates").mkdir(parents=True)
    (tmp_path / "site-packages" / "templates").mkdir()
    monkeypatch.setattr(templating, "_PACKAGE_DIR", package)
    assert templates_dir() == package / "templates"
    (package / "templates").rmdir()
    assert templates_dir() == tmp_path / "site-packages" / "templates"
    (tmp_path / "site-packages" / "templates").rmdir()
    with pytest.raises(TemplateError, match="templates are missing"):
        templates_dir()
