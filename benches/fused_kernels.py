# The fused CUDA kernels of codegen/kernels/ through MLX's own `mx.fast.cuda_kernel`, on a GPU:
# each against the plain MLX ops it replaces (relative error, eager and mx.compile timings) at the
# shapes of one 1024² true-CFG step, then one whole step (60 blocks, compiled per block) with and
# without them. Prints JSON lines. usage: fused_kernels.py [BLOCKS=60]; SMOKE=1 for tiny shapes.
import json, os, sys, time
import mlx.core as mx

HERE = os.path.dirname(os.path.abspath(__file__))
KDIR = os.path.join(HERE, "..", "codegen", "kernels")
SMOKE = bool(os.environ.get("SMOKE"))
D, H, HD, F, LI = (256, 2, 128, 1024, 64) if SMOKE else (3072, 24, 128, 12288, 4096)
LT = (27, 6)
NB = int(sys.argv[1]) if len(sys.argv) > 1 else 60
EPS = 1e-6
bf = mx.bfloat16
HEADER = open(os.path.join(KDIR, "common.cuh")).read()


def kernel(name, ins, outs):
    src = open(os.path.join(KDIR, name + ".cu")).read()
    return mx.fast.cuda_kernel(name=name, input_names=ins, output_names=outs, source=src, header=HEADER)


K_LN = kernel("ln_modulate", ["x", "shift", "scale", "eps"], ["out"])
K_GLN = kernel("gate_residual_ln_modulate", ["x", "y", "gate", "shift", "scale", "eps"], ["h", "out"])
K_GR = kernel("gate_residual", ["x", "y", "gate"], ["out"])
K_GELU = kernel("gelu_tanh", ["x"], ["out"])
K_QKV = kernel("joint_qkv_heads", ["t_qkv", "t_bias", "t_wq", "t_wk", "t_cos", "t_sin",
                                   "i_qkv", "i_bias", "i_wq", "i_wk", "i_cos", "i_sin", "eps"], ["q", "k", "v"])
EPS_A = mx.array([EPS], dtype=mx.float32)


