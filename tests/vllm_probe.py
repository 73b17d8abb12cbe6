"""Run in the serve environment: load each model folder in vLLM (CPU) and report, for fixed token
sequences, the top-1 next-token prediction and its log-probability at every position, plus a
greedy continuation. Prints one JSON object. Usage: python vllm_probe.py SEQS.json MODEL_DIR..."""

import json
import sys
import time

if __name__ == "__main__":
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as the evaluate stage runs it on a CPU
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    sequences = json.load(open(sys.argv[1]))
    results = {}
    for model_dir in sys.argv[2:]:
        start = time.monotonic()
        llm = LLM(model=model_dir, enforce_eager=True, max_model_len=1024, dtype="bfloat16", seed=0,
                  max_logprobs=5)
        loaded = time.monotonic() - start
        params = SamplingParams(max_tokens=8, temperature=0.0, prompt_logprobs=5)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params)
        top1, top_logprobs = [], []
        for out in outputs:
            row, lp = [], []
            for position in out.prompt_logprobs[1:]:
                best = max(position.items(), key=lambda kv: kv[1].logprob)
                row.append(best[0])
                lp.append({str(k): v.logprob for k, v in position.items()})
            top1.append(row)
            top_logprobs.append(lp)
        results[model_dir] = {"load_seconds": loaded, "top1": top1, "logprobs": top_logprobs,
                              "greedy": [o.outputs[0].token_ids for o in outputs],
                              "text": [o.outputs[0].text for o in outputs]}
        del llm
    print("PROBE-JSON " + json.dumps(results))
