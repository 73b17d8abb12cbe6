"""calibrate: documents from real sources -> tokenized calibration samples + a disjoint held-out split."""

from __future__ import annotations

import glob
import hashlib
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from ._io import atomic_outputs, sha256_file, write_json
from ._progress import Progress, log
from .config import CalibrationConfig, CalibrationSource, domain_name
from .errors import CalibrationError

STAGE = "calibrate"
RECOMMENDED_MIN_SAMPLES = 128


def _record_text(record: Any, field: str, where: str, chat: bool) -> Any:
    if not isinstance(record, dict):
        raise CalibrationError(f"{where}: records must be JSON objects with a {field!r} field")
    if field not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise CalibrationError(f"{where}.text_field: {field!r} is not a field of the records (fields: {fields}); "
                               "set text_field to one of them")
    value = record[field]
    if isinstance(value, list) and chat:  # a chat transcript: [{"role", "content"}, ...]
        return value
    if not isinstance(value, str):
        raise CalibrationError(f"{where}.text_field: {field!r} holds {type(value).__name__}, not text; choose a text field")
    return value


def _local_documents(src: CalibrationSource, field: str, where: str, chat: bool) -> tuple[list[Any], dict]:
    pattern = src.uri.removeprefix("file://")
    paths = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise CalibrationError(f"{where}.uri: no file matches {pattern!r} (give a .txt, .jsonl, .json or .parquet path)")
    docs: list[Any] = []
    files = []
    for path in paths:
        if path.stat().st_size == 0:
            raise CalibrationError(f"{where}.uri: {path} is empty; remove it or give a file with text")
        suffix = path.suffix.lower()
        if suffix in (".txt", ".md", ".jsonl", ".json"):
            try:
                raw = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CalibrationError(f"{where}.uri: {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8 "
                                       "or remove it") from None
            if "\x00" in raw:
                raise CalibrationError(f"{where}.uri: {path} contains NUL bytes (a binary file?); give a text file")
        if suffix in (".txt", ".md"):
            # Blank lines separate documents, so the held-out split works on whole passages.
            docs += [" ".join(block.split()) for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]
        elif suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise CalibrationError(f"{where}.uri: {path} line {n} is not JSON ({exc.msg})") from None
                    docs.append(_record_text(record, field, where, chat))
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{where}.uri: {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
            records = data if isinstance(data, list) else data.get("data", []) if isinstance(data, dict) else []
            docs += [_record_text(r, field, where, chat) for r in records]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if field not in table.column_names:
                raise CalibrationError(f"{where}.text_field: {field!r} is not a column of {path.name} "
                                       f"(columns: {', '.join(table.column_names)}); set text_field")
            docs += [v for v in table.column(field).to_pylist() if v is not None]
        else:
            raise CalibrationError(f"{where}.uri: {path.name} has an unsupported type {suffix!r} "
                                   "(use .txt, .jsonl, .json or .parquet)")
        files.append({"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size})
    return docs, {"files": files}


def _hub_documents(src: CalibrationSource, field: str, where: str, chat: bool) -> tuple[list[Any], dict]:
    import datasets
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    repo = src.uri[len("hf://"):].removeprefix("datasets/")
    revision = src.revision or "main"
    try:
        sha = HfApi().dataset_info(repo, revision=revision).sha
    except RevisionNotFoundError:
        raise CalibrationError(f"{where}.revision: {revision!r} not found in dataset {repo}") from None
    except RepositoryNotFoundError:
        raise CalibrationError(f"{where}.uri: dataset {repo} not found at {constants.ENDPOINT} (check the name; "
                               "set HF_TOKEN if it is private)") from None
    except HfHubHTTPError as exc:
        raise CalibrationError(f"{where}.uri: {constants.ENDPOINT} answered {exc.response.status_code} for {repo}") from None
    except OSError as exc:
        raise CalibrationError(f"{where}.uri: cannot reach {constants.ENDPOINT} for dataset {repo} ({type(exc).__name__})") from None
    log(STAGE, f"loading dataset {repo}@{sha[:12]} config={src.config} split={src.split}")
    try:
        ds = datasets.load_dataset(repo, name=src.config, split=src.split, revision=sha)
    except ValueError as exc:  # unknown split or config
        raise CalibrationError(f"{where}: {str(exc).splitlines()[0][:200]}") from None
    if field not in ds.column_names:
        raise CalibrationError(f"{where}.text_field: {field!r} is not a column of {repo} "
                               f"(columns: {', '.join(ds.column_names)}); set text_field")
    docs = [v for v in ds[field] if v is not None]
    return docs, {"repo_id": repo, "revision": sha, "config": src.config, "split": src.split,
                  "endpoint": constants.ENDPOINT}


def load_documents(cfg: CalibrationConfig, sources: list[CalibrationSource] | None = None,
                   section: str = "sources") -> tuple[list[tuple[int, Any]], list[dict]]:
    from ._textdata import builtin_documents

    docs: list[tuple[int, Any]] = []
    provenance = []
    for i, src in enumerate(cfg.sources if sources is None else sources):
        where = f"calibration.{section}[{i}]"
        field = src.text_field or cfg.text_field
        if src.uri.startswith("builtin://"):
            found, info = builtin_documents(src.uri[len("builtin://"):])
        elif src.uri.startswith("hf://"):
            found, info = _hub_documents(src, field, where, cfg.chat_template)
        else:
            found, info = _local_documents(src, field, where, cfg.chat_template)
        if src.max_docs is not None:
            found = found[: src.max_docs]
        if not found:
            raise CalibrationError(f"{where}.uri: {src.uri} gave no documents; check the file or split")
        docs += [(i, d) for d in found]
        provenance.append({"uri": src.uri, "domain": domain_name(src), "documents": len(found), "text_field": field,
                           **info})
    return docs, provenance


def _doc_key(doc: Any) -> str:
    text = doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True)
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()


def _unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the document alone (not by its neighbours)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / float(1 << 48)


def cap_heldout(items: list, cfg: CalibrationConfig) -> list:
    """Per source (so every domain is scored on its own text): at most heldout_max_docs documents and
    heldout_max_chars characters, the last document cut at a word boundary to fit."""
    docs: dict[Any, int] = {}
    chars: dict[Any, int] = {}
    out = []
    for src, doc, key in items:
        if cfg.heldout_max_docs is not None and docs.get(src, 0) >= cfg.heldout_max_docs:
            continue
        if cfg.heldout_max_chars is not None and isinstance(doc, str):
            room = cfg.heldout_max_chars - chars.get(src, 0)
            if room < cfg.min_chars:
                continue
            if len(doc) > room:
                doc = doc[:room].rsplit(" ", 1)[0]
            chars[src] = chars.get(src, 0) + len(doc)
        docs[src] = docs.get(src, 0) + 1
        out.append((src, doc, key))
    return out


def split_documents(docs: list[tuple[int, Any]], cfg: CalibrationConfig) -> tuple[list, list, dict]:
    """Dedupe, drop short documents, then assign each to calibration or held-out by a seeded hash.

    The assignment of a document never depends on n_samples or on the other documents, so the
    held-out set stays fixed while calibration sizes change (the evaluate baseline need not re-run).
    """
    counts = {"documents_in": len(docs), "too_short": 0, "duplicates": 0}
    seen: set[str] = set()
    kept = []
    for src, doc in docs:
        length = len(doc) if isinstance(doc, str) else sum(len(str(m.get("content", ""))) for m in doc)
        if length < cfg.min_chars:
            counts["too_short"] += 1
            continue
        key = _doc_key(doc)
        if cfg.dedupe and key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        kept.append((src, doc, key))
    if len(kept) < 2:
        raise CalibrationError(f"calibration.sources: only {len(kept)} usable document(s) after dropping short "
                               f"(< min_chars {cfg.min_chars}) and duplicate ones; add text")
    scored = sorted(kept, key=lambda item: _unit(cfg.seed, item[2]))
    n_held = sum(1 for item in kept if _unit(cfg.seed, item[2]) < cfg.heldout_share)
    n_held = min(max(n_held, 1), len(kept) - 1)
    heldout, calib = scored[:n_held], scored[n_held:]
    heldout = cap_heldout(heldout, cfg)
    counts.update({"documents_kept": len(kept), "heldout_documents": len(heldout), "calibration_documents": len(calib)})
    return calib, heldout, counts


def _format(doc: Any, tokenizer, chat: bool) -> str:
    if not chat:
        return doc if isinstance(doc, str) else "\n".join(str(m.get("content", "")) for m in doc)
    messages = doc if isinstance(doc, list) else [{"role": "user", "content": doc}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def build_samples(calib: list, tokenizer, cfg: CalibrationConfig) -> tuple[list[dict], int]:
    """Tokenize calibration documents in a seeded order; pack or truncate to seq_len tokens."""
    order = list(calib)
    random.Random(cfg.seed).shuffle(order)
    samples: list[dict] = []
    buffer: list[int] = []
    buffer_sources: set[int] = set()
    eos = tokenizer.eos_token_id
    progress = Progress(STAGE, "tokenized documents", len(order))
    used_docs = 0
    for src, doc, _key in order:
        text = _format(doc, tokenizer, cfg.chat_template)
        ids = tokenizer(text, add_special_tokens=not cfg.chat_template)["input_ids"]
        used_docs += 1
        progress.update(note=f"{len(samples)} samples")
        if cfg.packing == "truncate":
            samples.append({"input_ids": ids[: cfg.seq_len], "source": src})
        else:
            buffer += ids + ([eos] if eos is not None else [])
            buffer_sources.add(src)
            while len(buffer) >= cfg.seq_len:
                samples.append({"input_ids": buffer[: cfg.seq_len], "source": sorted(buffer_sources)})
                buffer = buffer[cfg.seq_len:]
                buffer_sources = {src}
        if len(samples) >= cfg.n_samples:
            break
    log(STAGE, f"tokenized {used_docs} of {len(order)} documents for {len(samples)} samples")
    return samples[: cfg.n_samples], len(samples)


def _length_stats(lengths: list[int]) -> dict[str, Any]:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {"min": ordered[0], "p10": pct(0.1), "p50": pct(0.5), "p90": pct(0.9), "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 2), "total": sum(ordered)}


def calibrate(cfg: CalibrationConfig, model_dir: str | Path, out_calib: str | Path, out_heldout: str | Path,
              out_stats: str | Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Build the calibration and held-out sets for the model in `model_dir`; write the three outputs."""
    from transformers import AutoConfig, AutoTokenizer

    from ._model_shapes import max_positions

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CalibrationError(f"calibrate: no model at {model_dir} (run the fetch stage first: dvc repro fetch)")
    limit = max_positions(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code).to_dict())
    if limit is not None and cfg.seq_len > limit:
        raise CalibrationError(f"calibration.seq_len: {cfg.seq_len} is above the model's maximum {limit} "
                               "(max_position_embeddings); lower it")
    warnings = []
    if cfg.n_samples < RECOMMENDED_MIN_SAMPLES:
        warnings.append(f"calibration.n_samples: {cfg.n_samples} is below {RECOMMENDED_MIN_SAMPLES}, the minimum "
                        "usually recommended for GPTQ/AWQ (512-1024 advised); fine for a demo, not for a release")
        log(STAGE, "warning: " + warnings[-1])
    start = time.monotonic()
    docs, provenance = load_documents(cfg)
    calib_docs, heldout_docs, counts = split_documents(docs, cfg)
    domains = [domain_name(src) for src in cfg.sources]
    heldout_rows = [(domains[src], doc, key) for src, doc, key in heldout_docs]
    if cfg.heldout_sources:
        # Whole texts of domains calibration never sees: activation scales fit to one domain may not carry.
        extra, extra_prov = load_documents(cfg, cfg.heldout_sources, "heldout_sources")
        provenance += [{**p, "heldout_only": True} for p in extra_prov]
        calib_keys = {key for _, _, key in calib_docs}
        names = [domain_name(src) for src in cfg.heldout_sources]
        fresh = [(names[src], doc, _doc_key(doc)) for src, doc in extra
                 if (len(doc) if isinstance(doc, str) else cfg.min_chars) >= cfg.min_chars]
        heldout_rows += cap_heldout([row for row in fresh if row[2] not in calib_keys], cfg)
    log(STAGE, f"{counts['documents_kept']} documents ({counts['duplicates']} duplicates, {counts['too_short']} "
        f"too short dropped): {len(calib_docs)} for calibration, {len(heldout_docs)} held out")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if cfg.chat_template and not tokenizer.chat_template:
        raise CalibrationError("calibration.chat_template: the base model's tokenizer has no chat template; "
                               "set chat_template: false")
    samples, available = build_samples(calib_docs, tokenizer, cfg)
    if len(samples) < cfg.n_samples:
        raise CalibrationError(f"calibration.n_samples: {cfg.n_samples} asks for more than the {available} samples "
                               f"of {cfg.seq_len} tokens the sources give; add sources or lower n_samples or seq_len")
    with atomic_outputs(out_calib, out_heldout, out_stats, field="calibrate output") as (calib_tmp, held_tmp, stats_tmp):
        with open(calib_tmp, "w") as fh:
            for sample in samples:
                text = tokenizer.decode(sample["input_ids"], clean_up_tokenization_spaces=False)
                fh.write(json.dumps({"text": text, "input_ids": sample["input_ids"],
                                     "n_tokens": len(sample["input_ids"]), "source": sample["source"]}) + "\n")
        with open(held_tmp, "w") as fh:
            for domain, doc, key in heldout_rows:
                fh.write(json.dumps({"text": _format(doc, tokenizer, False), "domain": domain, "doc_sha256": key})
                         + "\n")
        lengths = [len(s["input_ids"]) for s in samples]
        stats = {
            "n_samples": len(samples), "seq_len": cfg.seq_len, "packing": cfg.packing, "seed": cfg.seed,
            "chat_template": cfg.chat_template, "dedupe": cfg.dedupe, "min_chars": cfg.min_chars,
            "token_lengths": _length_stats(lengths),
            "heldout": {"documents": len(heldout_rows),
                        "characters": sum(len(_format(d, tokenizer, False)) for _, d, _ in heldout_rows),
                        "domains": {name: sum(1 for d, _, _ in heldout_rows if d == name)
                                    for name in dict.fromkeys(d for d, _, _ in heldout_rows)}},
            "documents": counts, "sources": provenance,
            "tokenizer": {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
                          "sha256": sha256_file(model_dir / "tokenizer.json")
                          if (model_dir / "tokenizer.json").is_file() else None},
            "sha256": {"calibration": sha256_file(calib_tmp), "heldout": sha256_file(held_tmp)},
            "warnings": warnings, "seconds": round(time.monotonic() - start, 2),
        }
        write_json(stats_tmp, stats)
    log(STAGE, f"{len(samples)} samples x {cfg.seq_len} tokens (sha256 {stats['sha256']['calibration'][:12]}), "
        f"{len(heldout_rows)} held-out documents ({', '.join(f'{k} {v}' for k, v in stats['heldout']['domains'].items())})")
    return stats
