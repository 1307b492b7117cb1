# A Qwen-Image-Edit-2509 or -2511 folder in the published layout (QwenImageEditPlusPipeline, with processor/) made
# from a Qwen-Image folder of the same sizes: every weight file is a symbolic link to MODEL's (the edit checkpoints
# have the text-to-image shapes; random weights are random weights), model_index.json names the edit pipeline and
# processor/, transformer/config.json gains `zero_cond_t` for 2511. Also writes OUT/input.png, a deterministic
# SIZE x SIZE RGB input image (PIL; gradients and a disc), for the edit timings.
# processor/ is MODEL's tokenizer files and PREPROCESSOR_CONFIG (the tiny Edit fixture's: the published values), as
# the published folders hold them (regular files: the carried tree's links are not relied on).
# usage: make_edit_folder.py MODEL OUT 2509|2511 PREPROCESSOR_CONFIG [SIZE=1024]
import json, os, shutil, sys

model, out, variant, preprocessor = sys.argv[1:5]
size = int(sys.argv[5]) if len(sys.argv) > 5 else 1024
if variant not in ("2509", "2511"):
    sys.exit(f"variant {variant}: want 2509 or 2511")
model = os.path.abspath(model)
os.makedirs(out, exist_ok=True)
for sub in ("scheduler", "text_encoder", "tokenizer", "vae"):
    dst = os.path.join(out, sub)
    if os.path.lexists(dst):
        os.remove(dst) if os.path.islink(dst) else shutil.rmtree(dst)
    os.symlink(os.path.join(model, sub), dst)
tr = os.path.join(out, "transformer")
shutil.rmtree(tr, ignore_errors=True)
os.makedirs(tr)
for f in os.listdir(os.path.join(model, "transformer")):
    if f != "config.json":
        os.symlink(os.path.join(model, "transformer", f), os.path.join(tr, f))
cfg = json.load(open(os.path.join(model, "transformer", "config.json")))
if variant == "2511":
    cfg["zero_cond_t"] = True
json.dump(cfg, open(os.path.join(tr, "config.json"), "w"), indent=2)
index = json.load(open(os.path.join(model, "model_index.json")))
index["_class_name"] = "QwenImageEditPlusPipeline"
index["processor"] = ["transformers", "Qwen2VLProcessor"]
json.dump(index, open(os.path.join(out, "model_index.json"), "w"), indent=2)
proc = os.path.join(out, "processor")
shutil.rmtree(proc, ignore_errors=True)
shutil.copytree(os.path.join(model, "tokenizer"), proc)
shutil.copy(preprocessor, os.path.join(proc, "preprocessor_config.json"))

from PIL import Image
import numpy as np
y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).astype(np.float32)
rgb = np.stack([x, y, 0.5 * (1 - disc) + disc], axis=-1)
Image.fromarray((rgb * 255).round().astype(np.uint8)).save(os.path.join(out, "input.png"))
print(json.dumps({"what": "edit folder", "out": out, "variant": variant, "input": f"{size}x{size}"}), flush=True)
