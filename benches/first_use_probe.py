#!/usr/bin/env python3
"""What MLX's first use of an op costs in a fresh process on a CUDA GPU (device machine, MLX's
Python wheel): the cold encode (0.5 s against 20 ms warm) and decode (0.35 s against 62 ms) of a
`qwen-run` image are first uses. Each probe is timed three times: its first run, a second run
of the same shapes, and a first run of other shapes of the same op; one result row per probe
(`what` "first-use", `ms` its first run; width and height those of the 1024² image whose sequence
lengths and decoder sizes the probes use), on stdout.
    usage: python3 first_use_probe.py [GPU_NAME]
"""

import json
import sys
import time

import mlx.core as mx

BF16 = mx.bfloat16


def timed(f):
    mx.synchronize()
    t = time.perf_counter()
    mx.eval(f())
    mx.synchronize()
    return 1e3 * (time.perf_counter() - t)


GPU = sys.argv[1] if len(sys.argv) > 1 else "unknown"


def row(name, first, again=None, other=None):
    first = round(first, 2)
    print(json.dumps({"system": "mlx", "gpu": GPU, "width": 1024, "height": 1024, "dtype": "bf16",
                      "what": "first-use", "probe": name, "first_ms": first,
                      "again_ms": again and round(again, 2), "other_shape_ms": other and round(other, 2),
                      "ms": first}), flush=True)


def probe(name, make, other):
    first = timed(make)
    second = timed(make)
    row(name, first, second, timed(other))


def main():
    t = time.perf_counter()
    mx.eval(mx.zeros((8,)) + 1)
    mx.synchronize()
    row("context", 1e3 * (time.perf_counter() - t))
    k = mx.random.key(0)
    r = lambda *s: mx.random.normal(s, key=k).astype(BF16)  # noqa: E731
    # the text encoder (Qwen2.5-VL 7B, ~40 tokens): its projections and MLP
    x, w1, w2 = r(40, 3584), r(3584, 3584), r(3584, 18944)
    mx.eval(x, w1, w2)
    probe("matmul bf16 (text encoder) [40,3584]x[3584,3584] / x[3584,18944]", lambda: x @ w1, lambda: x @ w2)
    # the transformer's shapes (4096 image tokens)
    xi, wi, wo = r(4096, 3072), r(3072, 3072), r(3072, 12288)
    mx.eval(xi, wi, wo)
    probe("matmul bf16 (transformer) [4096,3072]x[3072,3072] / x[3072,12288]", lambda: xi @ wi, lambda: xi @ wo)
    q = r(1, 28, 40, 128)
    kv = r(1, 4, 40, 128)
    q2 = r(1, 24, 4096, 128)
    mx.eval(q, kv, q2)
    probe("sdpa bf16 [1,28,40,128] causal / [1,24,4096,128]", lambda: mx.fast.scaled_dot_product_attention(q, kv, kv, scale=0.088, mask="causal"),
          lambda: mx.fast.scaled_dot_product_attention(q2, q2, q2, scale=0.088))
    wn = r(3584)
    probe("rms_norm [40,3584] / [4096,3072]", lambda: mx.fast.rms_norm(x, wn, 1e-6), lambda: mx.fast.rms_norm(xi, wi[0], 1e-6))
    probe("silu*mul", lambda: mx.sigmoid(x) * x * x, lambda: mx.sigmoid(xi) * xi * xi)
    # the decoder's convolutions (NHWC, bf16): 384 channels at 128², 192 at 512²
    a, wa = r(1, 130, 130, 384), r(384, 3, 3, 384)
    b, wb = r(1, 514, 514, 192), r(192, 3, 3, 192)
    mx.eval(a, wa, b, wb)
    probe("conv2d 3x3 bf16 [1,130,130,384] / [1,514,514,192]", lambda: mx.conv2d(a, wa), lambda: mx.conv2d(b, wb))
    a3, wa3 = r(1, 3, 130, 130, 384), r(384, 3, 3, 3, 384)
    mx.eval(a3, wa3)
    probe("conv3d 3x3x3 bf16", lambda: mx.conv3d(a3, wa3), lambda: mx.conv3d(a3[:, :, :66, :66], wa3))
    probe("upsample (repeat)", lambda: mx.repeat(mx.repeat(a, 2, axis=1), 2, axis=2),
          lambda: mx.repeat(mx.repeat(b, 2, axis=1), 2, axis=2))


if __name__ == "__main__":
    main()
