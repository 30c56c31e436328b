# imagesmith — developer entry points. `make demo` and `make test` work on a fresh Debian
# machine: they install the system packages (when run as root) and a virtualenv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# busybox for linux/arm64 (Debian's busybox-static:arm64), the second platform of the tests'
# multi-platform base image; fetched with apt, never run on this machine.
BUSYBOX_ARM64 := tests/.data/busybox-arm64/busybox
# Debian 13's podman and skopeo, which verify sigstore signatures (Debian 12's are built with that
# disabled), run here against Debian 13's own glibc: see docs/trust.md and docs/testing.md.
SIGSTORE_TOOLS := tests/.data/trixie/bin/podman
TRIXIE_DEBS := podman skopeo libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0 libsubid5 \
	libseccomp2 libaudit1 libbsd0 libselinux1 libpcre2-8-0 libcap-ng0 libmd0

# Real components the tests and the demo use (see docs/testing.md).
SYSTEM_PACKAGES := docker-registry podman runc skopeo umoci busybox-static apache2-utils openssl \
	rsync git gcc g++ patchelf make curl jq tmux
SYSTEM_FILES := /usr/bin/docker-registry /usr/bin/podman /usr/sbin/runc /usr/bin/skopeo \
	/usr/bin/umoci /bin/busybox /usr/bin/htpasswd /usr/bin/openssl /usr/bin/rsync /usr/bin/git \
	/usr/bin/gcc /usr/bin/g++ /usr/bin/patchelf /usr/bin/make /usr/bin/curl /usr/bin/jq \
	/usr/bin/tmux
# Node tools the tests run, pinned by tests/npm/package-lock.json: gitlab-ci-local runs generated
# GitLab pipelines for real (4.60.0 is the last release for Node 20). npm ci compiles its re2
# module when no prebuilt binary can be downloaded: minutes, once; node's headers come from
# /usr/include/node when they are there, as no download is needed then.
NPM_DIR := tests/.data/npm
GITLAB_CI_LOCAL := $(NPM_DIR)/node_modules/.bin/gitlab-ci-local
NODE_HEADERS := $(if $(wildcard /usr/include/node/node_version.h),--nodedir=/usr)

.PHONY: help demo test test-slow test-all fuzz lint type check bench bench-deps docs clean system-deps venv node-deps

help:
	@echo "make demo    run the main job end to end on a throwaway local registry"
	@echo "make test    run the test suite, the fast set (installs what it needs)"
	@echo "make test-slow  the tests marked slow (fuzzing, memory bounds, Spack's kit, large stacks)"
	@echo "make test-all   both (CI runs both)"
	@echo "make fuzz    long property-based fuzzing run (IMAGESMITH_FUZZ=long)"
	@echo "make lint    ruff check and ruff format --check;  make type  mypy --strict;  make check  all three"
	@echo "make bench   benchmarks (results in .bench/; BENCH_SCALE=0.1 BENCH_RUNS=1 for a quick one)"
	@echo "make docs    check that every doc the README links exists"
	@echo "make clean   remove the virtualenv and caches"

