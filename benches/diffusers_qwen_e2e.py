# diffusers QwenImagePipeline on a model folder (bf16 on CUDA; DTYPE=f32 for float32): prompt embeddings, final
# latents for each step count of STEPS_LIST from the given packed initial latents, the clamped decoder output of
# the last, all saved to OUT.safetensors; then (unless SKIP_TIMING=1) timed 50-step runs from a seed as a user
# runs it (prompt in, image out): one warm-up image, then IMAGES (3) timed ones, each with its peak memory.
# Saved names: prompt_emb, negative_emb [1, L, 3584]; latents_N [1, L_img, 64] (packed) for each N; decoded
# [1, 3, H, W] in [-1, 1].
# Timing lines use the benches/README.md schema (system, gpu, width, height, steps, cfg, dtype, what, ms, peak_gb):
# load (from_pretrained + to(cuda)), then per image: image (prompt in, PIL image out), step (median of the
# intervals between step callbacks), and, timed on their own once warm: encode (both prompts), decode (VAE).
# SKIP_DUMP=1: timing only (no LATENTS read, no OUT written; the decode is timed on random latents of the image's
# shape, and the last image goes to OUT with .png for .safetensors).
# LORA=FILE: load_lora_weights + fuse_lora after the load (timed in `load`, and alone as `lora`); LIGHTNING=1: the
# Qwen-Image-Lightning scheduler configuration (dynamic shift mu = ln 3 at every size, no terminal stretch; give
# STEPS=8 and CFG 1); rows then carry `lora` and `lightning`.
# usage: diffusers_qwen_e2e.py MODEL LATENTS.safetensors OUT.safetensors STEPS_LIST CFG PROMPT NEGATIVE RES (1024 or WxH)
#        env: DTYPE=f32, SKIP_TIMING=1, SKIP_DUMP=1, IMAGES=3, STEPS=50, LORA=FILE, LIGHTNING=1
import json, math, os, resource, sys, time
import torch
from diffusers import QwenImagePipeline
from safetensors.torch import load_file, save_file

model, lat_path, out, steps_list, cfg, prompt, neg, res = sys.argv[1:9]
steps_list = [int(s) for s in steps_list.split(",")]; cfg = float(cfg)
W, H = (int(v) for v in res.split("x")) if "x" in res else (int(res), int(res))
F32 = os.environ.get("DTYPE") == "f32"
DT = torch.float32 if F32 else torch.bfloat16
IMAGES, STEPS = int(os.environ.get("IMAGES", "3")), int(os.environ.get("STEPS", "50"))
SKIP_DUMP, SKIP_TIMING = bool(os.environ.get("SKIP_DUMP")), bool(os.environ.get("SKIP_TIMING"))
if SKIP_DUMP and SKIP_TIMING:
    sys.exit("SKIP_DUMP and SKIP_TIMING together leave nothing to do")
gpu = torch.cuda.get_device_name(0)
base = {"system": "diffusers-eager", "gpu": gpu, "width": W, "height": H, "steps": STEPS, "cfg": cfg,
        "dtype": "f32" if F32 else "bf16"}
LORA, LIGHTNING = os.environ.get("LORA"), bool(os.environ.get("LIGHTNING"))
if LORA:
    base["lora"] = [os.path.basename(LORA) + ":1"]
if LIGHTNING:
    base["lightning"] = True


def row(what, ms, peak_gb, **extra):
    print(json.dumps(dict(base, what=what, ms=round(ms, 2), peak_gb=peak_gb, **extra)), flush=True)


def peak():
    return round(torch.cuda.max_memory_allocated() / 1e9, 2)


torch.cuda.reset_peak_memory_stats()
t0 = time.time()
pipe = QwenImagePipeline.from_pretrained(model, torch_dtype=DT).to("cuda")
torch.cuda.synchronize()
lora_s = None
if LORA:
    t1 = time.time()
    pipe.load_lora_weights(LORA)
    pipe.fuse_lora()
    torch.cuda.synchronize(); lora_s = time.time() - t1
