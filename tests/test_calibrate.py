"""calibrate: real text from local files, a Hub dataset and the built-ins; seeded, disjoint, hashed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbuild._calibrate import calibrate
from quantbuild.config import CalibrationConfig, CalibrationSource
from quantbuild.errors import CalibrationError


def run(tmp_path: Path, model_dir: Path, out: str = "out", **cfg) -> tuple[dict, list[dict], list[dict]]:
    sources = [CalibrationSource(**s) for s in cfg.pop("sources")]
    config = CalibrationConfig(sources=sources, **cfg)
    folder = tmp_path / out
    stats = calibrate(config, model_dir, folder / "calibration.jsonl", folder / "heldout.jsonl", folder / "stats.json")
    calib = [json.loads(l) for l in (folder / "calibration.jsonl").read_text().splitlines()]
    held = [json.loads(l) for l in (folder / "heldout.jsonl").read_text().splitlines()]
    return stats, calib, held


def test_local_files_of_every_format(tmp_path, tiny_llama_dir, text_files):
    sources = [{"uri": str(text_files["txt"])}, {"uri": str(text_files["jsonl"]), "text_field": "content"},
               {"uri": str(text_files["parquet"])}]
    stats, calib, held = run(tmp_path, tiny_llama_dir, sources=sources, n_samples=64, seq_len=256, min_chars=0)
    assert stats["n_samples"] == len(calib) == 64
    assert all(s["n_tokens"] == 256 == len(s["input_ids"]) for s in calib)
    assert stats["token_lengths"]["min"] == stats["token_lengths"]["max"] == 256
    assert [s["documents"] for s in stats["sources"]] == [30, 30, len(text_files["docs"]) - 60]
    assert stats["sources"][1]["files"][0]["sha256"] and stats["sha256"]["calibration"]
    assert stats["warnings"] and "below 128" in stats["warnings"][0]
    assert len(held) >= 1 and all(h["text"] for h in held)


def test_heldout_is_disjoint_and_independent_of_n_samples(tmp_path, tiny_llama_dir, text_files):
    sources = [{"uri": str(text_files["parquet"])}, {"uri": str(text_files["txt"])}]
    _, calib_small, held_small = run(tmp_path, tiny_llama_dir, "a", sources=sources, n_samples=16, seq_len=128,
                                     heldout_share=0.2)
    _, calib_big, held_big = run(tmp_path, tiny_llama_dir, "b", sources=sources, n_samples=200, seq_len=128,
                                 heldout_share=0.2)
    assert (tmp_path / "a" / "heldout.jsonl").read_bytes() == (tmp_path / "b" / "heldout.jsonl").read_bytes()
    assert calib_big[:16] == calib_small  # more samples extend the same seeded order
    calib_text = " ".join(s["text"] for s in calib_big)
    for doc in held_big:  # no held-out passage reaches calibration
        assert doc["text"][:200] not in calib_text


def test_same_seed_same_bytes_other_seed_other_samples(tmp_path, tiny_llama_dir, text_files):
    sources = [{"uri": str(text_files["parquet"])}]
    run(tmp_path, tiny_llama_dir, "a", sources=sources, n_samples=16, seq_len=128, seed=3)
    run(tmp_path, tiny_llama_dir, "b", sources=sources, n_samples=16, seq_len=128, seed=3)
    run(tmp_path, tiny_llama_dir, "c", sources=sources, n_samples=16, seq_len=128, seed=4)
    a, b, c = ((tmp_path / d / "calibration.jsonl").read_bytes() for d in "abc")
    assert a == b and a != c


def test_truncate_mode_and_dedupe(tmp_path, tiny_llama_dir, text_files):
    docs = text_files["docs"][:20]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + docs[:5]))
    stats, calib, _ = run(tmp_path, tiny_llama_dir, sources=[{"uri": str(path)}], n_samples=10, seq_len=64,
                          packing="truncate")
    assert stats["documents"]["duplicates"] == 5
    assert all(s["n_tokens"] <= 64 for s in calib) and len(calib) == 10


def test_chat_template_is_applied(tmp_path, tiny_llama_dir, text_files):
    _, calib, _ = run(tmp_path, tiny_llama_dir, sources=[{"uri": str(text_files["parquet"])}], n_samples=4,
                      seq_len=128, chat_template=True, packing="truncate")
    assert all(s["text"].startswith("<|im_start|>system") for s in calib)


def test_builtin_texts(tmp_path, tiny_llama_dir):
    stats, calib, held = run(tmp_path, tiny_llama_dir, sources=[{"uri": "builtin://lee-news"},
                                                                {"uri": "builtin://pydoc-topics"}],
                             n_samples=32, seq_len=256)
    assert stats["sources"][0]["documents"] == 300 and stats["sources"][0]["sha256"]
    assert len(calib) == 32 and len(held) > 10


def test_hub_dataset(tmp_path, tiny_llama_dir, hub):
    from quantbuild.hubserver._seeds import gsm8k_files

    repo = hub.repo_id("calib-gsm8k")
    sha = hub.seed(repo, gsm8k_files(), repo_type="dataset")
    stats, calib, held = run(tmp_path, tiny_llama_dir, sources=[{"uri": f"hf://datasets/{repo}", "config": "main",
                                                                 "split": "test", "text_field": "question"}],
                             n_samples=20, seq_len=128, min_chars=0)
    assert stats["sources"][0]["revision"] == sha and stats["sources"][0]["documents"] == 1319
    assert len(calib) == 20


@pytest.mark.parametrize("make,cfg,pattern", [
    (lambda d: d.write_text(""), {}, r"^calibration.sources\[0\].uri: .* is empty"),
    (lambda d: d.write_text('{"body": "x"}\n'), {},
     r"^calibration.sources\[0\].text_field: 'text' is not a field of the records \(fields: body\)"),
    (lambda d: d.write_text('{"text": "x"}\nnot json\n'), {}, r"line 2 is not JSON"),
    (None, {}, r"^calibration.sources\[0\].uri: no file matches"),
    (lambda d: d.write_text("\n".join(json.dumps({"text": "word " * 60}) + "\n" for _ in range(2))), {},
     r"only 1 usable document"),
    (lambda d: d.write_text("".join(json.dumps({"text": f"doc {i} " + "word " * 40}) + "\n" for i in range(5))),
     {"n_samples": 500}, r"^calibration.n_samples: 500 asks for more than the \d+ samples"),
    (lambda d: d.write_text('{"text": "x"}\n'), {"seq_len": 4096}, r"^calibration.seq_len: 4096 is above the model's maximum 2048"),
])
def test_bad_inputs_are_one_line_errors_with_no_outputs(tmp_path, tiny_llama_dir, make, cfg, pattern):
    data = tmp_path / "data.jsonl"
    if make:
        make(data)
    with pytest.raises(CalibrationError, match=pattern) as info:
        run(tmp_path, tiny_llama_dir, sources=[{"uri": str(data)}], **{"n_samples": 4, "seq_len": 64, **cfg})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_hub_dataset(tmp_path, tiny_llama_dir, hub):
    with pytest.raises(CalibrationError, match=r"dataset \S+ not found at http"):
        run(tmp_path, tiny_llama_dir, sources=[{"uri": f"hf://{hub.repo_id('none')}"}], n_samples=4, seq_len=64)


def test_man_pages_are_plain_text_and_pinned(tmp_path, tiny_llama_dir, monkeypatch):
    """The Linux man pages (Debian's package, checked against its pinned digest) read as prose and code."""
    stats, calib, held = run(tmp_path, tiny_llama_dir, sources=[{"uri": "builtin://linux-man-pages"}],
                             n_samples=16, seq_len=256)
    source = stats["sources"][0]
    assert source["documents"] > 250 and source["sha256"].startswith("96f55cb5")
    from quantbuild._textdata import builtin_documents

    docs, _ = builtin_documents("linux-man-pages")
    pipe = next(d for d in docs if d.startswith("NAME\n\npipe, pipe2 - create pipe"))
    assert "pipe() creates a pipe, a unidirectional data channel that can be used for interprocess" in pipe
    assert "int pipe2(int pipefd[2], int flags);" in pipe          # synopsis kept line by line
    assert 'fprintf(stderr, "Usage: %s <string>\\n", argv[0]);' in pipe   # code keeps its backslashes
    assert not any(marker in d for d in docs for marker in ("\\fB", "\\fI", ".BR ", ".TP\n", '.\\"'))
    # A copy that does not match the pinned digest is refused, not read.
    monkeypatch.setenv("QUANTBUILD_TEXT_DIR", str(tmp_path / "text"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "manpages-dev_6.03-2_all.deb").write_bytes(b"!<arch>\nnot the package")
    with pytest.raises(CalibrationError, match=r"^built-in text linux-man-pages: .* does not match its pinned sha256"):
        run(tmp_path, tiny_llama_dir, out="bad", sources=[{"uri": "builtin://linux-man-pages"}], n_samples=4, seq_len=64)
    assert not (tmp_path / "bad").exists()
