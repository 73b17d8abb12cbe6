"""Per-layer cost of GPTQ W4A16 g128 through llm-compressor on one GPU, for a model too big to run whole:
a Llama of the given shape (random weights, no download) with A and then B decoder layers, each in its own
process, the same calibration job (samples x tokens). The difference is what one more layer costs; the
projection for the whole model is the A-layer run plus (L - A) layers at that rate.

    python benchmarks/gpu_gptq_layers.py --tokenizer DIR --shape 70b [--layers 1 2] [--samples 512] [--seq-len 2048]

Prints, per run: wall time of oneshot, GPU peak allocated/reserved, host peak RSS; then per layer and the
projection (time, host RAM, GPU memory, and the checkpoint's disk size from the planner's bytes per weight).
Runs where an NVIDIA GPU is (the project's `device` tool); needs llmcompressor + compressed-tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from gpu_gptq_8b import LLAMA3_8B, build_model

# the same random-weights Llama as benchmarks/gpu_gptq_8b.py (beside this file), of either shape
SHAPES = {
    "8b": LLAMA3_8B,
    "70b": {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64},  # Llama-3.1-70B's config (8 KV heads, vocabulary and RoPE as 8B's)
}


def one_run(shape: str, layers: int, samples: int, seq_len: int, tokenizer: str) -> dict:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoTokenizer

    model = build_model(layers, SHAPES[shape])
    config = model.config
    ids = torch.randint(0, config.vocab_size, (samples, seq_len), generator=torch.Generator().manual_seed(1)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * seq_len] * samples})
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.monotonic()
    oneshot(model=model, recipe=[GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])], dataset=data,
            num_calibration_samples=samples, max_seq_length=seq_len, shuffle_calibration_samples=False,
            sequential_offload_device="cuda", processor=AutoTokenizer.from_pretrained(tokenizer))
    wall = time.monotonic() - start
    return {"layers": layers, "wall_s": round(wall, 1),
            "gpu_peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            "gpu_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1),
            "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
            "host_rss_before_gib": round(rss_before, 1),
            "params": sum(p.numel() for p in model.parameters()), "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), default="70b")
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 2], metavar=("A", "B"))
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--tokenizer", required=True, help="any tokenizer folder (samples are token ids already)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: a single run, JSON on stdout
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.shape, args.one, args.samples, args.seq_len, args.tokenizer)), flush=True)
        return
    runs = []
    for layers in args.layers:
        out = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--samples", str(args.samples),
                              "--seq-len", str(args.seq_len), "--tokenizer", args.tokenizer, "--one", str(layers)], capture_output=True, text=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"run with {layers} layers failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        runs.append(json.loads(line[7:]))
        print(json.dumps(runs[-1]), flush=True)
    a, b = runs
    n = b["layers"] - a["layers"]
    per_layer_s = (b["wall_s"] - a["wall_s"]) / n
    per_layer_host = (b["host_peak_rss_gib"] - a["host_peak_rss_gib"]) / n
    total_layers = SHAPES[args.shape]["num_hidden_layers"]
    projected_s = a["wall_s"] + per_layer_s * (total_layers - a["layers"])
    projected_host = a["host_peak_rss_gib"] + per_layer_host * (total_layers - a["layers"])
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from quantbuild.evaluate.planner import plan

    _, rows = plan({**SHAPES[args.shape], "tie_word_embeddings": False})
    disk = next(r.weights_gb for r in rows if r.precision.startswith("w4"))
    print(f"{a['gpu']}, torch {a['torch']}; GPTQ W4A16 g128, {args.samples} x {args.seq_len} tokens, activations "
          f"on the GPU, TF32 Hessians")
    print(f"per decoder layer: {per_layer_s:.1f} s, host RSS +{per_layer_host:.2f} GiB; GPU peak "
          f"{b['gpu_peak_alloc_gib']} GiB allocated / {b['gpu_peak_reserved_gib']} GiB reserved at {b['layers']} layers")
    print(f"projected for all {total_layers} layers: {projected_s / 60:.1f} min of oneshot, host peak RSS "
          f"{projected_host:.0f} GiB, GPU peak ~{b['gpu_peak_reserved_gib']} GiB reserved (one layer at a time), "
          f"checkpoint ~{disk:.0f} GB on disk")


if __name__ == "__main__":
    main()
