"""`quantbuild report`: a Markdown summary of this checkout's pipeline results against a base revision,
for pull-request comments: the quality gate per variant, `dvc metrics diff --md`, `dvc params diff --md`,
and `dvc plots diff` rendered to HTML beside it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ._progress import log
from ._layout import EVAL_DIR, gate_record
from .errors import OutputError

STAGE = "report"


def _dvc(root: Path, *args: str) -> str:
    out = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [l for l in (out.stderr + out.stdout).splitlines() if l.startswith("ERROR")] or [out.stderr.strip()[-300:]]
        raise OutputError(f"report: dvc {' '.join(args)} failed: {lines[0]}")
    return out.stdout.strip()


def _gate_rows(root: Path) -> list[str]:
    rows = []
    for metrics_path in sorted((root / EVAL_DIR).glob("*/metrics.json")):
        name = metrics_path.parent.name
        if name == "base":
            continue
        m = json.loads(metrics_path.read_text())
        gate_path = root / gate_record(name)
        gate = json.loads(gate_path.read_text()) if gate_path.is_file() else {}
        failures = gate.get("failures", [])
        why = "; ".join(f"{f['metric']} {f.get('recovery') if f.get('recovery') is not None else f.get('reason')}"
                        f" < {f['minimum']}" for f in failures)
        verdict = "passed" if gate.get("passed") else ("**FAILED**" if gate else "not gated yet")
        top1 = m.get("closeness.top1_agreement")
        size = m.get("size.ratio_to_base")
        rows.append(f"| {name} | {verdict} | {top1 if top1 is not None else 'n/a'} | "
                    f"{size if size is not None else 'n/a'} | {why} |")
    return rows


def write_report(base_rev: str, out: Path, plots_dir: Path | None = None, root: Path = Path(".")) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    metrics = _dvc(root, "metrics", "diff", base_rev, "--md", "--precision", "4") or "No metric changed."
    params = _dvc(root, "params", "diff", base_rev, "--md") or "No parameter changed."
    lines = [f"## quantbuild: `{head or 'workspace'}` against `{base_rev}`", "",
             "### Quality gate", "", "| variant | gate | top-1 agreement | size vs base | failures |",
             "|---|---|---|---|---|", *(_gate_rows(root) or ["| (no variant evaluated) | | | | |"]), "",
             "### Metrics (`dvc metrics diff`)", "", metrics, "", "### Params (`dvc params diff`)", "", params, ""]
    if plots_dir is not None:
        # dvc exits non-zero when a declared plot file is missing at a revision (a variant added or
        # removed) yet still renders the rest: keep the page and say so.
        Path(root, plots_dir).parent.mkdir(parents=True, exist_ok=True)
        plots = subprocess.run(["dvc", "plots", "diff", base_rev, "--out", str(plots_dir)], cwd=root,
                               capture_output=True, text=True)
        if (Path(root) / plots_dir / "index.html").is_file() or Path(plots_dir, "index.html").is_file():
            note = " (some declared plot files are missing at one of the revisions)" if plots.returncode else ""
            lines += [f"Plots (size vs quality, throughput): `{plots_dir}/index.html` in this run's artifacts{note}.", ""]
        else:
            raise OutputError(f"report: dvc plots diff {base_rev} wrote nothing: {plots.stderr.strip()[-300:]}")
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(STAGE, f"wrote {out}")
    return text
