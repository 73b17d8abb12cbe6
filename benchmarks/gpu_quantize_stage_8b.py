"""The quantize stage itself on an 8B-shaped Llama (random weights from Llama-3-8B's config, no download):
GPTQ W4A16 g128 through llm-compressor on 512 calibration samples x 2048 tokens, on one GPU.

Writes the checkpoint (safetensors shards) and a minimal project around it (params.yaml with one gptq
variant, build/inputs/<variant>/calibration.jsonl, .quantbuild/code.yaml), then runs the stage's own entry,
`python -m quantbuild.stages.quantize w4g128`, as its own process, and prints what the issue's goals name:
the stage's wall time (the process, start to exit), its host peak RSS (the stage's record, ru_maxrss of
that process), the GPU memory nvidia-smi reports (highest of polls every 0.2 s, save included) and the
checkpoint it wrote (shards, bytes).

    python benchmarks/gpu_quantize_stage_8b.py --tokenizer DIR [--samples 512] [--seq-len 2048] [--layers 32]
                                               [--weights-device auto|cpu|disk] [--shape 8b|tiny] [--work DIR]

--shape tiny (a 2-layer toy Llama) checks the harness on a CPU-only machine. Needs llmcompressor,
compressed-tensors and quantbuild importable (e.g. PYTHONPATH=src).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_gptq_8b import LLAMA3_8B, build_model  # noqa: E402

SHAPES = {"8b": LLAMA3_8B,
          "tiny": {**LLAMA3_8B, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512,
                   "num_attention_heads": 4, "num_key_value_heads": 2}}
VARIANT = "w4g128"


def write_project(work: Path, shape: str, layers: int, samples: int, seq_len: int, tokenizer: Path,
                  weights_device: str, batch_size: int) -> Path:
    import torch

    project = work / "project"
    model_dir = project / "build/base/model"
    if not (model_dir / "config.json").is_file():
        start = time.monotonic()
        model = build_model(layers, SHAPES[shape])
        model.save_pretrained(model_dir, max_shard_size="5GB")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer / name, model_dir / name)
        del model
        print(f"checkpoint: {layers} layers of {shape} written in {time.monotonic() - start:.0f} s", flush=True)
    params = {"base": {"source": "build/base/model", "dtype": "bfloat16"},
              "calibration": {"n_samples": samples, "seq_len": seq_len},
              "variants": {VARIANT: {"method": "gptq", "backend": "llmcompressor", "bits": 4, "group_size": 128,
                                     "sym": True, "n_samples": samples, "weights_device": weights_device}}}
    if batch_size is not None:
        params["variants"][VARIANT]["batch_size"] = batch_size
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    inputs = project / "build/inputs" / VARIANT
    inputs.mkdir(parents=True, exist_ok=True)
    vocab = SHAPES[shape]["vocab_size"]
    ids = torch.randint(0, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(1)).tolist()
    (inputs / "calibration.jsonl").write_text("".join(json.dumps({"input_ids": row}) + "\n" for row in ids))
    from quantbuild._codeid import CODE_FILE, render_code_file

    (project / CODE_FILE).parent.mkdir(exist_ok=True)
    (project / CODE_FILE).write_text(render_code_file())
    shutil.rmtree(project / "build/variants", ignore_errors=True)
    return project


def hessian_check() -> dict[str, float] | None:
    """Relative error (Frobenius) of the stage's GPU Hessian accumulation (bf16 products, fp32 sums) and of
    llm-compressor's own (fp32 inputs, TF32 products) against an fp32 reference without TF32, on 16 batches of
    2048 x 4096 bf16 activations."""
    import torch

    if not torch.cuda.is_available():
        return None
    from llmcompressor.modifiers.gptq import base

    from quantbuild.quantize._llmcompressor import SharedHessians

    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(1, 2048, 4096, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(16)]
    xs = [x * (1 + 9 * (torch.arange(4096, device="cuda") % 64 == 0)) for x in xs]  # a few outlier channels
    linear = torch.nn.Linear(4096, 8, device="cuda", dtype=torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = sum(2 * x[0].float().t() @ x[0].float() for x in xs)
    out = {}
    for name, allow_tf32 in (("llmcompressor_tf32", True), ("quantbuild_bf16", False)):
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        hessian, n = torch.zeros(4096, 4096, device="cuda"), torch.zeros((), device="cuda")
        with SharedHessians() if name.startswith("quantbuild") else nullcontext():
            for x in xs:
                hessian, n = base.accumulate_hessian(x, linear, hessian, n)
        out[name] = float((hessian - ref).norm() / ref.norm())
    return out


class RssPoll:
    """The stage process's resident memory from /proc every 0.2 s: peaks of RssAnon (its own memory) and
    RssFile (file pages it maps, e.g. safetensors), and the time of the total's peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.start = pid, time.monotonic()
        self.peak = {"total": 0, "anon": 0, "file": 0, "at_s": 0.0}
        self.timeline: list[tuple[float, float, float]] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        last = -10.0
        while True:
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
            except (OSError, ValueError):
                return
            anon = int(fields.get("RssAnon", "0 kB").split()[0]) / 2**20
            file = int(fields.get("RssFile", "0 kB").split()[0]) / 2**20
            now = time.monotonic() - self.start
            if anon + file > self.peak["total"]:
                self.peak = {"total": round(anon + file, 2), "anon": round(anon, 2), "file": round(file, 2),
                             "at_s": round(now, 1)}
            if now - last >= 15:
                self.timeline.append((round(now), round(anon, 1), round(file, 1)))
                last = now
            time.sleep(0.2)


