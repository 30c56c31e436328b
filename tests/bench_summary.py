"""The last step of `make bench`: one table of the performance targets (issue 17), each with the
figure measured in this run, the peers' figures from the same run, and whether it is met.

Reads .bench/layers.json, .bench/pull.json and .bench/platforms.json (or the directory in
argv[1]); a missing file makes its rows "not measured". Writes .bench/summary.json too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def load(d: Path, name: str) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((d / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return doc


def rows(
    layers: dict[str, Any] | None, pull: dict[str, Any] | None, plat: dict[str, Any] | None
) -> list[list[str]]:
    out: list[list[str]] = []

    def row(target: str, measured: str, peers: str, met: bool | None) -> None:
        out.append([target, measured, peers, "not measured" if met is None else "yes" if met else "no"])

    for w, label in (("software", "1 GiB"), ("smallfiles", "50,000 files")):
        e = (pull or {}).get("workloads", {}).get(w)
        if not e:
            row(f"pull {label}: cold >= 2x faster than the fastest peer", "-", "-", None)
            row(f"pull {label}: warm <= 1.5x the floor", "-", "-", None)
            continue
        t = e["tools"]
        ims = t.get("imagesmith", {})
        peers = {k: v for k, v in t.items() if k not in ("imagesmith", "floor") and "cold_s" in v}
        if peers and "cold_s" in ims:
            best = min(v["cold_s"] for v in peers.values())
            row(
                f"pull {label}: cold >= 2x faster than the fastest peer",
                f"{ims['cold_s']:.2f} s ({best / ims['cold_s']:.2f}x)",
                ", ".join(f"{k} {v['cold_s']:.2f} s" for k, v in peers.items()),
                best / ims["cold_s"] >= 2,
            )
        floor = t.get("floor", {}).get("warm_s")
        if floor and "warm_s" in ims:
            row(
                f"pull {label}: warm <= 1.5x the floor",
                f"{ims['warm_s']:.2f} s ({ims['warm_s'] / floor:.2f}x)",
                f"igzip | tar {floor:.2f} s; "
                + ", ".join(f"{k} {v['warm_s']:.2f} s" for k, v in peers.items() if "warm_s" in v),
                ims["warm_s"] / floor <= 1.5,
            )
    if pull:
        rss = max(e["tools"].get("imagesmith", {}).get("peak_rss_mib", 0) for e in pull["workloads"].values())
        row("pull: peak RSS < 200 MB", f"{rss} MiB", "", rss * MiB < 200e6)
    else:
        row("pull: peak RSS < 200 MB", "-", "-", None)

    soft = (layers or {}).get("workloads", {}).get("software")
    if soft:
        ims = soft["tools"]["imagesmith"]
        cpu = ims.get("cold_cpu_s_per_gib")
        row(
            "cold push: <= 1.5 core-s per GiB of input (client user+sys)",
            f"{cpu:.2f} core-s/GiB; layer {soft['layer_bytes'] / MiB:.0f} MiB ({soft['compression_ratio']}x)"
            if cpu is not None
            else "-",
            ", ".join(
                f"{k} {v['cold_cpu_s_per_gib']:.2f}"
                for k, v in soft["tools"].items()
                if k != "imagesmith" and isinstance(v, dict) and "cold_cpu_s_per_gib" in v
            ),
            None if cpu is None else cpu <= 1.5,
        )
        umoci = soft["tools"].get("umoci+skopeo")
        if isinstance(umoci, dict):
            row(
                "cold push 1 GiB: >= 1.8x faster than umoci+skopeo",
                f"{ims['cold_s']:.2f} s ({umoci['cold_s'] / ims['cold_s']:.2f}x)",
                f"umoci+skopeo {umoci['cold_s']:.2f} s",
                umoci["cold_s"] / ims["cold_s"] >= 1.8,
            )
        row("warm push 1 GiB: < 0.25 s", f"{ims['warm_s']:.2f} s", _peers_warm(soft), ims["warm_s"] < 0.25)
    else:
        row("cold push: <= 1.5 core-s per GiB of input (client user+sys)", "-", "-", None)
        row("cold push 1 GiB: >= 1.8x faster than umoci+skopeo", "-", "-", None)
        row("warm push 1 GiB: < 0.25 s", "-", "-", None)
    small = (layers or {}).get("workloads", {}).get("smallfiles")
    if small:
        ims = small["tools"]["imagesmith"]
        row(
            "warm push 50,000 files: < 0.5 s",
            f"{ims['warm_s']:.2f} s",
            _peers_warm(small),
            ims["warm_s"] < 0.5,
        )
    else:
        row("warm push 50,000 files: < 0.5 s", "-", "-", None)
    if plat:
        row(
            "2-platform build of identical packages: <= 1.2x one platform",
            f"{plat['two_platforms_s']:.2f} s vs {plat['one_platform_s']:.2f} s ({plat['ratio']:.2f}x)",
            "",
            plat["ratio"] <= 1.2,
        )
    else:
        row("2-platform build of identical packages: <= 1.2x one platform", "-", "-", None)
    return out


def _peers_warm(entry: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v['warm_s']:.2f} s"
        for k, v in entry["tools"].items()
        if k != "imagesmith" and isinstance(v, dict) and "warm_s" in v
    )


def main() -> int:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench")
    layers, pull, plat = load(d, "layers"), load(d, "pull"), load(d, "platforms")
    table = rows(layers, pull, plat)
    head = ["target", "measured", "peers (same run)", "met"]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(4)]
    scale = next((doc.get("scale") for doc in (layers, pull, plat) if doc), None)
    print(
        f"\nSummary (BENCH_SCALE {scale}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} now)"
    )
    for r in [head, ["-" * w for w in widths], *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    (d / "summary.json").write_text(
        json.dumps([dict(zip(head, r, strict=True)) for r in table], indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
