"""What one decoder layer of an 8B Llama costs on a GPU over a calibration job of 512 x 2048 tokens, outside
any library: the forward pass with SDPA (fused causal kernel, no mask) against eager attention (what
llm-compressor 0.14 forces for calibration), batch 1 and 8; the same forward with GPTQ's Hessian products
(bf16 tensor cores, fp32 sums, one product per distinct input, as the quantize stage computes them); the
down_proj Hessian alone (bf16 batch 1 and 8, TF32); and a torch.compile'd forward. Random weights; times
extrapolated from 64 forwards to 512 samples.

    python benchmarks/gpu_layer_forward.py      # from the repository root, on a CUDA machine

Measured on the lent H200 (2026-12-04): SDPA 0.90 s, eager 1.46 s per forward of 512 samples; with the
Hessians 1.95 s; compiled 0.70 s. The stage runs each layer's forward twice (calibration, then propagation).
"""
import sys, time, torch
sys.path.insert(0, "benchmarks")
from gpu_gptq_8b import LLAMA3_8B
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

cfg = LlamaConfig(**LLAMA3_8B)
def make(attn):
    cfg._attn_implementation = attn
    return LlamaDecoderLayer(cfg, 0).to("cuda", torch.bfloat16).eval()
rope = LlamaRotaryEmbedding(cfg).cuda()
S, N = 2048, 512
def timeit(fn, reps):
    fn(); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(reps): fn()
    torch.cuda.synchronize(); return time.perf_counter() - t
for attn in ("sdpa", "eager"):
    layer = make(attn)
    for B in (1, 8):
        x = torch.randn(B, S, 4096, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(S, device="cuda")[None].expand(B, -1)
        pe = rope(x, pos)
        with torch.no_grad():
            t = timeit(lambda: layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos), 32 // B * 2)
        print(f"{attn} batch {B}: forward of {N} samples {t * N / (64):.2f} s", flush=True)
    del layer
layer = make("sdpa")
x = torch.randn(1, S, 4096, device="cuda", dtype=torch.bfloat16)
pos = torch.arange(S, device="cuda")[None]; pe = rope(x, pos)
H = {n: torch.zeros(m.in_features, m.in_features, device="cuda") for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
last = {}
def hook(name):
    def h(mod, args):
        a = args[0].reshape(-1, args[0].shape[-1])
        if last.get("i") is args[0]:
            H[name].add_(last["p"], alpha=2.0)
        elif H[name].numel() * 4 <= 256 * 2**20:
            last.update(i=args[0], p=torch.mm(a.t(), a, out_dtype=torch.float32)); H[name].add_(last["p"], alpha=2.0)
        else:
            last.clear(); torch.addmm(H[name], a.t(), a, out_dtype=torch.float32, alpha=2.0, out=H[name])
    return h
hs = [m.register_forward_pre_hook(hook(n)) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
with torch.no_grad():
    t = timeit(lambda: layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos), 64)
print(f"sdpa batch 1 + Hessian hooks: {t * N / 64:.2f} s", flush=True)
for h in hs: h.remove()
a = torch.randn(S, 14336, device="cuda", dtype=torch.bfloat16); Hd = torch.zeros(14336, 14336, device="cuda")
t = timeit(lambda: torch.addmm(Hd, a.t(), a, out_dtype=torch.float32, alpha=2.0, out=Hd), 32)
print(f"down_proj Hessian alone, batch 1: {t * N / 32:.2f} s", flush=True)
a8 = torch.randn(8 * S, 14336, device="cuda", dtype=torch.bfloat16)
t = timeit(lambda: torch.addmm(Hd, a8.t(), a8, out_dtype=torch.float32, alpha=2.0, out=Hd), 8)
print(f"down_proj Hessian alone, batch 8: {t * N / 64:.2f} s", flush=True)
tf = torch.randn(S, 14336, device="cuda", dtype=torch.float32)
torch.backends.cuda.matmul.allow_tf32 = True
t = timeit(lambda: torch.addmm(Hd, tf.t(), tf, alpha=2.0, out=Hd), 16)
print(f"down_proj Hessian TF32, batch 1: {t * N / 16:.2f} s", flush=True)
try:
    comp = torch.compile(layer)
    with torch.no_grad():
        t0 = time.perf_counter(); comp(x, position_embeddings=pe, attention_mask=None, position_ids=pos); torch.cuda.synchronize()
        print(f"compile {time.perf_counter() - t0:.1f} s", flush=True)
        t = timeit(lambda: comp(x, position_embeddings=pe, attention_mask=None, position_ids=pos), 64)
    print(f"compiled sdpa batch 1: {t * N / 64:.2f} s", flush=True)
except Exception as e:
    print("compile failed", type(e).__name__, str(e)[:200])
print(torch.__version__, torch.cuda.get_device_name(0))