def pack(dt): return 16 // dt.size
def tpr(d, dt): return (d // pack(dt) + 31) // 32 * 32
def up(n, b=256): return (n + b - 1) // b * b


def ln_modulate(x, shift, scale):
    B, L, d = x.shape; t = tpr(d, x.dtype)
    return K_LN(inputs=[x, shift, scale, EPS_A], template=[("T", x.dtype), ("D", d)], grid=(B * L * t, 1, 1),
                threadgroup=(t, 1, 1), output_shapes=[x.shape], output_dtypes=[x.dtype])[0]


def gate_residual_ln_modulate(x, y, gate, shift, scale):
    B, L, d = x.shape; t = tpr(d, x.dtype)
    return K_GLN(inputs=[x, y, gate, shift, scale, EPS_A], template=[("T", x.dtype), ("D", d)], grid=(B * L * t, 1, 1),
                 threadgroup=(t, 1, 1), output_shapes=[x.shape, x.shape], output_dtypes=[x.dtype, x.dtype])


def gate_residual(x, y, gate):
    B, L, d = x.shape
    return K_GR(inputs=[x, y, gate], template=[("T", x.dtype), ("D", d)], grid=(up(B * L * d // pack(x.dtype)), 1, 1),
                threadgroup=(256, 1, 1), output_shapes=[x.shape], output_dtypes=[x.dtype])[0]


def gelu(x):
    n = (x.size // pack(x.dtype) + 1) // 2
    return K_GELU(inputs=[x], template=[("T", x.dtype)], grid=(up(n), 1, 1), threadgroup=(256, 1, 1),
                  output_shapes=[x.shape], output_dtypes=[x.dtype])[0]


def joint_heads(t, i):
    """t, i: (qkv without bias, bias, wq, wk, cos, sin) of the text and the image stream."""
    B, L = i[0].shape[0], t[0].shape[1] + i[0].shape[1]; tph = min(32, HD // 2)
    s = (B, H, L, HD)
    return K_QKV(inputs=[*t, *i, EPS_A], template=[("T", i[0].dtype), ("H", H), ("DH", HD)],
                 grid=(up(B * L * H * tph), 1, 1), threadgroup=(256, 1, 1), output_shapes=[s, s, s],
                 output_dtypes=[i[0].dtype] * 3)


# ---- the plain-MLX versions (what the generated code does without the kernels) ----
def r_ln_modulate(x, shift, scale): return mx.fast.layer_norm(x, None, None, EPS) * (1 + scale) + shift
def r_gelu(x): return 0.5 * x * (1 + mx.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))
def r_gate_residual(x, y, gate): return x + gate * y
def r_gate_residual_ln_modulate(x, y, gate, shift, scale):
    h = x + gate * y
    return h, r_ln_modulate(h, shift, scale)
def rope(x, cos, sin):  # x [B, L, H, HD]
    B, L = x.shape[0], x.shape[1]
    xr = x.reshape(B, L, H, HD // 2, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return mx.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(B, L, H, HD).astype(x.dtype)
def r_stream_heads(qkv, bias, wq, wk, cos, sin):
    B, L, _ = qkv.shape
    q, k, v = (t.reshape(B, L, H, HD) for t in mx.split(qkv + bias, 3, axis=-1))
    q = rope(mx.fast.rms_norm(q, wq, EPS), cos, sin)
    k = rope(mx.fast.rms_norm(k, wk, EPS), cos, sin)
    return [t.transpose(0, 2, 1, 3) for t in (q, k, v)]
def r_joint_heads(t, i):
    return [mx.concatenate([a, b], 2) for a, b in zip(r_stream_heads(*t), r_stream_heads(*i))]


def rel(a, b):
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


def timeit(f, args, n=20):
    for _ in range(3): mx.eval(f(*args))
    t = time.time()
    for _ in range(n): mx.eval(f(*args))
    return (time.time() - t) / n * 1e6


def tables(L):
    t = mx.random.uniform(shape=(L, HD // 2)) * 6.28
    return mx.cos(t), mx.sin(t)


mx.random.seed(0)
for dt in (mx.float32, bf):
    x = mx.random.normal((2, LI, D)).astype(dt); y = mx.random.normal((2, LI, D)).astype(dt)
    g, sh, sc = (mx.random.normal((2, 1, D)).astype(dt) * 0.5 for _ in range(3))
    xt = mx.random.normal((1, LT[0], D)).astype(dt)
    up_ = mx.random.normal((2, LI, F)).astype(dt)
    qkv = mx.random.normal((1, LI, 3 * D)).astype(dt); wq = (1 + 0.1 * mx.random.normal((HD,))).astype(dt)
    wk = (1 + 0.1 * mx.random.normal((HD,))).astype(dt); cs, sn = tables(LI); bias = (0.1 * mx.random.normal((3 * D,))).astype(dt)
    tqkv = mx.random.normal((1, LT[0], 3 * D)).astype(dt); tcs, tsn = tables(LT[0])
    cases = [
        ("ln_modulate", ln_modulate, r_ln_modulate, (x, sh, sc)),
        ("ln_modulate_txt", ln_modulate, r_ln_modulate, (xt, sh[:1], sc[:1])),
        ("gate_residual_ln_modulate", gate_residual_ln_modulate, r_gate_residual_ln_modulate, (x, y, g, sh, sc)),
        ("gate_residual", gate_residual, r_gate_residual, (x, y, g)),
        ("gelu_tanh", gelu, r_gelu, (up_,)),
        ("joint_qkv_heads (one half)", joint_heads, r_joint_heads,
         ((tqkv, bias, wq, wk, tcs, tsn), (qkv, bias, wq, wk, cs, sn))),
    ]
    for name, f, r, args in cases:
        a, b = f(*args), r(*args)
        a = a if isinstance(a, (list, tuple)) else [a]
        b = b if isinstance(b, (list, tuple)) else [b]
        errs = [round(rel(p, q), 7) for p, q in zip(a, b)]
        rc = mx.compile(r)
        print(json.dumps({"kernel": name, "dtype": str(dt), "rel_err": errs, "us_kernel": round(timeit(f, args), 1),
                          "us_mlx_eager": round(timeit(r, args), 1), "us_mlx_compiled": round(timeit(rc, args), 1)}),
              flush=True)


# ---- one whole true-CFG step: compiled blocks with and without the kernels ----
def w(*s, std=None): return (mx.random.normal(s) * (std or s[-1] ** -0.5)).astype(bf)
def stream_w():
    return dict(qkv=w(3 * D, D), qkv_b=w(3 * D, std=0.02), nq=mx.ones((HD,), bf), nk=mx.ones((HD,), bf),
                o=w(D, D), o_b=w(D, std=0.02), up=w(F, D), up_b=w(F, std=0.02), down=w(D, F), down_b=w(D, std=0.02))
blocks = []
for i in range(NB):
    blocks.append((stream_w(), stream_w())); mx.eval(blocks[-1])
img_cs = tables(LI); txt_cs = [tables(l) for l in LT]
lin = lambda x, W, b: mx.addmm(b, x, W.T)


def block(wi, wt, x, c, mi, mt, fused):
    """x [2, LI, D]; c: texts [1, Lt, D]; mi [2, 6, D]; mt: per half [1, 6, D]."""
    si = [mi[:, j:j + 1, :] for j in range(6)]
    heads = joint_heads if fused else r_joint_heads
    lnm = ln_modulate if fused else r_ln_modulate
    glnm = gate_residual_ln_modulate if fused else r_gate_residual_ln_modulate
    gr = gate_residual if fused else r_gate_residual
    act = gelu if fused else r_gelu
    iqkv = lnm(x, si[0], si[1]) @ wi["qkv"].T
    outs_i, new_c = [], []
    for b in range(2):
        st = [mt[b][:, j:j + 1, :] for j in range(6)]
        tqkv = lnm(c[b], st[0], st[1]) @ wt["qkv"].T
        q, k, v = heads((tqkv, wt["qkv_b"], wt["nq"], wt["nk"], *txt_cs[b]),
                        (iqkv[b:b + 1], wi["qkv_b"], wi["nq"], wi["nk"], *img_cs))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=HD ** -0.5).transpose(0, 2, 1, 3).reshape(1, -1, D)
        lt = c[b].shape[1]
        outs_i.append(o[:, lt:])
        ta = lin(o[:, :lt], wt["o"], wt["o_b"])
        cc, cm = glnm(c[b], ta, st[2], st[3], st[4])
        cm = lin(act(lin(cm, wt["up"], wt["up_b"])), wt["down"], wt["down_b"])
        new_c.append(gr(cc, cm, st[5]))
    ia = lin(mx.concatenate(outs_i, 0), wi["o"], wi["o_b"])
    x, xm = glnm(x, ia, si[2], si[3], si[4])
    xm = lin(act(lin(xm, wi["up"], wi["up_b"])), wi["down"], wi["down_b"])
    return gr(x, xm, si[5]), new_c


x2 = mx.random.normal((2, LI, D)).astype(bf)
cs2 = [mx.random.normal((1, l, D)).astype(bf) for l in LT]
mi = (mx.random.normal((2, 6, D)) * 0.3).astype(bf); mt = [(mx.random.normal((1, 6, D)) * 0.3).astype(bf)] * 2
res = {}
for fused in (False, True):
    blk = mx.compile(lambda wi, wt, x, c0, c1, mi, mt0, mt1, fused=fused:
                     (lambda r: (r[0], r[1][0], r[1][1]))(block(wi, wt, x, [c0, c1], mi, [mt0, mt1], fused)))
    def step():
        x, c0, c1 = x2, cs2[0], cs2[1]
        for wi, wt in blocks:
            x, c0, c1 = blk(wi, wt, x, c0, c1, mi, mt[0], mt[1])
        return [x, c0, c1]
    for _ in range(2): mx.eval(step())
    mx.reset_peak_memory()
    t = time.time(); n = 5
    for _ in range(n): out = step(); mx.eval(out)
    ms = (time.time() - t) / n * 1000 * 60 / NB
    res[fused] = out
    print(json.dumps({"step": "compiled blocks" + (" + fused kernels" if fused else ""), "ms_per_cfg_step_60_blocks":
                      round(ms, 1), "peak_gb": round(mx.get_peak_memory() / 1e9, 1), "blocks_run": NB}), flush=True)
print(json.dumps({"step_check": "fused vs plain, bf16", "img_rel": round(rel(res[True][0], res[False][0]), 5),
                  "txt0_rel": round(rel(res[True][1], res[False][1]), 5)}))
