# Relative error ‖a − b‖/‖b‖ of every tensor that two safetensors files both hold under the same name
# (b = the reference), one JSON line each; shapes must match exactly (no silent reshaping). For a tensor
# named "decoded" ([1, 3, H, W] in [−1, 1]) it also prints the largest and mean difference in 8-bit levels.
# With --base JSON, each line is that object plus what="fidelity" and the tensor's fields (the
# benches/README.md rows: system, gpu, width, height, steps, cfg, dtype, ours, reference).
# usage: compare_tensors.py OURS.safetensors REFERENCE.safetensors [--base JSON]
import argparse, json, sys
from safetensors.torch import load_file

p = argparse.ArgumentParser()
p.add_argument("ours"); p.add_argument("reference")
p.add_argument("--base", type=json.loads, default=None)
args = p.parse_args()
a, b = load_file(args.ours), load_file(args.reference)
shared = sorted(set(a) & set(b))
if not shared:
    sys.exit(f"no tensor name in common: {sorted(a)} vs {sorted(b)}")
for k in shared:
    x, y = a[k].float(), b[k].float()
    if x.shape != y.shape:
        row = {"tensor": k, "shape_mismatch": [list(x.shape), list(y.shape)]}
    else:
        rel = ((x - y).norm() / y.norm()).item()
        row = {"tensor": k, "rel_err": float(f"{rel:.3e}"), "finite": bool(x.isfinite().all())}
        if k == "decoded":
            px = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round()
            d = (px(x) - px(y)).abs(); row.update(px_max=d.max().item(), px_mean=round(d.mean().item(), 3))
    if args.base is not None:
        row = dict(args.base, what="fidelity", **row)
    print(json.dumps(row), flush=True)
