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
        return args
    # transformers scores rolling windows of max_length; vLLM of max_model_len - 2 (lm-eval's accounting
    # for the prefix token), so these match and the two engines give the same perplexity.
    args = {"pretrained": str(model_dir), "dtype": cfg.dtype, "batch_size": cfg.batch_size,
            "max_length": cfg.max_model_len - 2}
    if cpu:
        args["device"] = "cpu"  # lm-eval's HFLM assumes cuda otherwise
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


class Engine:
    """One loaded model: lm-eval's LM wrapper plus the probes quantbuild adds (logprobs, speed)."""

    def __init__(self, engine: str, model_dir: Path, cfg: EvalConfig):
        self.kind, self.cfg = engine, cfg
        self.cpu = on_cpu()
        self.args = engine_args(engine, model_dir, cfg, self.cpu)
        start = time.monotonic()
        if engine == "vllm":
            if self.cpu:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default is larger
            from lm_eval.models.vllm_causallms import VLLM

            self.lm = VLLM(**self.args)
        else:
            from lm_eval.models.huggingface import HFLM

            self.lm = HFLM(**self.args)
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

    def speed(self, prompts: list[list[int]], concurrency: tuple[int, ...] = (1, 8, 32),
              output_tokens: int = 64) -> list[dict[str, Any]]:
        """Offline vLLM: all requests of a level start together. TTFT is the wall time of that batch with
        one output token (prefill + first token); tokens/s counts generated tokens over the batch's wall time."""
        if self.kind != "vllm":
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.lm.model
        llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], SamplingParams(max_tokens=4), use_tqdm=False)
        rows = []
        for level in concurrency:
            batch = [TokensPrompt(prompt_token_ids=prompts[i % len(prompts)]) for i in range(level)]
            start = time.monotonic()
            llm.generate(batch, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), use_tqdm=False)
            ttft = time.monotonic() - start
            start = time.monotonic()
            outs = llm.generate(batch, SamplingParams(max_tokens=output_tokens, temperature=0.0, ignore_eos=True),
                                use_tqdm=False)
            wall = time.monotonic() - start
            generated = sum(len(o.outputs[0].token_ids) for o in outs)
            rows.append({"concurrency": level, "tokens_per_s": round(generated / wall, 2),
                         "ttft_s": round(ttft, 4), "request_latency_s": round(wall, 3),
                         "prompt_tokens": len(prompts[0]), "output_tokens": output_tokens})
        return rows
