"""select: bits per weight against quality for every variant, the Pareto frontier, and the recommendation.

Quality of a variant = its worst recovery over the gated metrics (1.0 = nothing lost), so a variant is as
good as its weakest held-out domain. The recommended variant is the smallest (fewest bits per weight) that
passed its gate; ties go to the better quality. A variant is on the frontier when no other variant is at
least as small and at least as good, and strictly better in one of the two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._gate import unsettled
from ._io import atomic_outputs, write_json
from ._progress import log

STAGE = "select"


def _quality(gate: dict[str, Any]) -> float | None:
    values = [gate["recoveries"].get(m, {}).get("recovery") for m in gate["thresholds"]]
    values = [v for v in values if isinstance(v, (int, float))]
    return min(values) if values and len(values) == len(gate["thresholds"]) else None


def select(variants: list[str], gate_root: Path, out_dir: Path) -> dict[str, Any]:
    rows, not_built = [], []
    for name in variants:
        path = gate_root / name / "gate.json"
        if not path.is_file():
            # `dvc repro` never runs select before every gate; a release assembled from per-variant jobs
            # (.ci/release with QUANTBUILD_RELEASE_ASSEMBLE) runs it alone when a variant's job failed.
            not_built.append(name)
            log(STAGE, f"{name}: not built (no gate record: {path}); left out of the selection")
            continue
        gate = json.loads(path.read_text())
        rows.append({"variant": name, "bits_per_weight": gate.get("bits_per_weight"), "quality": _quality(gate),
                     "passed": gate["passed"], "failures": [f["metric"] for f in gate["failures"]],
                     "unsettled": [row["metric"] for row in unsettled(gate)]})
    for row in rows:
        others = [o for o in rows if o is not row and o["quality"] is not None and o["bits_per_weight"] is not None]
        if row["quality"] is None or row["bits_per_weight"] is None:
            row["pareto"] = False
            continue
        row["pareto"] = not any(o["bits_per_weight"] <= row["bits_per_weight"] and o["quality"] >= row["quality"]
                                and (o["bits_per_weight"] < row["bits_per_weight"] or o["quality"] > row["quality"])
                                for o in others)
    passed = sorted((r for r in rows if r["passed"] and r["bits_per_weight"] is not None),
                    key=lambda r: (r["bits_per_weight"], -(r["quality"] or 0)))
    best = passed[0] if passed else None
    why = (f"{best['variant']} is the smallest variant that meets the quality policy: {best['bits_per_weight']} bits "
           f"per weight, worst recovery {best['quality']:.4f}" if best else
           "no variant meets the quality policy; nothing is recommended")
    if best and best["unsettled"]:
        why += (f" (on {', '.join(best['unsettled'])} the held-out windows' 95 % interval reaches past the limit: "
                "more held-out text would settle it)")
    record = {"recommended": best["variant"] if best else None, "reason": why, "variants": rows,
              "not_built": not_built,
              "frontier": [r["variant"] for r in sorted(rows, key=lambda r: r["bits_per_weight"] or 0) if r["pareto"]]}
    with atomic_outputs(out_dir / "selection.json", out_dir / "plots", field="select output") as (sel, plots):
        plots.mkdir()
        write_json(sel, record)
        write_json(plots / "pareto.json", [{"variant": r["variant"], "bits_per_weight": r["bits_per_weight"],
                                            "worst_recovery": r["quality"], "pareto": r["pareto"],
                                            "passed": r["passed"]} for r in rows])
    log(STAGE, why)
    return record
