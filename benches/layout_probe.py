# Layout probes on a GPU for one 1024² CFG step's shapes (MLX): linear weights stored [out, in] (x·Wᵀ) against
# stored [in, out] (x·W), with and without the bias in addmm; attention on contiguous [B, H, L, D] against
# transposed views; GELU kernel variants. Prints JSON lines.
import json, time
import mlx.core as mx

bf = mx.bfloat16
def timeit(f, n=20):
    for _ in range(3): mx.eval(f())
    t = time.time()
    for _ in range(n): mx.eval(f())
    return (time.time() - t) / n * 1e3

# the step's matmuls, rows = both CFG halves of the image stream
for (m, k, n, what) in ((8192, 3072, 9216, "qkv"), (8192, 3072, 3072, "out"), (8192, 3072, 12288, "mlp up"),
                        (8192, 12288, 3072, "mlp down"), (33, 3072, 9216, "txt qkv")):
    x = mx.random.normal((m, k)).astype(bf)
    w = (mx.random.normal((n, k)) * 0.02).astype(bf)
    wt = mx.contiguous(w.T); b = mx.zeros((n,), bf); mx.eval(x, w, wt, b)
    # 20 chained calls per eval so launch gaps do not dominate
    def chain(f):
        return lambda: [f() for _ in range(20)]
    r = {"matmul": what, "m": m, "k": k, "n": n}
    r["ms_x_wT"] = round(timeit(chain(lambda: x @ w.T)) / 20, 4)
    r["ms_x_w_contig"] = round(timeit(chain(lambda: x @ wt)) / 20, 4)
    r["ms_addmm_wT"] = round(timeit(chain(lambda: mx.addmm(b, x, w.T))) / 20, 4)
    r["ms_addmm_w_contig"] = round(timeit(chain(lambda: mx.addmm(b, x, wt))) / 20, 4)
    r["tflops_best"] = round(2 * m * k * n / min(v for kk, v in r.items() if kk.startswith("ms")) / 1e9, 0)
    print(json.dumps(r), flush=True)

# attention per half: q, k, v contiguous [1, H, L, D] vs views of [1, L, H, D]
L, H, D = 4096 + 27, 24, 128
q = mx.random.normal((1, H, L, D)).astype(bf); k = mx.random.normal((1, H, L, D)).astype(bf); v = mx.random.normal((1, H, L, D)).astype(bf)
ql, kl, vl = (mx.contiguous(t.transpose(0, 2, 1, 3)) for t in (q, k, v)); mx.eval(q, k, v, ql, kl, vl)
s = D ** -0.5
r = {"attention": "1 half, L 4123"}
r["ms_contig_bhld"] = round(timeit(lambda: [mx.fast.scaled_dot_product_attention(q, k, v, scale=s) for _ in range(10)]) / 10, 4)
r["ms_views_of_blhd"] = round(timeit(lambda: [mx.fast.scaled_dot_product_attention(ql.transpose(0, 2, 1, 3), kl.transpose(0, 2, 1, 3), vl.transpose(0, 2, 1, 3), scale=s) for _ in range(10)]) / 10, 4)
r["ms_out_to_tokens_copy"] = round(timeit(lambda: [mx.contiguous(q.transpose(0, 2, 1, 3)).reshape(1, L, H * D) for _ in range(10)]) / 10, 4)
r["ms_concat_txt_img"] = round(timeit(lambda: [mx.concatenate([q[:, :, :27], q[:, :, 27:]], axis=2) for _ in range(10)]) / 10, 4)
print(json.dumps(r), flush=True)