if LIGHTNING:
    from diffusers import FlowMatchEulerDiscreteScheduler
    sc = dict(pipe.scheduler.config)
    sc.update(base_shift=math.log(3), max_shift=math.log(3), shift_terminal=None, use_dynamic_shifting=True,
              time_shift_type="exponential", shift=1.0)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(sc)
load = time.time() - t0
load_peak = peak()
pipe.set_progress_bar_config(disable=True)
if SKIP_DUMP:
    # latents of the image's shape for the decode timing below (the values do not change the time)
    z = torch.randn(1, 16, 1, H // pipe.vae_scale_factor, W // pipe.vae_scale_factor, device="cuda", dtype=pipe.vae.dtype)
else:
    lat0 = load_file(lat_path)["latents"].to("cuda")
    dump = {}
    with torch.no_grad():
        pe, pm = pipe.encode_prompt(prompt, device="cuda", num_images_per_prompt=1, max_sequence_length=512)
        ne, nm = pipe.encode_prompt(neg, device="cuda", num_images_per_prompt=1, max_sequence_length=512)
        dump["prompt_emb"] = pe.float().cpu()[0:1]; dump["negative_emb"] = ne.float().cpu()[0:1]
        for s in steps_list:
            lat = pipe(prompt=prompt, negative_prompt=neg, true_cfg_scale=cfg, num_inference_steps=s, height=H, width=W,
                       latents=lat0.clone().to(DT), output_type="latent").images
            dump[f"latents_{s}"] = lat.float().cpu()
        z = pipe._unpack_latents(lat, H, W, pipe.vae_scale_factor).to(pipe.vae.dtype)
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1).to(z.device, z.dtype)
        std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1).to(z.device, z.dtype)
        z = z / std + mean
        img = pipe.vae.decode(z, return_dict=False)[0][:, :, 0]
        dump["decoded"] = img.float().clamp(-1, 1).cpu()
    save_file({k: v.contiguous() for k, v in dump.items()}, out)
    print(json.dumps({"what": "dump", "out": out, "dtype": base["dtype"],
                      "tensors": {k: list(v.shape) for k, v in dump.items()}}), flush=True)
if SKIP_TIMING: sys.exit(0)
row("load", load * 1000, load_peak, rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2))
if lora_s is not None:
    row("lora", lora_s * 1000, load_peak, note="load_lora_weights + fuse_lora")

# timed runs as a user would: prompt in, image out
stamps = []
def cb(p, i, t, kw):
    torch.cuda.synchronize(); stamps.append(time.time()); return kw
for rep in range(-1, IMAGES):  # rep -1: warm-up, not recorded
    stamps.clear()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize(); t0 = time.time()
    image = pipe(prompt=prompt, negative_prompt=neg if cfg > 1 else None, true_cfg_scale=cfg, num_inference_steps=STEPS, height=H, width=W,
                 generator=torch.Generator("cuda").manual_seed(max(rep, 0)), callback_on_step_end=cb).images[0]
    torch.cuda.synchronize(); total = time.time() - t0
    if rep < 0:
        continue
    steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    p = peak()
    row("image", total * 1000, p, run=rep, rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2))
    row("step", steps[len(steps) // 2] * 1000, p, run=rep, mean_ms=round(sum(steps) / len(steps) * 1000, 2))

# the stages on their own, warm: both prompts encoded; the VAE decode of the dump's latents
with torch.no_grad():
    for what, fn in (("encode", lambda: (pipe.encode_prompt(prompt, device="cuda", max_sequence_length=512),
                                         pipe.encode_prompt(neg, device="cuda", max_sequence_length=512))),
                     ("decode", lambda: pipe.vae.decode(z, return_dict=False))):
        torch.cuda.reset_peak_memory_stats()
        for rep in range(2):
            torch.cuda.synchronize(); t0 = time.time()
            fn()
            torch.cuda.synchronize(); dt = time.time() - t0
        row(what, dt * 1000, peak())
image.save(out.replace(".safetensors", ".png"))
