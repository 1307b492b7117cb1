#!/usr/bin/env python3
"""How fast weights reach an MLX CUDA GPU, two ways (device machine, MLX's Python wheel).

  host-copy: the file's bytes copied into an MLX array from host memory (what
             `Checkpoint::array` did: `from_raw_data` -> MLX's unified, i.e. managed, memory),
             then the first GPU use migrates the pages;
  mlx-load:  MLX's own safetensors loader on the GPU stream (`Load::eval_gpu`: a parallel
             pread into a host buffer, then one copy into device memory).

Each: time to evaluated arrays, time of the first GPU use of every weight (a sum), of the second,
and the process's RSS afterwards. The file is written first (random bf16 bits, in the page cache
as a checkpoint just written or read before is).
    usage: python3 load_probe.py DIR GB
"""

import json
import os
import resource
import sys
import time

import mlx.core as mx
import numpy as np

ROWS, COLS = 3072, 12288  # an img_mlp weight: 75.5 MB in bf16


def rss_gb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def write(path, count):
    header = {}
    nbytes = ROWS * COLS * 2
    for i in range(count):
        header[f"w{i}"] = {"dtype": "BF16", "shape": [ROWS, COLS], "data_offsets": [i * nbytes, (i + 1) * nbytes]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = np.random.default_rng(0).integers(0x3C00, 0x3F80, size=ROWS * COLS, dtype=np.uint16).tobytes()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _ in range(count):
            f.write(block)
    return 8 + len(raw)


def touch(ws):
    t = time.perf_counter()
    mx.eval([w.astype(mx.float32).sum() for w in ws])
    return time.perf_counter() - t


def main():
    d, gb = sys.argv[1], float(sys.argv[2])
    os.makedirs(d, exist_ok=True)
    count = max(1, int(gb * 1e9 / (ROWS * COLS * 2)))
    path = os.path.join(d, "probe.safetensors")
    t = time.perf_counter()
    start = write(path, count)
    total = count * ROWS * COLS * 2 / 1e9
    print(f"wrote {total:.2f} GB in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for way in sys.argv[3:] or ["mlx-load", "host-copy", "mlx-load"]:
        mx.clear_cache()
        r0 = rss_gb()
        t = time.perf_counter()
        if way == "host-copy":
            mm = np.memmap(path, dtype=np.uint16, mode="r", offset=start, shape=(count, ROWS, COLS))
            ws = []
            for i in range(count):
                a = mx.array(mm[i]).view(mx.bfloat16)
                mx.eval(a)
                ws.append(a)
        else:
            m = mx.load(path)
            ws = [m[f"w{i}"] for i in range(count)]
            for w in ws:
                mx.eval(w)
        load = time.perf_counter() - t
        first = touch(ws)
        second = touch(ws)
        row = {"way": way, "gb": round(total, 2), "load_s": round(load, 3), "load_gbps": round(total / load, 2),
               "first_use_s": round(first, 3), "second_use_s": round(second, 3),
               "rss_gb_added": round(rss_gb() - r0, 2), "mlx_active_gb": round(mx.get_active_memory() / 1e9, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del ws
        if way != "host-copy":
            del m
    print("maxrss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)


if __name__ == "__main__":
    main()
