"""Generated Makefiles: the text, real GNU make runs with a stand-in imagesmith, then the real one.

The stand-in is a small sh script that logs which package file it was asked to build, so the
make semantics (order, up-to-date checks, rebuilds, failures) are checked in milliseconds; the
integration test then runs the real CLI through make against a real registry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import need_tool
from servers import DistributionRegistry
from test_e2e import EXAMPLES, ok

from imagesmith.errors import UsageError
from imagesmith.generate.makefile import STAMP_DIR, render_makefile, target_names
from imagesmith.inputs.load import load_packages
from imagesmith.inputs.packages import Package

BASE = "registry.example:5000/base/busybox:1"
REPO = "registry.example:5000/stack"

FAKE_IMAGESMITH = """#!/bin/sh
# Stand-in for imagesmith: log the package file (the last argument); on request, trace the
# start and end of a slow build, or fail.
for last; do :; done
if [ -n "${FAKE_SLEEP:-}" ]; then
    echo "start $last" >> "$FAKE_TRACE"; sleep "$FAKE_SLEEP"; echo "end $last" >> "$FAKE_TRACE"
fi
echo "$last" >> "$FAKE_LOG"
if [ "${FAKE_FAIL:-}" = "$last" ]; then echo "fake build of $last failed" >&2; exit 1; fi
printf '{"package_file": "%s", "args": "%s"}\\n' "$last" "$*"
"""


def write_package(
    root: Path, name: str, depends: Sequence[str] = (), *, version: str = "1.0", prefix: str | None = None
) -> Path:
    """A package file ``root/<name>.json`` with a directory of content ``root/<name>/bin/<name>``."""
    content = root / name
    (content / "bin").mkdir(parents=True, exist_ok=True)
    (content / "bin" / name).write_text(f"#!/bin/sh\necho {name}\n")
    path = root / f"{name}.json"
    doc = {
        "name": name,
        "version": version,
        "prefix": prefix or f"/opt/stack/{name.strip('.')}",
        "content": name,
        "depends": [f"{dep}.json" for dep in depends],
    }
    path.write_text(json.dumps(doc))
    return path


def diamond(root: Path) -> list[Package]:
    """a depends on b and c, both depend on d: loaded as d, b, c, a."""
    write_package(root, "d")
    write_package(root, "b", ["d"])
    write_package(root, "c", ["d"])
    return load_packages([write_package(root, "a", ["b", "c"])])


def rules(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """Every explicit rule of a Makefile: target -> (prerequisites, recipe lines)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line[1:])
            continue
        current = None
        match = re.fullmatch(r"([^\s:=#?+][^:=]*?):(?!=)\s*(.*)", line)
        if match and not line.startswith("ifneq"):
            prerequisites = re.findall(r"\$\(call \S+|\S+", match.group(2))
            current = []
            found[match.group(1)] = (prerequisites, current)
    return found


