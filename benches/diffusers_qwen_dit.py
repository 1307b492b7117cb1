#!/usr/bin/env python3
"""Reference timing: diffusers' QwenImageTransformer2DModel, full size, random bf16 weights.

Times one denoising step with true CFG, so the project's own step time can be
compared on the same card in the same device call. Prints one JSON line per measurement,
in the benches/README.md schema (system diffusers-eager / diffusers-compile, what "step",
with the note "transformer only, <mode>, txt <n>/<neg>").

--mode pipeline (default) does what QwenImagePipeline does: two batch-1 transformer calls,
prompt then negative prompt, each with its own text length and no mask (the pipeline
drops an all-ones mask). --mode batched makes one batch-2 call with the shorter text
padded and masked (what a CFG-batching engine computes).

usage: diffusers_qwen_dit.py [--res 1024] [--width W --height H] [--layers 60]
                             [--mode pipeline|batched] [--txt 100] [--neg-txt 6]
                             [--iters 5] [--compile]
Needs torch (present on the device image) and diffusers (carry its wheel).
"""
import argparse
import json
import time

import torch
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=1024)
p.add_argument("--width", type=int)
p.add_argument("--height", type=int)
p.add_argument("--layers", type=int, default=60)
p.add_argument("--mode", choices=["pipeline", "batched"], default="pipeline")
p.add_argument("--txt", type=int, default=100, help="prompt tokens after the template drop")
p.add_argument("--neg-txt", type=int, default=6, help="negative prompt tokens (\" \" gives 6)")
p.add_argument("--iters", type=int, default=5)
p.add_argument("--compile", action="store_true")
a = p.parse_args()
W, H = a.width or a.res, a.height or a.res
gw, gh = W // 16, H // 16

torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = QwenImageTransformer2DModel(num_layers=a.layers).eval()

x1 = torch.randn(1, gh * gw, 64, device="cuda")
t1 = torch.full((1,), 0.5, device="cuda")
shapes1 = [[(1, gh, gw)]]
pos, neg = torch.randn(1, a.txt, 3584, device="cuda"), torch.randn(1, a.neg_txt, 3584, device="cuda")
if a.mode == "batched":
    x2, t2, shapes2 = x1.repeat(2, 1, 1), t1.repeat(2), shapes1 * 2
    ctx = torch.zeros(2, max(a.txt, a.neg_txt), 3584, device="cuda")
    ctx[0, :a.txt], ctx[1, :a.neg_txt] = pos[0], neg[0]
    mask = torch.zeros(2, ctx.shape[1], device="cuda")
    mask[0, :a.txt], mask[1, :a.neg_txt] = 1, 1


def step(m):
    with torch.inference_mode():
        if a.mode == "batched":
            return m(hidden_states=x2, encoder_hidden_states=ctx, encoder_hidden_states_mask=mask,
                     timestep=t2, img_shapes=shapes2, return_dict=False)[0]
        cond = m(hidden_states=x1, encoder_hidden_states=pos, timestep=t1, img_shapes=shapes1, return_dict=False)[0]
        uncond = m(hidden_states=x1, encoder_hidden_states=neg, timestep=t1, img_shapes=shapes1, return_dict=False)[0]
        return cond, uncond


def flops():
    img = txt = 0
    for name, prm in model.named_parameters():
        if "transformer_blocks" not in name:
            continue
        leaf = name.split(".attn.")[-1]
        if "img_mlp" in name or leaf.startswith(("to_q", "to_k", "to_v", "to_out")):
            img += prm.numel()
        elif "txt_mlp" in name or leaf.startswith(("add_", "to_add_out")):
            txt += prm.numel()
    total = 0
    for n in (a.txt, a.neg_txt):
        seq = gh * gw + n
        total += 2 * img * gh * gw + 2 * txt * n + a.layers * 4 * seq * seq * 3072
    return total


def timed(m, label):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(2):  # warm-up (for torch.compile: the compilation)
        step(m)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.iters):
        step(m)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - start) / a.iters
    # benches/README.md schema; "steps" is null: one step of no particular schedule
    print(json.dumps({"system": label, "gpu": torch.cuda.get_device_name(), "width": W, "height": H,
                      "steps": None, "cfg": 4.0, "dtype": "bf16", "what": "step", "ms": round(dt * 1e3, 2),
                      "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                      "note": f"transformer only, {a.mode}, txt {a.txt}/{a.neg_txt}",
                      "layers": a.layers, "warmup_ms": round(warmup * 1e3, 1), "tflops": round(flops() / dt / 1e12)}),
          flush=True)


timed(model, "diffusers-eager")
if a.compile:
    timed(torch.compile(model), "diffusers-compile")