system-deps:
	@missing=""; for f in $(SYSTEM_FILES); do [ -e $$f ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing system packages (missing:$$missing)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				$(SYSTEM_PACKAGES) >/dev/null; \
		else \
			echo "missing:$$missing -- install: apt-get install $(SYSTEM_PACKAGES)"; \
		fi; \
	fi

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# Multi-architecture apt (dpkg --add-architecture) only adds package lists: amd64 installs are
# unaffected. The binary is extracted from the .deb, not installed. Without root or apt, a hint.
# After system-deps (order only), so `make -j` never runs two apt-gets at once.
$(BUSYBOX_ARM64): | system-deps
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then \
		echo "fetching busybox-static:arm64 into $@"; \
		tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
		{ dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64; } && \
		apt-get update -qq && \
		(cd "$$tmp" && apt-get download -qq -o APT::Sandbox::User=root busybox-static:arm64) && \
		dpkg-deb -x "$$tmp"/busybox-static_*_arm64.deb "$$tmp/root" && \
		src=$$(ls "$$tmp/root/bin/busybox" "$$tmp/root/usr/bin/busybox" 2>/dev/null | head -n 1) && \
		[ -n "$$src" ] && mkdir -p $(@D) && \
		cp "$$src" $@.tmp && chmod 755 $@.tmp && mv $@.tmp $@; \
	else \
		echo "$@ missing: the multi-platform tests need it; as root on Debian run" \
			"'make $@' (dpkg --add-architecture arm64; apt-get download busybox-static:arm64)"; \
	fi

# apt with a private configuration under the target directory (the machine's sources, lists and
# cache are untouched): download the .debs, extract them, point the two programs at the extracted
# loader and libraries (DT_RPATH, not RUNPATH: libgpgme's own dependencies must be found too).
$(SIGSTORE_TOOLS): | system-deps
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v patchelf >/dev/null; then \
		echo "fetching Debian 13's podman and skopeo into $(@D)/.."; \
		mkdir -p $(@D) && d=$$(cd $(@D)/.. && pwd) && rm -rf "$$d/apt" "$$d/root" "$$d/bin"; \
		mkdir -p "$$d/apt/lists/partial" "$$d/apt/cache/archives/partial" "$$d/root" "$$d/bin" && \
		echo "deb http://deb.debian.org/debian trixie main" > "$$d/apt/sources.list" && \
		apt="-o Dir::Etc::SourceList=$$d/apt/sources.list -o Dir::Etc::SourceParts=/dev/null \
			-o Dir::State::Lists=$$d/apt/lists -o Dir::Cache=$$d/apt/cache -o APT::Sandbox::User=root" && \
		apt-get $$apt update -qq && (cd "$$d/apt" && apt-get $$apt download -qq $(TRIXIE_DEBS)) && \
		for deb in "$$d"/apt/*.deb; do dpkg-deb -x "$$deb" "$$d/root"; done && \
		lib="$$(cd "$$d/root/usr/lib/x86_64-linux-gnu" && pwd)" && \
		for tool in podman skopeo; do \
			cp "$$d/root/usr/bin/$$tool" "$$d/bin/$$tool.tmp" && \
			patchelf --set-interpreter "$$lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$$lib" \
				"$$d/bin/$$tool.tmp" && "$$d/bin/$$tool.tmp" --version >/dev/null && \
			mv "$$d/bin/$$tool.tmp" "$$d/bin/$$tool" || exit 1; \
		done; rm -rf "$$d/apt"; \
	else \
		echo "$@ missing: the signature tests need it; as root on Debian with patchelf run 'make $@'"; \
	fi

# Node and npm themselves: the machine's, else Debian's (as root); never both, since a Node from
# another source ships its own npm, which Debian's npm package would conflict with.
$(GITLAB_CI_LOCAL): tests/npm/package.json tests/npm/package-lock.json | system-deps $(BUSYBOX_ARM64)
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		echo "installing nodejs and npm" && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } || \
		echo "npm missing: install Node.js 18 or later with npm, then run 'make $@'"
	@if command -v npm >/dev/null; then \
		echo "installing gitlab-ci-local into $(NPM_DIR) (npm ci)"; \
		mkdir -p $(NPM_DIR) && cp tests/npm/package.json tests/npm/package-lock.json $(NPM_DIR)/ && \
		(cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error $(NODE_HEADERS)) && touch $@; \
	fi

node-deps: $(GITLAB_CI_LOCAL)

demo: system-deps venv
	$(BIN)/python examples/demo.py

# `make test` is the fast set: every real component, no test marked slow. `make test-slow` runs
# the slow ones (fuzzing, memory bounds, Spack's kit, large stacks), `make test-all` everything;
# .ci/run runs test and test-slow (docs/testing.md).
TEST_DEPS := system-deps venv $(BUSYBOX_ARM64) $(GITLAB_CI_LOCAL) $(SIGSTORE_TOOLS)

test: $(TEST_DEPS)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(TEST_DEPS)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(TEST_DEPS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fuzz: venv
	IMAGESMITH_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz.py -q

lint: venv
	$(BIN)/ruff check imagesmith tests examples
	$(BIN)/ruff format --check imagesmith tests examples

type: venv
	$(BIN)/mypy

check: lint type test

# BENCH_SCALE shrinks bench_layers' workloads (1.0 = 1 GiB / 200 MiB + 50k files / 5 MiB) and
# bench_spack's package (1.0 = 1 GiB of content, pushed by imagesmith and by the kit's real Spack),
# BENCH_RUNS sets their repetitions (median reported), e.g. make bench BENCH_SCALE=0.1 BENCH_RUNS=1
BENCH_SCALE ?= 1.0
BENCH_RUNS ?= 3

# The peers the layer benchmark compares against (podman and umoci/skopeo come with system-deps).
bench-deps:
	@command -v buildah >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null; } || \
		echo "buildah not installed: it will be reported as not measured"

bench: system-deps bench-deps venv $(BUSYBOX_ARM64)
	@# Byte-compiled as pip installs it: start-up is measured, not the compiler.
	$(BIN)/python -m compileall -q imagesmith
	BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_startup.py .bench/startup.json
	BENCH_SCALE=$(BENCH_SCALE) $(BIN)/python tests/bench_stack.py .bench/stack.json
	$(BIN)/python tests/bench_closure.py .bench/closure.json
	BENCH_SCALE=$(BENCH_SCALE) BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_stages.py .bench/stages.json
	BENCH_SCALE=$(BENCH_SCALE) BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_layers.py .bench/layers.json
	BENCH_SCALE=$(BENCH_SCALE) BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_pull.py .bench/pull.json
	BENCH_SCALE=$(BENCH_SCALE) BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_platforms.py .bench/platforms.json
	$(BIN)/python tests/bench_summary.py .bench
	BENCH_SCALE=$(BENCH_SCALE) BENCH_RUNS=$(BENCH_RUNS) $(BIN)/python tests/bench_spack.py .bench/spack.json

docs:
	@missing=0; for f in $$(grep -o 'docs/[a-z_-]*\.md' README.md docs/*.md | cut -d: -f2 | sort -u); do \
		[ -f $$f ] || { echo "missing: $$f"; missing=1; }; done; \
	[ $$missing = 0 ] && echo "docs: every linked page exists"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info tests/.data
