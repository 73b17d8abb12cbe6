"""method: auto — per-module formats from the sensitivity stage's scores under a bits-per-weight budget.

Greedy by marginal gain (as NVIDIA ModelOpt's auto_quantize searches formats under an effective-bits
constraint): every unit (q/k/v fused, o, gate/up fused, down) starts at its cheapest candidate format;
the upgrade that removes the most predicted loss per added bit is taken while it fits the budget. The
predicted loss is the sum of the units' sensitivity scores (an additive, second-order estimate of the KL
to the base). Everything here runs before any weights load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._formats import FORMATS, layer_index, unit_of
from ..errors import ConfigError, EnvironmentSetupError


def _units(base_shapes: dict[str, list[int]], keep: list[str]) -> dict[str, dict[str, Any]]:
    units: dict[str, dict[str, Any]] = {}
    for key, shape in base_shapes.items():
        if not key.endswith(".weight") or len(shape) != 2 or layer_index(key) is None:
            continue
        module = key[: -len(".weight")]
        if module in keep:
            continue
        unit = units.setdefault(unit_of(module), {"modules": [], "params": 0, "in_features": shape[1]})
        unit["modules"].append(module)
        unit["params"] += shape[0] * shape[1]
    return units


def bits_of(units: dict[str, dict[str, Any]], choice: dict[str, str], kept_params: int) -> float:
    """Exact bits per weight of an assignment (kept modules count at 16 bits)."""
    total = sum(u["params"] for u in units.values()) + kept_params
    stored = sum(u["params"] * FORMATS[choice[name]].bits_per_weight(u["in_features"]) for name, u in units.items())
    return (stored + 16 * kept_params) / total


def assign(scores: dict[str, dict[str, float]], candidates: list[str], budget: float,
           base_shapes: dict[str, list[int]], keep: list[str], where: str,
           max_predicted_kl: float | None = None) -> dict[str, Any]:
    """The assignment {module: format}, its exact bits per weight and predicted loss; ConfigError when the
    budget is below the cheapest assignment or the quality target cannot be met within it."""
    units = _units(base_shapes, keep)
    kept_params = sum(s[0] * s[1] for k, s in base_shapes.items()
                      if k.endswith(".weight") and k[: -len(".weight")] in keep)
    missing = [u for u in units if u not in scores]
    if missing:
        raise EnvironmentSetupError(f"{where}: the sensitivity record has no score for {missing[0]} "
                                    f"(and {len(missing) - 1} more); re-run dvc repro sensitivity")
    for fmt in candidates:
        absent = [u for u in units if fmt not in scores[u]]
        if absent:
            raise ConfigError([f"{where}.candidates: {fmt} was not scored by the sensitivity stage "
                               "(add it to sensitivity.formats)"])
    cost = {fmt: FORMATS[fmt].bits_per_weight(4096) for fmt in candidates}  # ordering only
    cheapest = min(candidates, key=lambda f: cost[f])
    choice = {u: cheapest for u in units}
    floor = bits_of(units, choice, kept_params)
    if floor > budget + 1e-9:
        raise ConfigError([f"{where}.max_bits_per_weight: {budget} is below the smallest assignment "
                           f"({floor:.3f} bits per weight, every module at {cheapest}); raise it"])
    order = sorted(candidates, key=lambda f: cost[f])
    while True:
        best, best_gain = None, 0.0
        current = bits_of(units, choice, kept_params)
        for name, unit in units.items():
            here = order.index(choice[name])
            for fmt in order[here + 1:]:
                gain = scores[name][choice[name]] - scores[name][fmt]
                added = unit["params"] * (FORMATS[fmt].bits_per_weight(unit["in_features"])
                                          - FORMATS[choice[name]].bits_per_weight(unit["in_features"]))
                if gain <= 0 or added <= 0:
                    continue
                after = current + added / (sum(u["params"] for u in units.values()) + kept_params)
                if after > budget + 1e-9:
                    continue
                if gain / added > best_gain:
                    best, best_gain = (name, fmt), gain / added
        if best is None:
            break
        choice[best[0]] = best[1]
    predicted = sum(scores[u][f] for u, f in choice.items())
    if max_predicted_kl is not None:
        best_possible = sum(min(scores[u][f] for f in candidates) for u in units)
        if best_possible > max_predicted_kl:
            raise ConfigError([f"{where}.max_predicted_kl: {max_predicted_kl} cannot be met by any assignment of "
                               f"{', '.join(candidates)} (best predicted {best_possible:.4g}); raise it or add a format"])
        if predicted > max_predicted_kl:
            raise ConfigError([f"{where}.max_predicted_kl: {max_predicted_kl} needs more than "
                               f"max_bits_per_weight {budget} (the best assignment within it predicts {predicted:.4g}); "
                               "raise the budget or the target"])
    assignment = {m: choice[u] for u, unit in units.items() for m in unit["modules"]}
    upgraded = sorted((u for u in units if choice[u] != cheapest), key=lambda u: -scores[u][cheapest])
    return {"assignment": dict(sorted(assignment.items())), "bits_per_weight": round(bits_of(units, choice, kept_params), 4),
            "budget": budget, "candidates": candidates, "predicted_kl": round(predicted, 6),
            "predicted_kl_all_cheapest": round(sum(scores[u][cheapest] for u in units), 6),
            "upgraded_units": {u: choice[u] for u in upgraded}}


def assign_from_file(path: str | Path | None, settings: dict[str, Any], base_shapes: dict[str, list[int]],
                     keep: list[str], where: str) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        raise EnvironmentSetupError(f"{where}: method auto needs the sensitivity record {path} "
                                    "(run dvc repro sensitivity first)")
    record = json.loads(Path(path).read_text())
    scores = {u: v["score"] for u, v in record["units"].items()}
    return assign(scores, list(settings["candidates"]), float(settings["max_bits_per_weight"]), base_shapes, keep,
                  where, settings.get("max_predicted_kl"))
