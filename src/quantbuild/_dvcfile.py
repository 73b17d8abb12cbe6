"""dvc.yaml consistency with params.yaml: each variant needs an artifact and a throughput plot line.

DVC cannot template top-level `artifacts:` and `plots:` over `variants`, so `quantbuild check` names
exactly the lines to add when a variant was added to params.yaml and not to dvc.yaml.
"""

from __future__ import annotations

from typing import Any


def missing_variant_entries(dvc: dict[str, Any], variants: list[str], base_artifact: str) -> list[str]:
    lines = []
    artifacts = dvc.get("artifacts") or {}
    paths = {a.get("path"): key for key, a in artifacts.items() if isinstance(a, dict)}
    plot_files: set[str] = set()
    for plot in dvc.get("plots") or []:
        if isinstance(plot, dict):
            for spec in plot.values():
                y = (spec or {}).get("y") if isinstance(spec, dict) else None
                if isinstance(y, dict):
                    plot_files |= set(y)
    for name in variants:
        path = f"build/variants/{name}/model"
        if path not in paths:
            lines.append(f"dvc.yaml artifacts: add `{base_artifact}-{name}: {{path: {path}, type: model}}` "
                         f"for variant {name}")
        throughput = f"build/eval/{name}/plots/throughput.json"
        if throughput not in plot_files:
            lines.append(f"dvc.yaml plots.throughput.y: add `{throughput}: output_tokens_per_s` for variant {name}")
    return lines
