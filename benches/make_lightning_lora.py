#!/usr/bin/env python3
"""A full-size random LoRA for the Qwen-Image transformer in the layout of the Qwen-Image-Lightning
release files (kohya keys with dots, no prefix): for each of the 60 blocks and each of its linear
layers, `transformer_blocks.{i}.{layer}.lora_down.weight` [r, in], `.lora_up.weight` [out, r] and
`.alpha` (a scalar, = r), bf16, rank 64 (1.2 GB). Random values: it times loading and fusing, not
what a trained adapter draws.
    usage: python3 make_lightning_lora.py OUT.safetensors [RANK]
"""

import sys

import torch
from safetensors.torch import save_file

D, FF, BLOCKS = 3072, 12288, 60
LAYERS = {  # name: (out, in)
    "attn.to_q": (D, D), "attn.to_k": (D, D), "attn.to_v": (D, D), "attn.to_out.0": (D, D),
    "attn.add_q_proj": (D, D), "attn.add_k_proj": (D, D), "attn.add_v_proj": (D, D), "attn.to_add_out": (D, D),
    "img_mlp.net.0.proj": (FF, D), "img_mlp.net.2": (D, FF),
    "txt_mlp.net.0.proj": (FF, D), "txt_mlp.net.2": (D, FF),
    "img_mod.1": (6 * D, D), "txt_mod.1": (6 * D, D),
}


def main():
    out = sys.argv[1]
    rank = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    g = torch.Generator().manual_seed(0)
    t = {}
    for i in range(BLOCKS):
        for name, (o, n) in LAYERS.items():
            k = f"transformer_blocks.{i}.{name}"
            t[f"{k}.lora_down.weight"] = (torch.randn(rank, n, generator=g) / n**0.5).to(torch.bfloat16)
            t[f"{k}.lora_up.weight"] = (torch.randn(o, rank, generator=g) * 1e-3).to(torch.bfloat16)
            t[f"{k}.alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
    save_file(t, out)
    print(f"{out}: {len(t)} tensors, {sum(v.numel() * 2 for v in t.values()) / 1e9:.2f} GB, rank {rank}")


if __name__ == "__main__":
    main()