def assignments(text: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^([A-Z_]+) \?= ?(.*)$", text))


def age(root: Path) -> None:
    """Move every file under ``root`` two minutes into the past and the stamps one minute, so
    the stamps stay newer than what they depend on and a file touched now is surely newer than
    them, whatever the file system's timestamp resolution."""
    now = time.time()
    for path in sorted(root.rglob("*")):
        past = now - (60 if STAMP_DIR in path.as_posix() else 120)
        os.utime(path, (past, past), follow_symlinks=False)


# --- the text ----------------------------------------------------------------------------------


def test_diamond_has_one_target_per_package_with_its_dependencies(tmp_path: Path) -> None:
    text = render_makefile(diamond(tmp_path), base_image=BASE, repo=REPO, directory=tmp_path)
    found = rules(text)
    stamp = "$(STAMPS)/{}-1.0.pushed"
    for name, deps in {"d": [], "b": ["d"], "c": ["d"], "a": ["b", "c"]}.items():
        assert found[f"{name}-1.0"][0] == [stamp.format(name)]
        prerequisites, recipe = found[stamp.format(name)]
        assert prerequisites[:2] == [f"{name}.json", name]
        assert prerequisites[2:-2] == [stamp.format(dep) for dep in deps]
        assert prerequisites[-2:] == ["$(STAMPS)/settings", f"$(call _changed,{name},{stamp.format(name)})"]
        assert recipe == [
            "@mkdir -p $(@D)",
            "$(IMAGESMITH) $(IMAGESMITH_FLAGS) build $(BUILD_FLAGS) --base-image '$(BASE_IMAGE)' "
            f"--repo '$(REPO)' --json {name}.json > $@.tmp && mv -f $@.tmp $@ || "
            "{ rm -f $@.tmp; exit 1; }",
        ]
    assert re.search(r"IMAGES := \\\n    d-1.0 \\\n    b-1.0 \\\n    c-1.0 \\\n    a-1.0\n", text)
    assert found["all"] == (["$(IMAGES)"], [])
    assert found["push"] == (["all"], [])
    assert found["index"] == (
        ["all"],
        ["$(IMAGESMITH) $(IMAGESMITH_FLAGS) index update --index-tag '$(INDEX_TAG)' '$(REPO)'"],
    )
    assert found["clean"] == ([], ["rm -rf $(STAMPS)"])
    assert found["list"] == ([], ["@printf '%s\\n' $(IMAGES)"])
    assert ".PHONY: all push index clean list $(IMAGES) .imagesmith-changed" in text
    assert f"STAMPS := {STAMP_DIR}\n" in text


def test_variables_can_be_overridden_and_default_to_the_arguments(tmp_path: Path) -> None:
    text = render_makefile(
        diamond(tmp_path),
        base_image=BASE,
        repo=REPO,
        imagesmith="/opt/py/bin/python3 -m imagesmith",
        jobs=7,
        flags=["--insecure-registry", "registry.example:5000"],
        index_tag="all.index",
    )
    assert assignments(text) == {
        "IMAGESMITH": "/opt/py/bin/python3 -m imagesmith",
        "IMAGESMITH_FLAGS": "--insecure-registry registry.example:5000",
        "BUILD_FLAGS": "",
        "BASE_IMAGE": BASE,
        "REPO": REPO,
        "INDEX_TAG": "all.index",
        "JOBS": "7",
    }
    assert "\nifeq ($(MAKELEVEL),0)\nMAKEFLAGS += -j$(JOBS)\nendif\n" in text
    assert ".DEFAULT_GOAL := all\n" in text


def test_recipes_are_indented_with_tabs(tmp_path: Path) -> None:
    text = render_makefile(diamond(tmp_path), base_image=BASE, repo=REPO)
    recipe_lines = [line for line in text.splitlines() if line.startswith("\t")]
    # Two per image, one each for index, clean and list, two for the settings file.
    assert len(recipe_lines) == 2 * 4 + 3 + 2
    # lstrip_blocks must not have eaten a TAB: every line after a rule is a recipe or blank.
    assert not re.search(r"(?m)^ +(\$\(IMAGESMITH\)|@mkdir|rm -rf|@printf)", text)


def test_header_says_where_it_came_from_and_how_to_use_it(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    text = render_makefile(
        packages,
        base_image=BASE,
        repo=REPO,
        flags=["--insecure-registry", "registry.example:5000"],
        package_args=["stack/a.json"],
        directory=tmp_path,
    )
    header = text.split("\n\n", 1)[0]
    assert header.startswith("# Generated by imagesmith ")
    assert all(line.startswith("#") for line in header.splitlines())
    assert (
        "#   imagesmith --insecure-registry registry.example:5000 makefile --base-image "
        f"{BASE} --repo {REPO} stack/a.json\n" in header
    )
    for usage in ("make -s list", "make -j N", "CI", "make index", "make clean", "make -C DIR"):
        assert usage in header
    # Without package_args, the packages nothing depends on stand for the command's arguments.
    default = render_makefile(packages, base_image=BASE, repo=REPO, directory=tmp_path)
    assert f"--repo {REPO} a.json\n" in default
    assert "make -C DIR" not in render_makefile(packages, base_image=BASE, repo=REPO)


def test_paths_are_absolute_without_a_directory_and_relative_with_one(tmp_path: Path) -> None:
    packages = diamond(tmp_path / "pkgs")
    absolute = render_makefile(packages, base_image=BASE, repo=REPO)
    prerequisites, recipe = rules(absolute)["$(STAMPS)/a-1.0.pushed"]
    assert prerequisites[:2] == [str(tmp_path / "pkgs/a.json"), str(tmp_path / "pkgs/a")]
    assert recipe[1].split(" > ")[0].endswith(f"--json {tmp_path / 'pkgs/a.json'}")
    (tmp_path / "ci").mkdir()
    relative = render_makefile(packages, base_image=BASE, repo=REPO, directory=tmp_path / "ci")
    assert rules(relative)["$(STAMPS)/a-1.0.pushed"][0][:2] == ["../pkgs/a.json", "../pkgs/a"]


@pytest.mark.parametrize(
    "bad",
    [
        "with space",
        "colon:dir",
        "hash#dir",
        "dollar$dir",
        "eq=dir",
        "quote'dir",
        "star*dir",
        "comma,dir",
        "percent%dir",
        "tab\tdir",
    ],
)
def test_refuses_paths_make_cannot_express(tmp_path: Path, bad: str) -> None:
    packages = diamond(tmp_path / bad)
    with pytest.raises(UsageError, match=r"package file of d-1\.0 .* a Makefile cannot express safely"):
        render_makefile(packages, base_image=BASE, repo=REPO)


def test_refuses_content_make_cannot_express(tmp_path: Path) -> None:
    (tmp_path / "my content" / "bin").mkdir(parents=True)
    (tmp_path / "p.json").write_text(
        json.dumps({"name": "p", "version": "1", "prefix": "/opt/p", "content": "my content"})
    )
    with pytest.raises(UsageError, match=r"content of p-1 '.*/my content' contains ' '"):
        render_makefile(load_packages([tmp_path / "p.json"]), base_image=BASE, repo=REPO)


def test_unicode_paths_are_fine(tmp_path: Path) -> None:
    packages = diamond(tmp_path / "paquets-été")
    assert "paquets-été/a.json" in render_makefile(packages, base_image=BASE, repo=REPO)


def test_target_names_are_make_safe_and_unique(tmp_path: Path) -> None:
    files = [
        write_package(tmp_path / "x", "tool", version="1:2/3"),
        # Same name and version elsewhere, then one differing only in case (stamps on macOS).
        write_package(tmp_path / "y", "tool", version="1:2/3", prefix="/opt/y"),
        write_package(tmp_path / "z", "Tool", version="1_2_3", prefix="/opt/z"),
        # A leading '-' would be an option to make, a leading '.' a special target.
        write_package(tmp_path / "w", "-dash", version="1"),
        write_package(tmp_path / "v", ".dot", version="1"),
    ]
    packages = load_packages(files)
    assert list(target_names(packages).values()) == [
        "tool-1_2_3",
        "tool-1_2_3-2",
        "Tool-1_2_3-3",
        "_dash-1",
        "_dot-1",
    ]
    text = render_makefile(packages, base_image=BASE, repo=REPO, directory=tmp_path / "w")
    assert "$(STAMPS)/tool-1_2_3-2.pushed:" in text
    # A relative path starting with '-' is not taken for an option.
    assert "--json ./-dash.json > $@.tmp" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_image": "a\nb"}, "control character"),
        ({"repo": "it's/repo"}, "must not contain"),
        ({"repo": ""}, "must not be empty"),
        ({"imagesmith": "imagesmith\\"}, "backslash"),
        ({"imagesmith": " imagesmith"}, "whitespace"),
        ({"jobs": 0}, "positive integer"),
        ({"jobs": True}, "positive integer"),
    ],
)
def test_refuses_values_make_cannot_carry(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"base_image": BASE, "repo": REPO, **kwargs}
    with pytest.raises(UsageError, match=message):
        render_makefile(diamond(tmp_path), **arguments)  # type: ignore[arg-type]


