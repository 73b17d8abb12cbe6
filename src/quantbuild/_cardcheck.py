"""README front-matter checks, as the Hub's validate-yaml endpoint makes them (used by the card and publish
stages and by the local Hub server alike)."""

from __future__ import annotations

import re
from typing import Any

import yaml

FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def front_matter(content: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(metadata, errors). No front matter gives ({} , [])."""
    match = FRONT_MATTER.match(content)
    if not match:
        return {}, []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark else ""
        return None, [f"Invalid YAML in README metadata{where}: {getattr(exc, 'problem', None) or exc}"]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return None, ["README metadata must be a YAML mapping"]
    return data, []


def _str_or_list(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def validate_card(content: str, repo_type: str = "model") -> list[str]:
    data, errors = front_matter(content)
    if errors or not data:
        return errors
    for key in ("license", "library_name", "pipeline_tag", "license_name", "license_link", "base_model_relation"):
        if key in data and not isinstance(data[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("language", "tags", "base_model", "datasets", "metrics"):
        if key in data and not _str_or_list(data[key]):
            errors.append(f'"{key}" must be a string or a list of strings')
    if data.get("base_model_relation") not in (None, "adapter", "merge", "quantized", "finetune"):
        errors.append('"base_model_relation" must be one of adapter, merge, quantized, finetune')
    index = data.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            errors.append('"model-index" must be a list')
        else:
            for i, model in enumerate(index):
                if not isinstance(model, dict) or "name" not in model:
                    errors.append(f'"model-index[{i}]" must be a mapping with a "name"')
                    continue
                for j, result in enumerate(model.get("results") or []):
                    if not isinstance(result, dict) or "task" not in result or "metrics" not in result:
                        errors.append(f'"model-index[{i}].results[{j}]" needs "task" and "metrics"')
                        continue
                    for k, metric in enumerate(result["metrics"] or []):
                        if not isinstance(metric, dict) or "type" not in metric or "value" not in metric:
                            errors.append(f'"model-index[{i}].results[{j}].metrics[{k}]" needs "type" and "value"')
    configs = data.get("configs")
    if configs is not None:
        if not isinstance(configs, list) or not all(isinstance(c, dict) and "config_name" in c for c in configs):
            errors.append('"configs" must be a list of mappings, each with a "config_name"')
    return errors
