"""Evaluation engines behind lm-eval, imported lazily: vLLM (default) or transformers (`eval.engine: hf`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..config import EvalConfig
from ._closeness import TOP_K


def on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


def engine_args(engine: str, model_dir: str | Path, cfg: EvalConfig, cpu: bool) -> dict[str, Any]:
    """The lm-eval model_args for a model: the same for the baseline and every variant."""
    if engine == "vllm":
        args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": cfg.dtype, "max_model_len": cfg.max_model_len,
                                "seed": cfg.seed, "batch_size": cfg.batch_size, "max_logprobs": TOP_K,
                                "tensor_parallel_size": cfg.tensor_parallel_size,
                                "data_parallel_size": cfg.data_parallel_size}
        if cpu:
            args["enforce_eager"] = True  # no CUDA graphs on CPU; also the fastest start there
        if getattr(cfg, "trust_remote_code", False):
            args["trust_remote_code"] = True
        return args
    # transformers scores rolling windows of max_length; vLLM of max_model_len - 2 (lm-eval's accounting
    # for the prefix token), so these match and the two engines give the same perplexity.
    args = {"pretrained": str(model_dir), "dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "max_length": cfg.max_model_len - 2}
    if cpu:
        args["device"] = "cpu"  # lm-eval's HFLM assumes cuda otherwise
    if getattr(cfg, "trust_remote_code", False):
        args["trust_remote_code"] = True
    return args


def command_line(engine: str, args: dict[str, Any], tasks: list[str], include_path: Path, cfg: EvalConfig,
                 limit: int | None) -> str:
    model_args = ",".join(f"{k}={v}" for k, v in args.items() if k != "batch_size")
    parts = ["lm_eval", "--model", engine, "--model_args", model_args, "--tasks", ",".join(tasks),
             "--include_path", str(include_path), "--batch_size", str(args.get("batch_size", 1)),
             "--seed", str(cfg.seed)]
    if limit:
        parts += ["--limit", str(limit)]
    if cfg.num_fewshot is not None:
        parts += ["--num_fewshot", str(cfg.num_fewshot)]
    if cfg.apply_chat_template:
        parts += ["--apply_chat_template"]
    return " ".join(parts)


def activation_quantized_modules(model: Any) -> int:
    """How many modules quantize their input activations in this transformers model. vLLM quantizes a W8A8
    checkpoint's activations (per token for the dynamic schemes); transformers, which decompresses the
    weights to bf16, keeps that step only through compressed-tensors' quantized forward on each module.
    The fallback records the count so a measurement that lost the step (0 for a W8A8 variant) shows."""
    count = 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None and scheme.input_activations is not None and \
                hasattr(module.__dict__.get("forward"), "__wrapped__") and getattr(module, "quantization_enabled", True):
            count += 1
    return count


class Engine:
    """One loaded model: lm-eval's LM wrapper plus the probes quantbuild adds (logprobs, speed)."""

    def __init__(self, engine: str, model_dir: Path, cfg: EvalConfig):
        self.kind, self.cfg = engine, cfg
        self.cpu = on_cpu()
        self.args = engine_args(engine, model_dir, cfg, self.cpu)
        start = time.monotonic()
        self.in_process = False
        if engine == "vllm":
            if self.cpu:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default is larger
                if cfg.tensor_parallel_size == 1 and cfg.data_parallel_size == 1:
                    # Otherwise vLLM's CPU build runs its engine in a second process and the model in a third,
                    # each importing torch and vLLM again, and binds the model to one core, keeping the other
                    # for the first process. In one process every core computes: the demo's evaluate stage took
                    # half the time, perplexities bit for bit the same (benchmarks/evaluate_engine_process.py).
                    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # The engine core runs in this process whenever the variable says so, set here or by the user.
            self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
            from lm_eval.models.vllm_causallms import VLLM

            self.lm = VLLM(**self.args)
        else:
            from lm_eval.models.huggingface import HFLM

            self.lm = HFLM(**self.args)
            self.activation_quant_modules = activation_quantized_modules(self.lm.model)
        self.startup_seconds = time.monotonic() - start

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def top_logprobs(self, sequences: list[list[int]]) -> list[list[dict[str, float]]]:
        """For each sequence, the top-K next-token log-probabilities after every prefix."""
        if self.kind == "vllm":
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=TOP_K)
            outs = self.lm.model.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params,
                                          use_tqdm=False)
            result = []
            for out in outs:
                rows = []
                for position in out.prompt_logprobs[1:]:
                    ranked = sorted(position.items(), key=lambda kv: -kv[1].logprob)[:TOP_K]
                    rows.append({str(t): float(lp.logprob) for t, lp in ranked})
                result.append(rows)  # prompt_logprobs[i]: the distribution of token i given tokens < i
            return result
        import torch

        result = []
        model = self.lm.model
        for seq in sequences:
            with torch.no_grad():
                logits = model(torch.tensor([seq], device=model.device)).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            values, indices = logp.topk(TOP_K, dim=-1)
            result.append([{str(int(i)): float(v) for v, i in zip(vs, ix)} for vs, ix in zip(values, indices)])
        return result

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """For each sequence, log p(token i | tokens < i) for i >= 1 (the actual tokens, not the top-K)."""
        if self.kind == "vllm":
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
            outs = self.lm.model.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params,
                                          use_tqdm=False)
            return [[float(pos[tok].logprob) for pos, tok in zip(out.prompt_logprobs[1:], seq[1:])]
                    for out, seq in zip(outs, sequences)]
        import torch

        model = self.lm.model
        result = []
        for seq in sequences:
            with torch.no_grad():
                logits = model(torch.tensor([seq], device=model.device)).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            result.append(logp.gather(1, torch.tensor(seq[1:], device=logp.device)[:, None])[:, 0].tolist())
        return result

    def speed(self, source_ids: list[int], concurrency: tuple[int, ...] = (1, 8, 32), prompt_tokens: int = 128,
              output_tokens: int = 64) -> list[dict[str, Any]]:
        """Offline vLLM, all requests of a level submitted together. Every request has its own prompt (its first
        token differs from every other request's, so vLLM's prefix cache can never serve one from another),
        and the warm-up prompt is never measured. batch_ttft_s: wall time until every request of the level
        has its first token (prefill + one step); output_tokens_per_s: generated tokens over the wall time
        of a separate batch of fresh prompts generating `output_tokens` each."""
        if self.kind != "vllm":
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.lm.model
        body = (source_ids * (prompt_tokens // max(len(source_ids), 1) + 2))[: prompt_tokens * 4]
        counter = iter(range(10**6))

        def fresh(n: int) -> list:
            out = []
            for _ in range(n):
                k = next(counter)
                start = (k * 37) % (len(body) - prompt_tokens)
                ids = body[start:start + prompt_tokens]
                out.append(TokensPrompt(prompt_token_ids=[100 + k] + ids[1:]))  # a distinct first token
            return out

        llm.generate(fresh(1), SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up, not measured
        rows = []
        for level in concurrency:
            batch = fresh(level)
            start = time.monotonic()
            llm.generate(batch, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), use_tqdm=False)
            ttft = time.monotonic() - start
            batch = fresh(level)
            start = time.monotonic()
            outs = llm.generate(batch, SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True),
                                use_tqdm=False)
            wall = time.monotonic() - start
            generated = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append({"concurrency": level, "output_tokens_per_s": round(generated / wall, 2),
                         "batch_ttft_s": round(ttft, 4), "request_latency_s": round(wall, 3),
                         "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
                         "distinct_prompts": True})
        return rows
