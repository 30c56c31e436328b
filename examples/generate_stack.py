"""A generator program: build a whole stack's images through the Python API.

    python examples/generate_stack.py BASE REPO PACKAGE... [--insecure-registry HOST]

This is what a site's own tooling does instead of shelling out to the CLI: load the package
files (dependencies come along, in order), choose options in code, build one image per package
in a single run, watch progress through a callback, and act on the results and on errors, all
as typed Python values. The tests run it against a real registry.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import imagesmith


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("repo")
    parser.add_argument("packages", nargs="+")
    parser.add_argument("--insecure-registry", action="append", default=[])
    args = parser.parse_args(argv)

    # Settings a program chooses itself: one environment variable for every image, a label
    # naming the generator, and the registry options (TLS, insecure hosts) in one object.
    options = imagesmith.BuildOptions(
        env=("STACK_GENERATION=2026.11",),
        labels={"org.example.generator": "generate_stack.py"},
        jobs=4,
    )
    registry = imagesmith.RegistryOptions.from_env(insecure=frozenset(args.insecure_registry))

    events: collections.Counter[str] = collections.Counter()

    def on_progress(event: imagesmith.ProgressEvent) -> None:
        # Called from worker threads: keep it cheap (count, log, feed a dashboard...).
        events[event.kind] += 1

    try:
        packages = imagesmith.load_packages(args.packages)
        results = imagesmith.build_each(
            args.base, packages, repo=args.repo, options=options, registry=registry, progress=on_progress
        )
    except imagesmith.PackageError as error:
        print(f"bad package input: {error}", file=sys.stderr)
        return 2
    except imagesmith.RegistryError as error:
        print(
            f"registry problem ({'temporary' if error.temporary else 'permanent'}): {error}", file=sys.stderr
        )
        return 3

    summary = {
        "images": [
            {
                "package": r.packages[-1].package.name,
                "reference": str(r.reference),
                "digest": r.digest,
                "layers": len(r.packages),
            }
            for r in results
        ],
        "events": dict(sorted(events.items())),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
