# diffusers QwenImageEditPlusPipeline (Edit-2509 / -2511 folders) timed as a user runs it: images and instruction in,
# image out, at W x H (bf16 on CUDA): one warm-up edit, then EDITS (3) timed ones, each with its peak memory.
# Timing lines use the benches/README.md schema (system, gpu, width, height, steps, cfg, dtype, what, ms, peak_gb)
# plus `edit` (the input images' count): load (from_pretrained + to(cuda)), then per edit: edit (images in, PIL image
# out), step (median of the intervals between step callbacks, mean_ms beside it).
# usage: diffusers_qwen_edit.py MODEL CFG PROMPT NEGATIVE RES (1024 or WxH) IMAGE.png [IMAGE.png ...]
#        env: EDITS=3, STEPS=50
import json, os, resource, sys, time
import torch
from diffusers import QwenImageEditPlusPipeline
from PIL import Image

model, cfg, prompt, neg, res = sys.argv[1:6]
paths = sys.argv[6:]
if not paths:
    sys.exit("give at least one input image")
cfg = float(cfg)
W, H = (int(v) for v in res.split("x")) if "x" in res else (int(res), int(res))
EDITS, STEPS = int(os.environ.get("EDITS", "3")), int(os.environ.get("STEPS", "50"))
CUDA = torch.cuda.is_available()  # the CPU for a try on the tiny folders
DEV = "cuda" if CUDA else "cpu"
images = [Image.open(p).convert("RGB") for p in paths]
base = {"system": "diffusers-eager", "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu", "width": W, "height": H, "steps": STEPS,
        "cfg": cfg, "dtype": "bf16", "edit": len(images)}


def row(what, ms, peak_gb, **extra):
    print(json.dumps(dict(base, what=what, ms=round(ms, 2), peak_gb=peak_gb, **extra)), flush=True)


def peak():
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if CUDA else None


def sync():
    if CUDA:
        torch.cuda.synchronize()


def reset_peak():
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def rss():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)


reset_peak()
t0 = time.time()
pipe = QwenImageEditPlusPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to(DEV)
sync()
row("load", (time.time() - t0) * 1000, peak(), rss_gb=rss())
pipe.set_progress_bar_config(disable=True)

stamps = []
def cb(p, i, t, kw):
    sync(); stamps.append(time.time()); return kw
for rep in range(-1, EDITS):  # rep -1: warm-up, not recorded
    stamps.clear()
    reset_peak()
    sync(); t0 = time.time()
    out = pipe(image=images, prompt=prompt, negative_prompt=neg if cfg > 1 else None, true_cfg_scale=cfg,
               num_inference_steps=STEPS, height=H, width=W, generator=torch.Generator(DEV).manual_seed(max(rep, 0)),
               callback_on_step_end=cb).images[0]
    sync(); total = time.time() - t0
    if rep < 0:
        continue
    steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    p = peak()
    row("edit", total * 1000, p, run=rep, rss_gb=rss())
    if steps:  # one step has no interval
        row("step", steps[len(steps) // 2] * 1000, p, run=rep, mean_ms=round(sum(steps) / len(steps) * 1000, 2))
