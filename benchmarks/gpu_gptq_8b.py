"""GPTQ W4A16 g128 of an 8B-shaped Llama (random weights from Llama-3-8B's config, no download) with
512 calibration samples x 2048 tokens, through llm-compressor's sequential pipeline on one GPU.
Prints wall time of the quantization and the GPU's peak memory.

    python benchmarks/gpu_gptq_8b.py --tokenizer DIR [--samples 512] [--seq-len 2048] [--batch-size 1] [--layers 32]
                                     [--offload-device cpu|cuda] [--tf32]

--offload-device cuda keeps the activations between layers on the GPU (llm-compressor's default, cpu,
moves them over PCIe every layer); --tf32 lets the fp32 Hessian accumulation use tensor cores.

Runs where an NVIDIA GPU is (the project's `device` tool); needs llmcompressor + compressed-tensors.
"""

from __future__ import annotations

import argparse
import time

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)


def build_model(layers: int, shape: dict = LLAMA3_8B):
    """A Llama of `shape` (config keys) with `layers` decoder layers and random bf16 weights, on the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**shape, "num_hidden_layers": layers})
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    draw = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=draw).manual_seed(0)
    with torch.no_grad():  # random weights at the init's scale: drawn on the GPU (fast), kept on the CPU
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.fill_(1.0)
            else:
                block = torch.empty(param.shape, dtype=torch.bfloat16, device=draw)
                param.copy_(block.normal_(0.0, 0.02, generator=gen).cpu())
                del block
    model.config.use_cache = False
    # llm-compressor re-reads the config from model.config.name_or_path: give it one on disk.
    import tempfile

    folder = tempfile.mkdtemp(prefix="llama-config-")
    model.config.save_pretrained(folder)
    model.config.name_or_path = folder
    return model


def main() -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--offload-device", default="cpu", help="where activations wait between layers")
    parser.add_argument("--tf32", action="store_true", help="TF32 tensor cores for fp32 matmuls (the Hessians)")
    parser.add_argument("--tokenizer", required=True, help="any tokenizer folder: samples are token ids already")
    args = parser.parse_args()
    start = time.monotonic()
    model = build_model(args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params / 1e9:.2f} B-parameter Llama ({args.layers} layers) on CPU in "
          f"{time.monotonic() - start:.0f}s", flush=True)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, LLAMA3_8B["vocab_size"], (args.samples, args.seq_len), generator=gen).tolist()
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * args.seq_len] * args.samples})
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)  # llm-compressor wants a processor
    recipe = [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.cuda.reset_peak_memory_stats()
    start = time.monotonic()
    oneshot(model=model, recipe=recipe, dataset=data, num_calibration_samples=args.samples,
            max_seq_length=args.seq_len, batch_size=args.batch_size, shuffle_calibration_samples=False,
            processor=tokenizer, sequential_offload_device=args.offload_device)
    wall = time.monotonic() - start
    peak_alloc = torch.cuda.max_memory_allocated() / 2**30
    peak_reserved = torch.cuda.max_memory_reserved() / 2**30
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    print(f"GPTQ W4A16 g128, {args.samples} x {args.seq_len} tokens, batch {args.batch_size}, "
          f"activations on {args.offload_device}, tf32 {args.tf32}, {args.layers} layers: "
          f"wall {wall:.1f} s ({wall / 60:.2f} min); GPU peak allocated {peak_alloc:.1f} GiB, "
          f"reserved {peak_reserved:.1f} GiB (goal <= 5 min and <= 20 GiB)")


if __name__ == "__main__":
    main()
