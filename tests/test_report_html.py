"""`quantbuild report --html` on the records this repository commits: one self-contained page with every
chart, rendered in a real headless Chromium with no console error; a screenshot is kept for CI."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from ._browser import Browser, chromium_binary
from .conftest import REPO_ROOT, run_cli

ARTIFACTS = Path(os.environ.get("QUANTBUILD_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """The committed build/ records (HEAD's, so a demo running in this checkout cannot change them)."""
    root = tmp_path_factory.mktemp("records")
    archive = subprocess.run(["git", "archive", "HEAD", "build"], cwd=REPO_ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def page_file(records) -> Path:
    run = run_cli("report", "--html", "out/report.html", cwd=records)
    assert run.returncode == 0, run.stderr
    return records / "out" / "report.html"


def committed_variants(records: Path) -> list[str]:
    return sorted(p.parent.name for p in (records / "build/eval").glob("*/metrics.json") if p.parent.name != "base")


def test_the_page_is_self_contained_and_holds_every_section(page_file, records):
    html = page_file.read_text()
    assert "<script" not in html.lower()  # nothing runs; charts are inline SVG
    # no resource from anywhere: no src/href to a URL, and a CSP that forbids loading any
    assert not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', html)
    assert "default-src 'none'" in html
    for chart in ("chart-pareto", "chart-throughput", "chart-latency", "chart-sensitivity"):
        assert f'id="{chart}"' in html, chart
    for variant in committed_variants(records):
        assert f'<tr data-variant="{variant}">' in html
        assert f'data-variant="{variant}"><title>' in html  # its point on the size/quality chart


def test_gate_and_pareto_marks_match_the_records(page_file, records):
    html = page_file.read_text()
    selection = json.loads((records / "build/selection/selection.json").read_text())
    for row in selection["variants"]:
        gate = json.loads((records / "build/gate" / row["variant"] / "gate.json").read_text())
        cell = re.search(rf'<tr data-variant="{re.escape(row["variant"])}">(.*?)</tr>', html, re.S).group(1)
        assert ("passed" if gate["passed"] else "FAILED") in cell
        assert ("◆" in cell) == row["pareto"], row["variant"]
        mark = re.search(rf'<g class="mark ([^"]*)" data-variant="{re.escape(row["variant"])}"', html).group(1)
        assert ("frontier-point" in mark) == row["pareto"] and ("pass" if gate["passed"] else "fail") in mark.split()
        # the worst-domain figure is computed from the gate's own recoveries
        worst = max(100 * (r["variant"] / r["base"] - 1) for m, r in gate["recoveries"].items()
                    if m.endswith(".token_perplexity"))
        assert f"+{worst:.2f} % token perplexity" in html


def test_outside_names_are_escaped(records, tmp_path):
    """A record folder named like markup lands in the page as text, never as markup."""
    import shutil

    root = tmp_path / "evil"
    shutil.copytree(records / "build", root / "build")
    name = "x<img src=x onerror=alert(1)>"
    shutil.copytree(root / "build/eval/int8-w8a8", root / "build/eval" / name)
    run = run_cli("report", "--html", "r.html", cwd=root)
    assert run.returncode == 0, run.stderr
    html = (root / "r.html").read_text()
    assert "<img" not in html and "x&lt;img src=x onerror=alert(1)&gt;" in html


def test_no_records_is_a_one_line_error_and_no_file(tmp_path):
    run = run_cli("report", "--html", "r.html", cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "no evaluation records" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
    usage = run_cli("report", cwd=tmp_path)
    assert usage.returncode == 2 and "--html" in usage.stderr


def test_a_real_browser_renders_every_chart_without_console_errors(page_file, records):
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium in CI: .ci/run installs Debian's chromium (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    browser = Browser(binary)
    try:
        page = browser.open(page_file.as_uri())
        charts = page.evaluate("""Array.from(document.querySelectorAll('svg.chart')).map(svg => {
            const box = svg.getBoundingClientRect();
            return {id: svg.id, width: box.width, height: box.height,
                    marks: svg.querySelectorAll('circle, rect.bar, rect.cell').length};
        })""")
        assert {c["id"] for c in charts} == {"chart-pareto", "chart-throughput", "chart-latency", "chart-sensitivity"}
        for chart in charts:
            assert chart["width"] > 200 and chart["height"] > 100 and chart["marks"] > 0, chart
        variants = committed_variants(records)
        pareto = next(c for c in charts if c["id"] == "chart-pareto")
        assert pareto["marks"] == len(variants)
        cells = next(c for c in charts if c["id"] == "chart-sensitivity")["marks"]
        heatmap = json.loads((records / "build/sensitivity/plots/heatmap.json").read_text())
        assert cells == len(heatmap)
        # every gate row rendered as a table row a person can read
        rows = page.evaluate("document.querySelectorAll('#gate-table tbody tr').length")
        assert rows == len(variants)
        assert page.errors() == []
        shot = page.screenshot(ARTIFACTS / "release-report.png")
        assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.close()


def test_the_browser_check_catches_a_broken_page(tmp_path):
    """The console check is not vacuous: a page that throws and loads a blocked resource is caught."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium here")
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
                   '<img src="https://example.invalid/x.png"><p>x</p>')
    browser = Browser(binary)
    try:
        page = browser.open(bad.as_uri())
        page.evaluate("console.error('boom')")
        errors = page.errors()
        assert any("boom" in e for e in errors), errors
        assert any("Content Security Policy" in e or "example.invalid" in e for e in errors), errors
    finally:
        browser.close()


def test_sensitivity_without_measured_layer_kl_still_renders(records, tmp_path):
    """sensitivity.layer_kl: false leaves the per-layer rows without a KL: the page says less, not fails."""
    import shutil

    root = tmp_path / "nokl"
    shutil.copytree(records / "build", root / "build")
    layers = root / "build/sensitivity/plots/layers.json"
    layers.write_text(json.dumps([{"layer": r["layer"], "proxy": r["proxy"]} for r in json.loads(layers.read_text())]))
    run = run_cli("report", "--html", "r.html", cwd=root)
    assert run.returncode == 0, run.stderr
    html = (root / "r.html").read_text()
    assert 'id="chart-sensitivity"' in html and 'id="layer-table"' not in html