class GpuMemoryPoll:
    """The highest memory.used nvidia-smi reports for GPU 0 while the stage runs (MiB)."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.peak_mib = max(self.peak_mib, int(line))

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--weights-device", default="auto", choices=["auto", "cpu", "disk"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/quantbuild-stage-8b"))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the variant's batch_size (calibration batches); unset: the stage's choice")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from quantbuild._hardware import cpu_info

    if args.write_only:  # the child that builds the checkpoint (its GPU context ends with it)
        write_project(args.work, args.shape, args.layers, args.samples, args.seq_len, args.tokenizer,
                      args.weights_device, args.batch_size)
        print("hessian_check " + json.dumps(hessian_check()), flush=True)
        return
    subprocess.run([sys.executable, __file__, "--write-only", *sys.argv[1:]], check=True)
    project = args.work / "project"
    poll = GpuMemoryPoll()
    time.sleep(1.0)
    idle_mib = poll.peak_mib
    start = time.monotonic()
    stage = subprocess.Popen([sys.executable, "-m", "quantbuild.stages.quantize", VARIANT], cwd=project,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rss = RssPoll(stage.pid)
    returncode = stage.wait()
    wall = time.monotonic() - start
    poll.stop()
    if returncode:
        sys.exit(f"the stage failed (exit {returncode})")
    record = json.loads((project / "build/variants" / VARIANT / "quantize.json").read_text())
    shards = sorted((project / "build/variants" / VARIANT / "model").glob("*.safetensors"))
    info = {"benchmark": "gpu_quantize_stage_8b", "shape": args.shape, "layers": args.layers,
            "samples": args.samples, "seq_len": args.seq_len, "weights_device": args.weights_device,
            "stage_wall_s": round(wall, 1), "quantize_s": record["seconds"], "phases_s": record.get("phases_s"),
            "batch_size": record["settings"]["batch_size"],
            "host_peak_rss_gib": round(record["peak_rss_mb"] / 1024, 2),
            "host_rss_polled_peak_gib": rss.peak, "host_rss_timeline_s_anon_file": rss.timeline,
            "gpu_peak_allocated_gib": record.get("gpu_peak_allocated_gib"),
            "gpu_peak_reserved_gib": record.get("gpu_peak_reserved_gib"),
            "gpu_nvidia_smi_peak_gib": round(poll.peak_mib / 1024, 2), "gpu_idle_gib": round(idle_mib / 1024, 2),
            "shards": len(shards), "largest_shard_gb": round(max(p.stat().st_size for p in shards) / 1e9, 2),
            "checkpoint_gb": round(sum(p.stat().st_size for p in shards) / 1e9, 2),
            "module_losses": len(record.get("module_loss") or []), "cpu": cpu_info()["model"],
            "versions": record.get("versions")}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    print(json.dumps(info, indent=1))
    print(f"stage wall {wall:.1f} s (goal <= 150), host peak RSS {info['host_peak_rss_gib']} GiB (goal <= 8), "
          f"GPU {info['gpu_nvidia_smi_peak_gib']} GiB in nvidia-smi (goal <= 20), {len(shards)} shard(s)")


if __name__ == "__main__":
    main()