def test_refuses_an_incomplete_or_empty_package_list(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    with pytest.raises(UsageError, match=r"a-1\.0 .* depends on .*b\.json, which does not come before it"):
        render_makefile(packages[-1:], base_image=BASE, repo=REPO)
    with pytest.raises(UsageError, match="listed twice"):
        render_makefile([*packages, packages[0]], base_image=BASE, repo=REPO)
    with pytest.raises(UsageError, match="no packages"):
        render_makefile([], base_image=BASE, repo=REPO)


# --- GNU make with a stand-in imagesmith -------------------------------------------------------


class Project:
    """A diamond stack, its Makefile and the stand-in imagesmith, driven by real make."""

    def __init__(self, root: Path) -> None:
        need_tool("make")
        self.root = root
        self.packages = diamond(root)
        (root / "Makefile").write_text(
            render_makefile(self.packages, base_image=BASE, repo=REPO, directory=root)
        )
        self.fake = root / "fake-imagesmith"
        self.fake.write_text(FAKE_IMAGESMITH)
        self.fake.chmod(0o755)
        self.log = root / "builds.log"
        self.log.touch()

    def make(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        environ.update(FAKE_LOG=str(self.log), **env)
        return subprocess.run(
            ["make", f"IMAGESMITH={self.fake}", *args],
            cwd=cwd or self.root,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def builds(self) -> list[str]:
        """Package files built since the last call."""
        built = self.log.read_text().split()
        self.log.write_text("")
        return built

    def stamp(self, target: str) -> Path:
        return self.root / STAMP_DIR / f"{target}.pushed"

    def age_stamps(self) -> None:
        age(self.root)


def test_make_builds_dependencies_first_then_only_what_changed(tmp_path: Path) -> None:
    project = Project(tmp_path)
    run = project.make("-j", "4")
    assert run.returncode == 0, run.stderr
    built = project.builds()
    assert sorted(built) == ["a.json", "b.json", "c.json", "d.json"]
    assert built[0] == "d.json" and built[-1] == "a.json"
    result = json.loads(project.stamp("a-1.0").read_text())
    assert result["package_file"] == "a.json"
    assert result["args"] == f"build --base-image {BASE} --repo {REPO} --json a.json"
    assert not list((tmp_path / STAMP_DIR).glob("*.tmp"))

    run = project.make()
    assert run.returncode == 0 and "Nothing to be done for 'all'" in run.stdout
    assert project.builds() == []

    # A changed package file rebuilds its image and the images above it, not the others.
    project.age_stamps()
    (tmp_path / "b.json").touch()
    assert project.make().returncode == 0
    assert project.builds() == ["b.json", "a.json"]

    # So does a change deep inside a content directory (make alone sees only the top).
    project.age_stamps()
    (tmp_path / "d" / "bin" / "d").write_text("#!/bin/sh\necho d, changed\n")
    assert project.make("-j", "1").returncode == 0
    assert project.builds() == ["d.json", "b.json", "c.json", "a.json"]

    # One target builds that image and what it needs.
    project.age_stamps()
    (tmp_path / "d.json").touch()
    assert project.make("c-1.0").returncode == 0
    assert project.builds() == ["d.json", "c.json"]


@pytest.mark.parametrize(("jobs", "overlap"), [("4", True), ("1", False)])
def test_jobs_sets_the_parallelism_when_make_has_no_j(tmp_path: Path, jobs: str, overlap: bool) -> None:
    project = Project(tmp_path)
    trace = tmp_path / "trace.log"
    run = project.make(f"JOBS={jobs}", FAKE_SLEEP="0.4", FAKE_TRACE=str(trace))
    assert run.returncode == 0, run.stderr
    events = trace.read_text().splitlines()
    middle = events[2:6]  # b and c, between d and a
    assert events[:2] == ["start d.json", "end d.json"] and events[6:] == ["start a.json", "end a.json"]
    both_started = set(middle[:2]) == {"start b.json", "start c.json"}
    assert both_started is overlap, events


def test_a_failed_build_leaves_no_stamp_and_stops_what_depends_on_it(tmp_path: Path) -> None:
    project = Project(tmp_path)
    run = project.make("-k", FAKE_FAIL="c.json")
    assert run.returncode != 0
    assert "fake build of c.json failed" in run.stderr
    assert sorted(project.builds()) == ["b.json", "c.json", "d.json"]
    assert not project.stamp("c-1.0").exists() and not project.stamp("a-1.0").exists()
    assert not list((tmp_path / STAMP_DIR).glob("*.tmp"))
    assert project.make().returncode == 0
    assert project.builds() == ["c.json", "a.json"]


def test_changing_repo_base_or_build_flags_rebuilds_everything(tmp_path: Path) -> None:
    project = Project(tmp_path)
    assert project.make().returncode == 0
    project.builds()
    assert project.make("REPO=registry.example:5000/other").returncode == 0
    assert len(project.builds()) == 4
    assert json.loads(project.stamp("d-1.0").read_text())["args"].endswith(
        "--repo registry.example:5000/other --json d.json"
    )
    assert project.make("REPO=registry.example:5000/other").returncode == 0
    assert project.builds() == []
    assert project.make("REPO=registry.example:5000/other", "BUILD_FLAGS=--profile-script").returncode == 0
    assert len(project.builds()) == 4
    assert "build --profile-script --base-image" in project.stamp("a-1.0").read_text()


def test_list_clean_and_escaped_values(tmp_path: Path) -> None:
    project = Project(tmp_path)
    run = project.make("-s", "list")
    assert run.returncode == 0 and run.stdout.splitlines() == ["d-1.0", "b-1.0", "c-1.0", "a-1.0"]
    assert not (tmp_path / ".imagesmith").exists(), "list must not write anything"
    assert project.make().returncode == 0
    refused = project.make("clean", "all")
    assert refused.returncode != 0 and "run `make clean` on its own" in refused.stderr
    assert project.make("clean").returncode == 0
    assert not (tmp_path / STAMP_DIR).exists()
    # '$' and '#' in a value reach the command unchanged.
    flags = ["--ca-cert", "/etc/certs/ca#1.pem", "--cache-dir", "/tmp/$HOME"]
    (tmp_path / "Makefile").write_text(
        render_makefile(project.packages, base_image=BASE, repo=REPO, flags=flags, directory=tmp_path)
    )
    assert project.make("d-1.0").returncode == 0
    args = json.loads(project.stamp("d-1.0").read_text())["args"]
    assert args.startswith("--ca-cert /etc/certs/ca#1.pem --cache-dir /tmp/$HOME build ")


def test_index_runs_after_every_image_or_alone_with_o_all(tmp_path: Path) -> None:
    # The fake stands in for `imagesmith index update` too (the real command is tested elsewhere).
    project = Project(tmp_path)
    assert project.make("index").returncode == 0
    assert project.builds()[-1] == REPO
    assert project.make("-o", "all", "index", "INDEX_TAG=other.index").returncode == 0
    assert project.builds() == [REPO]
    clean = Project(tmp_path / "fresh")
    run = clean.make("-o", "all", "index")
    assert run.returncode == 0 and clean.builds() == [REPO]
    assert f"index update --index-tag 'index.imagesmith' '{REPO}'" in run.stdout


def test_running_make_elsewhere_says_where_to_run_it(tmp_path: Path) -> None:
    project = Project(tmp_path / "stack")
    run = project.make("-f", str(tmp_path / "stack" / "Makefile"), cwd=tmp_path)
    assert run.returncode != 0
    assert "package file d.json not found: run make in the directory of this Makefile" in run.stderr
    listed = project.make("-s", "-f", str(tmp_path / "stack" / "Makefile"), "list", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.split() == ["d-1.0", "b-1.0", "c-1.0", "a-1.0"]


# --- GNU make with the real imagesmith and a real registry -------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_make_builds_and_pushes_the_example_stack(
    registry: DistributionRegistry,
    base: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    need_tool("make")
    # A copy: the test changes package files and content.
    stack = tmp_path / "stack"
    shutil.copytree(EXAMPLES, stack)
    repo_name = "makefile/stack"
    packages = load_packages([stack / "hello.json"])
    (tmp_path / "Makefile").write_text(
        render_makefile(packages, base_image=base, repo=f"{registry.host}/{repo_name}", directory=tmp_path)
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    environ["IMAGESMITH_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")
    environ.pop("SOURCE_DATE_EPOCH", None)
    stamps = tmp_path / STAMP_DIR

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [
                "make",
                f"IMAGESMITH={shlex.quote(sys.executable)} -m imagesmith",
                f"IMAGESMITH_FLAGS=--insecure-registry {registry.host}",
                *args,
            ],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, f"make {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
        return run

    def results() -> dict[str, dict[str, object]]:
        return {path.name: json.loads(path.read_text()) for path in stamps.glob("*.pushed")}

    def mtimes() -> dict[str, int]:
        return {path.name: path.stat().st_mtime_ns for path in stamps.glob("*.pushed")}

    assert make("-s", "list").stdout.split() == ["libgreet-1.0", "hello-2.12"]

    make("-j", "2")
    first = results()
    assert set(first) == {"libgreet-1.0.pushed", "hello-2.12.pushed"}
    tags = registry.tags(repo_name)
    for result in first.values():
        assert str(result["reference"]).startswith(f"{registry.host}/{repo_name}:")
        assert result["tag"] in tags
    assert str(first["hello-2.12.pushed"]["tag"]).startswith("hello-2.12-")
    assert str(first["libgreet-1.0.pushed"]["tag"]).startswith("libgreet-1.0-")

    # Nothing changed: nothing runs.
    before = mtimes()
    assert "Nothing to be done for 'all'" in make().stdout
    assert mtimes() == before

    # A touched package file rebuilds that image only (libgreet is below it); same tag.
    age(tmp_path)
    before = mtimes()
    (stack / "hello.json").touch()
    make()
    after = mtimes()
    assert after["libgreet-1.0.pushed"] == before["libgreet-1.0.pushed"]
    assert after["hello-2.12.pushed"] != before["hello-2.12.pushed"]
    assert results()["hello-2.12.pushed"]["digest"] == first["hello-2.12.pushed"]["digest"]

    # Changed content deep in libgreet: both images are rebuilt, with new hashes and tags.
    age(tmp_path)
    (stack / "libgreet/share/libgreet/greeting.txt").write_text("Hello again\n")
    make("-j", "2")
    second = results()
    tags = registry.tags(repo_name)
    for name, result in second.items():
        assert result["tag"] != first[name]["tag"]
        assert result["tag"] in tags

    # The index target lists what the repository now holds (the first and second builds).
    make("index")
    listed = json.loads(
        ok("--insecure-registry", registry.host, "index", "list", f"{registry.host}/{repo_name}", "--json")
    )
    indexed = {entry["tag"] for entry in listed["entries"]}
    assert {str(r["tag"]) for r in [*first.values(), *second.values()]} <= indexed
