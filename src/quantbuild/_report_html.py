"""`quantbuild report --html`: one self-contained page of a release's results, from the records the
pipeline committed (no DVC call, no network, no script): the gate per variant, bits per weight against
quality with the Pareto frontier, throughput and latency per variant and concurrency, and per-layer
sensitivity. Charts are inline SVG drawn here, so the page renders offline in any browser and can run
no code; each chart carries its numbers as native tooltips (`<title>`) and the tables repeat them."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from ._layout import EVAL_DIR, SELECTION_DIR, SENSITIVITY_DIR, gate_record
from .errors import OutputError

TEMPLATE = Path(__file__).with_name("report.html.j2")  # beside the code that renders it
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e")


@dataclass
class VariantResult:
    name: str
    method: str | None = None
    bits_per_weight: float | None = None
    passed: bool | None = None  # None: not gated yet
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_gateable: list[str] = field(default_factory=list)
    increases: dict[str, float] = field(default_factory=dict)  # domain -> token perplexity change, %
    pareto: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_increase(self) -> float | None:
        return max(self.increases.values()) if self.increases else None


@dataclass
class ReportData:
    base_metrics: dict[str, Any]
    variants: list[VariantResult]
    policy: str | None
    recommended: str | None
    selection_reason: str | None
    throughput: list[dict[str, Any]]  # rows of build/eval/*/plots/throughput.json
    sensitivity: list[dict[str, Any]]  # rows of build/sensitivity/plots/heatmap.json
    layer_kl: list[dict[str, Any]]
    domains: list[str]


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(f"report: {path} is not a readable JSON record ({exc}); re-run `dvc repro`") from None


def collect(root: Path) -> ReportData:
    """Read every record the report shows; a record that is missing leaves its section empty."""
    eval_dir = root / EVAL_DIR
    base = _read_json(eval_dir / "base/metrics.json", {})
    selection = _read_json(root / SELECTION_DIR / "selection.json", {}) or {}
    pareto = {row.get("variant") for row in selection.get("variants", []) if row.get("pareto")}
    variants, policy, throughput, domains = [], None, [], set()
    for metrics_path in sorted(eval_dir.glob("*/metrics.json")):
        name = metrics_path.parent.name
        throughput += _read_json(metrics_path.parent / "plots/throughput.json", []) or []
        if name == "base":
            continue
        gate = _read_json(root / gate_record(name), {}) or {}
        policy = policy or gate.get("policy")
        result = VariantResult(name, gate.get("method"), gate.get("bits_per_weight"),
                               gate.get("passed") if gate else None, gate.get("failures", []),
                               gate.get("not_gateable", []), pareto=name in pareto,
                               provenance=gate.get("provenance", {}), metrics=_read_json(metrics_path, {}))
        for metric, rec in (gate.get("recoveries") or {}).items():
            parts = metric.split(".")
            if len(parts) == 3 and parts[0] == "ppl" and parts[2] == "token_perplexity" and rec.get("base"):
                if rec.get("variant") is not None and rec["base"] > 0:
                    result.increases[parts[1]] = 100.0 * (rec["variant"] / rec["base"] - 1.0)
                    domains.add(parts[1])
        variants.append(result)
    heatmap = _read_json(root / SENSITIVITY_DIR / "plots/heatmap.json", []) or []
    layers = [row for row in _read_json(root / SENSITIVITY_DIR / "plots/layers.json", []) or []
              if isinstance(row.get("kl"), (int, float))]  # measured KL only (sensitivity.layer_kl may be off)
    return ReportData(base, variants, policy, selection.get("recommended"), selection.get("reason"),
                      throughput, heatmap, layers, sorted(domains))


# --- charts (inline SVG) ---------------------------------------------------------------------------

def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _axes(width: int, height: int, pad: tuple[int, int, int, int], xticks: list[tuple[float, str]],
          yticks: list[tuple[float, str]], xlabel: str, ylabel: str) -> list[str]:
    left, right, top, bottom = pad
    parts = [f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>']
    for x, label in xticks:
        parts.append(f'<text class="tick" x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    for y, label in yticks:
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    parts.append(f'<text class="label" x="{(left + width - right) / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(f'<text class="label" transform="translate(14,{(top + height - bottom) / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(ylabel)}</text>')
    return parts


def _svg(chart_id: str, width: int, height: int, title: str, parts: list[str]) -> Markup:
    body = "\n".join(parts)
    return Markup(f'<svg class="chart" id="{chart_id}" role="img" viewBox="0 0 {width} {height}" width="{width}" '
                  f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>\n{body}\n</svg>')


def pareto_chart(data: ReportData) -> Markup | None:
    points = [v for v in data.variants if v.bits_per_weight is not None and v.worst_increase is not None]
    if not points:
        return None
    width, height, pad = 720, 380, (64, 130, 28, 44)  # room on the right and on top for the labels
    xs = [v.bits_per_weight for v in points]
    ys = [v.worst_increase for v in points] + [0.0]
    xt, yt = _nice_ticks(min(xs) - 0.5, max(xs) + 0.5), _nice_ticks(min(ys), max(ys) * 1.12 + 0.5)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(x: float) -> float:
        return pad[0] + (x - x0) / (x1 - x0) * (width - pad[0] - pad[1])

    def sy(y: float) -> float:
        return height - pad[3] - (y - y0) / (y1 - y0) * (height - pad[2] - pad[3])

    parts = _axes(width, height, pad, [(sx(t), _fmt(t)) for t in xt], [(sy(t), f"+{_fmt(t)} %" if t > 0 else _fmt(t))
                                                                         for t in yt],
                  "bits per weight (lower is smaller)", "worst-domain perplexity increase")
    frontier = sorted((v for v in points if v.pareto), key=lambda v: v.bits_per_weight)
    if len(frontier) > 1:
        path = " ".join(f"{sx(v.bits_per_weight):.1f},{sy(v.worst_increase):.1f}" for v in frontier)
        parts.append(f'<polyline class="frontier" points="{path}"/>')
    placed: list[tuple[float, float]] = []
    for v in sorted(points, key=lambda v: -v.worst_increase):  # top first: a clash pushes the lower label down
        cls = "pass" if v.passed else ("fail" if v.passed is False else "pending")
        lx, ly = sx(v.bits_per_weight) + 9, sy(v.worst_increase) - 8
        while any(abs(lx - px) < 80 and abs(ly - py) < 14 for px, py in placed):
            ly += 16  # a label would cover another one: stack it below
        placed.append((lx, ly))
        shape = "frontier-point" if v.pareto else "point"
        tip = (f"{v.name}: {v.bits_per_weight:.2f} bits per weight, worst domain +{v.worst_increase:.2f} % "
               f"token perplexity, gate {'passed' if v.passed else 'failed' if v.passed is False else 'not run'}"
               f"{', on the Pareto frontier' if v.pareto else ''}")
        parts.append(f'<g class="mark {cls} {shape}" data-variant="{escape(v.name)}"><title>{escape(tip)}</title>'
                     f'<circle cx="{sx(v.bits_per_weight):.1f}" cy="{sy(v.worst_increase):.1f}" r="{7 if v.pareto else 5}"/>'
                     f'<text x="{lx:.1f}" y="{ly:.1f}">{escape(v.name)}</text></g>')
    return _svg("chart-pareto", width, height, "Bits per weight against worst-domain perplexity increase", parts)


def _grouped_bars(chart_id: str, title: str, ylabel: str, rows: list[dict[str, Any]], value_key: str,
                  unit: str) -> Markup | None:
    rows = [r for r in rows if isinstance(r.get(value_key), (int, float)) and r.get("concurrency") is not None]
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    models = (["base"] if "base" in models else []) + [m for m in models if m != "base"]
    levels = sorted({int(r["concurrency"]) for r in rows})
    value = {(r["model"], int(r["concurrency"])): float(r[value_key]) for r in rows}
    width, height, pad = 680, 340, (64, 16, 20, 64)
    yt = _nice_ticks(0.0, max(value.values()) * 1.08)
    y1 = yt[-1]
    group_w = (width - pad[0] - pad[1]) / len(levels)
    bar_w = min(28.0, (group_w - 16) / len(models))

    def sy(y: float) -> float:
        return height - pad[3] - y / y1 * (height - pad[2] - pad[3])

    parts = _axes(width, height, pad, [(pad[0] + group_w * (i + 0.5), f"concurrency {c}") for i, c in enumerate(levels)],
                  [(sy(t), _fmt(t)) for t in yt], "", ylabel)
    for i, level in enumerate(levels):
        start = pad[0] + group_w * (i + 0.5) - bar_w * len(models) / 2
        for j, model in enumerate(models):
            if (model, level) not in value:
                continue
            v = value[(model, level)]
            x, y = start + j * bar_w, sy(v)
            parts.append(f'<rect class="bar" data-model="{escape(model)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{height - pad[3] - y:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                         f'<title>{escape(f"{model}, concurrency {level}: {_fmt(v)} {unit}")}</title></rect>')
    for j, model in enumerate(models):  # legend under the axis
        x = pad[0] + j * 120
        parts.append(f'<rect x="{x}" y="{height - 30}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text class="tick" x="{x + 14}" y="{height - 21}">{escape(model)}</text>')
    return _svg(chart_id, width, height, title, parts)


def throughput_chart(data: ReportData) -> Markup | None:
    return _grouped_bars("chart-throughput", "Output tokens per second by concurrency", "output tokens / s",
                         data.throughput, "output_tokens_per_s", "output tokens/s")


def latency_chart(data: ReportData) -> Markup | None:
    return _grouped_bars("chart-latency", "Mean request latency by concurrency", "request latency (s)",
                         data.throughput, "request_latency_s", "s per request")


def _heat_color(t: float) -> str:
    """t in [0, 1] -> a light-to-dark sequential colour (viridis-like endpoints, readable in print)."""
    stops = [(0.0, (253, 231, 37)), (0.5, (33, 145, 140)), (1.0, (68, 1, 84))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#440154"


def sensitivity_chart(data: ReportData) -> Markup | None:
    cells = [c for c in data.sensitivity if isinstance(c.get("log10_score"), (int, float))]
    if not cells:
        return None
    layers = sorted({int(c["layer"]) for c in cells})
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    modules = sorted({c["module"] for c in cells}, key=lambda m: (order.index(m) if m in order else 99, m))
    lo, hi = min(c["log10_score"] for c in cells), max(c["log10_score"] for c in cells)
    cell_w, cell_h, left, top = 18, 22, 84, 12
    width, height = left + cell_w * len(layers) + 150, top + cell_h * len(modules) + 48
    parts = []
    for c in cells:
        x = left + layers.index(int(c["layer"])) * cell_w
        y = top + modules.index(c["module"]) * cell_h
        t = (c["log10_score"] - lo) / (hi - lo) if hi > lo else 0.5
        tip = f"layer {c['layer']} {c['module']}: log10 score {c['log10_score']:.2f}"
        parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                     f'fill="{_heat_color(t)}"><title>{escape(tip)}</title></rect>')
    for i, module in enumerate(modules):
        parts.append(f'<text class="tick" x="{left - 6}" y="{top + i * cell_h + 15}" text-anchor="end">{escape(module)}</text>')
    for i, layer in enumerate(layers):
        if layer % 5 == 0 or layer == layers[-1]:
            parts.append(f'<text class="tick" x="{left + i * cell_w + cell_w / 2:.1f}" y="{top + len(modules) * cell_h + 14}" '
                         f'text-anchor="middle">{layer}</text>')
    parts.append(f'<text class="label" x="{left + cell_w * len(layers) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                 f'decoder layer</text>')
    legend_x = left + cell_w * len(layers) + 24
    for k in range(6):  # colour scale
        t = k / 5
        parts.append(f'<rect x="{legend_x}" y="{top + k * 16}" width="14" height="14" fill="{_heat_color(t)}"/>'
                     f'<text class="tick" x="{legend_x + 20}" y="{top + k * 16 + 11}">{lo + t * (hi - lo):.1f}</text>')
    parts.append(f'<text class="tick" x="{legend_x}" y="{top + 6 * 16 + 14}">log10 score</text>')
    return _svg("chart-sensitivity", width, height,
                "Sensitivity per decoder layer and module (log10 of the score; darker hurts more)", parts)


# --- the page --------------------------------------------------------------------------------------

def render(data: ReportData, title: str, revision: str | None) -> str:
    from jinja2 import Environment, StrictUndefined, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(TEMPLATE.read_text())
    charts = {"pareto": pareto_chart(data), "throughput": throughput_chart(data), "latency": latency_chart(data),
              "sensitivity": sensitivity_chart(data)}
    speed_rows = sorted(data.throughput, key=lambda r: (r.get("model") != "base", str(r.get("model")),
                                                        r.get("concurrency") or 0))
    return template.render(title=title, revision=revision, data=data, charts=charts, speed_rows=speed_rows)


def write_html_report(out: Path, root: Path = Path(".")) -> Path:
    data = collect(root)
    if not data.variants and not data.base_metrics:
        raise OutputError("report --html: no evaluation records under build/eval; run `dvc repro` first")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    html = render(data, "quantbuild release report", head.stdout.strip() or None)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")  # never a half-written page
    part.write_text(html, encoding="utf-8")
    part.replace(out)
    return out
