#!/bin/bash
# shellcheck disable=SC2015,SC2016 # "a && b || die" is meant; the bg wrapper expands in its own shell
# qwen-aot against diffusers on a two-GPU machine (nvidia-h200-x2), in a few chained calls of < 10 minutes on
# the same warm machine (state in /tmp/qa: a machine idle for ~30 s is lost with its /tmp). GPU 0 runs the
# timed phases one after another; GPU 1 runs, in the background, what is not timed against us (fidelity dumps,
# comparisons, the torch.compile reference step). Run from the repository root with the carried .dev/ files
# (benches/fill-dev.sh makes them; benches/README.md lists them). `bash benches/device.sh plan`: the calls.
#
#   usage: bash benches/device.sh PHASE [PHASE...]      (one device.sh per call: the call's clock starts here)
#     setup             device-setup.sh, the full random bf16 checkpoint in /tmp/qa/model, the initial latents
#     bg-start          starts the background job on GPU 1 (setsid, nice): BG_STEPS, one after another; log
#                       /tmp/qa/bg.log, rows /tmp/qa/bg.jsonl, exit status (failed steps) /tmp/qa/bg.rc
#     bg-wait [SECONDS] waits for it (default 420 s, never past CALL_LIMIT), prints progress every 30 s and
#                       appends its rows to the results; bg-status = bg-wait 0 (no waiting)
#     qwen-warm         qwen-bench warm: load, one warm-up image, IMAGES timed images (rows load/image/step/...)
#     qwen-cold         qwen-run as one cold process timed by wall clock (row image-cold)
#     qwen-memory       one image each under --memory-limit: bf16 (MEM_BF16, 30 GB), q8 and q4 (MEM_Q, 24 GB);
#                       MEM_RUNS picks some ("bf16 8 4"); also a background step (peaks do not depend on the other GPU)
#     lightning         a random Lightning-layout LoRA, LIGHTNING_STEPS (8) steps without CFG: qwen, then diffusers
#                       (LIGHTNING_DIFFUSERS=0: qwen only)
#     sizes             SIZES ("1328 1664x928 2048"), SIZE_STEPS (20) steps, one image each: qwen, then diffusers (SIZES_DIFFUSERS=0: qwen only)
#     count             --count COUNT (4) against 1 at RES (rows with count, images_per_s); the batch's 2nd PNG vs a single run
#     gpus              qwen-run on GPU FG_GPU, then --gpus 2 on FG_GPU and BG_GPU (rows with gpus; PNGs compared)
#     edit              an Edit-EDIT_VARIANT (2511) folder linked to the checkpoint (make_edit_folder.py, with a 1024²
#                       input image), qwen-bench edit (load, 1 warm-up + EDITS (3) timed edits at RES), then diffusers
#                       QwenImageEditPlusPipeline the same way (diffusers_qwen_edit.py): rows with `edit`
#     diffusers-timing  diffusers_qwen_e2e.py, timing only (SKIP_DUMP=1): load, 1 warm-up + IMAGES images, encode, decode
#     compare           compare_tensors.py: qwen f32 / qwen bf16 / diffusers bf16 against diffusers f32, for the
#                       dumps that exist and have no fidelity rows yet
#     table             (only the table; it is printed after every call anyway)
#     plan              prints the suggested calls and exits
#   The background steps, also phases of their own (e.g. on a one-GPU machine, in the foreground):
#     qwen-dump-f32 (MLX_ENABLE_TF32=0), qwen-dump-bf16, diffusers-dump-f32, diffusers-dump-bf16 (each skipped when
#     its file exists), compare, compile (diffusers_qwen_dit.py --compile: eager and torch.compile step rows).
#     Groups: qwen-dump, diffusers-dump, qwen (= qwen-warm qwen-cold qwen-dump), diffusers (= timing + dumps).
#   Each phase runs as its own process, under a time limit that ends it before CALL_LIMIT: a failing phase is
#   reported and the next one runs. After each phase all rows so far go to $OUT/results.jsonl (logs:
#   $OUT/logs.tar.gz); a short table is printed last; the exit status is 1 when a phase failed.
#   Settings (environment): RES (1024 or WxH), STEPS (50), CFG (4), IMAGES (3), DUMP_STEPS (2; "2,4" dumps both),
#   PROMPT ("a red fox in the snow, watercolor"), NEG (" "), TXT (prompt rows for compile; default: from a dump,
#   else 14), FG_GPU (0), BG_GPU (1), BG_STEPS (the six above), CALL_LIMIT (570 s: this call's end, from its
#   start), DEVICE (gpu: the binaries never fall back to the CPU; cpu for a test here), QA (/tmp/qa), DEV (.dev).
set -euo pipefail
cd "$(dirname "$0")/.."
SELF=benches/device.sh

QA=${QA:-/tmp/qa}
DEV=${DEV:-.dev}
B=benches
OUT=${OUT:-$QA/out}
RESULTS=${RESULTS:-$QA/results.jsonl}
RES=${RES:-1024}
STEPS=${STEPS:-50}
CFG=${CFG:-4}
IMAGES=${IMAGES:-3}
DUMP_STEPS=${DUMP_STEPS:-2}
PROMPT=${PROMPT:-a red fox in the snow, watercolor}
NEG=${NEG:- }
FG_GPU=${FG_GPU:-0}
BG_GPU=${BG_GPU:-1}
DEVICE=${DEVICE:-gpu}
CALL_LIMIT=${CALL_LIMIT:-570}
BG_STEPS=${BG_STEPS:-qwen-dump-f32 diffusers-dump-f32 qwen-dump-bf16 diffusers-dump-bf16 compare compile}
BG_KNOWN="qwen-dump-f32 qwen-dump-bf16 qwen-dump-q8 qwen-dump-q4 diffusers-dump-f32 diffusers-dump-bf16 compare compile qwen-memory"
export CUDA_DEVICE_ORDER=PCI_BUS_ID PYTHONUNBUFFERED=1 # CUDA's GPU numbers = nvidia-smi's
export T0=${T0:-$(date +%s)}                               # this call's start (phases are child processes)
mkdir -p "$QA" "$OUT"

say() { printf '[device.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

case "$RES" in
*x*) W=${RES%x*} H=${RES#*x} ;;
*) W=$RES H=$RES ;;
esac
[[ $W =~ ^[0-9]+$ && $H =~ ^[0-9]+$ ]] && ((W % 16 == 0 && H % 16 == 0 && W > 0 && H > 0)) ||
    die "RES=$RES: want 1024 or WxH, both multiples of 16"

# Runs a command, prints its output, appends its schema rows (lines starting {"system") to RESULTS.
rows() {
    "$@" | while IFS= read -r line; do
        printf '%s\n' "$line"
        case "$line" in '{"system"'*) printf '%s\n' "$line" >>"$RESULTS" ;; esac
    done
}

gpu_name() {
    if [ ! -s "$QA/gpu" ]; then
        if python3 -c "import torch; print(torch.cuda.get_device_name(0))" >"$QA/gpu.tmp" 2>/dev/null && [ -s "$QA/gpu.tmp" ]; then
            mv "$QA/gpu.tmp" "$QA/gpu"
        else
            rm -f "$QA/gpu.tmp"
            echo unknown
            return 0
        fi
    fi
    cat "$QA/gpu"
}

need_mlx() {
    [ -s /tmp/mlx-libdir ] || die "MLX CUDA and diffusers are not installed on this machine (/tmp/mlx-libdir missing): run the setup phase first (a machine left idle loses its /tmp)"
}
# For the carried binaries (linked against libmlx): its folder on the library path.
mlx_env() {
    need_mlx
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(cat /tmp/mlx-libdir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}
need_model() {
    [ -f "$QA/model/model_index.json" ] && [ -d "$QA/model/tokenizer" ] ||
        die "no checkpoint in $QA/model (model_index.json, tokenizer/): run the setup phase first"
}
need_latents() {
    [ -f "$QA/latents.safetensors" ] || die "no $QA/latents.safetensors: run the setup phase first"
}
need_file() {
    local f
    for f; do [ -f "$f" ] || die "$f missing (it travels with the working tree: is this the repository root?)"; done
}

# The carried binary NAME in $QA/bin, unpacked from $DEV/qwen-bins.tar.xz (benches/fill-dev.sh: both binaries,
# so that later calls need not carry it), else $DEV/NAME.xz or $DEV/NAME, or as unpacked by an earlier call.
# Files are replaced by a rename only (the background job may be running the old one).
need_bin() {
    local src="" tmp b
    for src in "$DEV/qwen-bins.tar.xz" "$DEV/$1.xz" "$DEV/$1" ""; do [ -z "$src" ] || [ -f "$src" ] && break; done
    mkdir -p "$QA/bin"
    if [ -z "$src" ]; then
        [ -x "$QA/bin/$1" ] || die "$DEV/qwen-bins.tar.xz not carried and no $QA/bin/$1 from an earlier call: run benches/fill-dev.sh here and carry it (benches/README.md)"
        return 0
    fi
    [ -x "$QA/bin/$1" ] && [ "$QA/bin/$1" -nt "$src" ] && return 0
    tmp=$(mktemp -d "$QA/bin/.unpack.XXXXXX")
    case "$src" in
    *.tar.xz) tar -xmJf "$src" -C "$tmp" || die "$src: cannot unpack it" ;;
    *.xz) xz -dc "$src" >"$tmp/$1" ;;
    *) cp "$src" "$tmp/$1" ;;
    esac
    [ -f "$tmp/$1" ] || die "$src holds no $1: run benches/fill-dev.sh again"
    for b in "$tmp"/*; do
        chmod +x "$b"
        mv -f "$b" "$QA/bin/"
    done
    rmdir "$tmp"
}

phase_setup() {
    local f missing=()
    for f in "$DEV/device-setup.sh" "$DEV/mlx-cuda13-sm90.tar.xz" "$DEV"/mlx-*-cp312-*.whl "$DEV/py-wheels.tar.xz"; do
        [ -f "$f" ] || missing+=("$f")
    done
    [ ${#missing[@]} -eq 0 ] || die "not carried: ${missing[*]} (benches/README.md lists what to carry)"
    [ -f "$DEV/qwen-bins.tar.xz" ] || [ -f "$DEV/qwen-bench.xz" ] ||
        say "WARNING: $DEV/qwen-bins.tar.xz not carried: qwen-warm, qwen-cold and the qwen dumps will fail"
    need_file tests/fixtures/tiny-qwen-image/vae/config.json tests/fixtures/tiny-qwen-image/tokenizer/tokenizer_config.json \
        $B/make_full_checkpoint.py $B/make_latents.py
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader >&2
    say "setup: MLX CUDA, diffusers"
    bash "$DEV/device-setup.sh" 2>&1 | tee "$QA/setup.log"
    # diffusers, importlib_metadata, peft (benches/fill-dev.sh packs them)
    rm -rf "$QA/wheels" && mkdir -p "$QA/wheels" && tar -C "$QA/wheels" -xJf "$DEV/py-wheels.tar.xz"
    python3 -m pip install -q --no-index --no-deps --no-compile "$QA"/wheels/*.whl 2>&1 | tee -a "$QA/setup.log"
    gpu_name >/dev/null
    if [ -f "$QA/model/model_index.json" ] && [ -d "$QA/model/tokenizer" ]; then
        say "setup: $QA/model exists"
    else
        local free
        free=$(df -Pk "$QA" | awk 'NR == 2 {print int($4 / 1e6)}')
        [ "$free" -ge 60 ] || die "only $free GB free under $QA: the checkpoint needs 58 GB (nvidia-h200-x2 has 128 GB of disk)"
        say "setup: full random bf16 checkpoint in $QA/model (~58 GB, ~75 s; $free GB free)"
        rm -rf "$QA/model"
        python3 $B/make_full_checkpoint.py "$QA/model" tests/fixtures/tiny-qwen-image/tokenizer \
            tests/fixtures/tiny-qwen-image/vae/config.json 2>&1 | tee "$QA/checkpoint.log"
    fi
    python3 $B/make_latents.py "$QA/latents.safetensors" $(((W / 16) * (H / 16))) 0
    say "setup: done ($(gpu_name), $(cat /tmp/mlx-libdir))"
}

phase_qwen_warm() {
    mlx_env
    need_model
    need_bin qwen-bench
    say "qwen-warm: GPU $CUDA_VISIBLE_DEVICES, $RES, bf16, $STEPS steps, cfg $CFG, 1 warm-up + $IMAGES images"
    "$QA/bin/qwen-bench" warm --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" \
        --prompt "$PROMPT" --negative "$NEG" --images "$IMAGES" --gpu "$(gpu_name)" --device "$DEVICE" \
        --out "$RESULTS" 2> >(tee "$QA/qwen-warm.log" >&2)
}

phase_qwen_cold() {
    mlx_env
    need_model
    need_bin qwen-run
    say "qwen-cold: GPU $CUDA_VISIBLE_DEVICES, qwen-run, one process, $RES, bf16, $STEPS steps"
    # GPU memory in use, sampled every 0.2 s (beside MLX's own peak, which qwen-run prints)
    local smi=""
    if command -v nvidia-smi >/dev/null; then
        (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$FG_GPU"; sleep 0.2; done) \
            >"$QA/smi.log" 2>/dev/null &
        smi=$!
    fi
    local t0 t1
    t0=$(date +%s.%N)
    "$QA/bin/qwen-run" --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" --device "$DEVICE" \
        --prompt "$PROMPT" --negative-prompt "$NEG" --output "$QA/qwen-cold.png" 2>&1 | tee "$QA/qwen-cold.log"
    t1=$(date +%s.%N)
    if [ -n "$smi" ]; then
        kill "$smi" 2>/dev/null || true
        wait "$smi" 2>/dev/null || true
    fi
    [ -f "$QA/qwen-cold.png" ] || die "qwen-run wrote no $QA/qwen-cold.png"
    python3 - "$t0" "$t1" "$QA/qwen-cold.log" "$QA/smi.log" "$(gpu_name)" "$W" "$H" "$STEPS" "$CFG" >"$QA/cold.row" <<'EOF'
import json, os, re, sys
t0, t1, log, smi, gpu, w, h, steps, cfg = sys.argv[1:]
text = open(log).read()
ms = lambda pat: round(float(m.group(1)) * 1000, 1) if (m := re.search(pat, text)) else None
mib = [int(l) for l in open(smi).read().split() if l.strip().isdigit()] if os.path.exists(smi) else []
print(json.dumps({"system": "qwen-aot", "gpu": gpu, "width": int(w), "height": int(h), "steps": int(steps),
                  "cfg": float(cfg), "dtype": "bf16", "what": "image-cold", "ms": round((float(t1) - float(t0)) * 1000, 1),
                  "peak_gb": float(m.group(1)) if (m := re.search(r"peak memory: ([\d.]+) GB", text)) else None,
                  "smi_peak_gb": round(max(mib) * 2**20 / 1e9, 2) if mib else None,
                  "load_ms": ms(r"load: ([\d.]+) s"), "encode_ms": ms(r"encode: ([\d.]+) s"),
                  "denoise_ms": ms(r"denoise: ([\d.]+) s"), "decode_ms": ms(r"decode: ([\d.]+) s"),
                  "weights_ms": ms(r"weights ([\d.]+) s"), "kernels_ms": ms(r"kernels compiled[a-z ]* in ([\d.]+) s"),
                  "first_uses_ms": ms(r"first uses ([\d.]+) s"),
                  **({"env": env} if (env := {k: v for k, v in os.environ.items() if k.startswith("QWEN_")}) else {})}))
EOF
    rows cat "$QA/cold.row"
    rm -f "$QA/cold.row" "$QA/smi.log"
}

# A dump written under a temporary name and renamed when complete; skipped when it exists.
dump_done() {
    [ -s "$QA/$1.safetensors" ] && say "$1: $QA/$1.safetensors exists, not made again" && return 0
    rm -f "$QA/$1.tmp.safetensors" "$QA/$1.tmp.png"
    return 1
}

qwen_dump() { # DTYPE [BITS]: bf16 with BITS is `--quantize BITS`, dump qwen-qBITS
    mlx_env
    need_model
    need_latents
    need_bin qwen-bench
    local name=qwen-$1 q=()
    [ -z "${2:-}" ] || { name=qwen-q$2; q=(--quantize "$2"); }
    dump_done "$name" && return 0
    local tf=()
    [ "$1" != f32 ] || tf=(MLX_ENABLE_TF32=0) # MLX's f32 matmuls use TF32 on CUDA otherwise (torch's do not)
    say "$name: GPU $CUDA_VISIBLE_DEVICES, $DUMP_STEPS steps from the initial latents ${tf[*]} ${q[*]}"
    env "${tf[@]}" "$QA/bin/qwen-bench" dump "${q[@]}" \
        --model "$QA/model" --res "$RES" --latents "$QA/latents.safetensors" --steps-list "$DUMP_STEPS" --cfg "$CFG" \
        --prompt "$PROMPT" --negative "$NEG" --device "$DEVICE" --dtype "$1" --out "$QA/$name.tmp.safetensors" 2>&1 |
        tee "$QA/$name.log"
    mv "$QA/$name.tmp.safetensors" "$QA/$name.safetensors"
}

# One image each in a fresh process under a memory limit (`--memory-limit`: networks loaded
# by the stage that needs them): bf16 within MEM_BF16 GB, q8 and q4 within MEM_Q GB; the
# image rows' peak_gb is MLX's peak from before the encode to the PNG.
phase_qwen_memory() {
    mlx_env
    need_model
    need_bin qwen-bench
    local q
    for q in ${MEM_RUNS:-bf16 8 4}; do
        local args=(--memory-limit "${MEM_Q:-24}" --quantize "$q")
        [ "$q" != bf16 ] || args=(--memory-limit "${MEM_BF16:-30}")
        say "qwen-memory: GPU $CUDA_VISIBLE_DEVICES, $RES, ${args[*]}, $STEPS steps, one image"
        "$QA/bin/qwen-bench" warm "${args[@]}" --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" \
            --cfg "$CFG" --prompt "$PROMPT" --negative "$NEG" --images 1 --warmup 0 --gpu "$(gpu_name)" \
            --device "$DEVICE" --out "$RESULTS" 2> >(tee -a "$QA/qwen-memory.log" >&2) || say "qwen-memory: $q failed"
    done
}

# Issue 13: a full-size random LoRA in the Lightning release's layout (make_lightning_lora.py, rank 64, made once),
# LIGHTNING_STEPS (8) Lightning steps without CFG: qwen-bench warm (load = open + fuse; 1 warm-up + IMAGES images),
# then diffusers (load_lora_weights + fuse_lora, the Lightning scheduler configuration), same GPU, one after another.
phase_lightning() {
    mlx_env
    need_model
    need_bin qwen-bench
    need_file $B/make_lightning_lora.py $B/diffusers_qwen_e2e.py
    local lora=$QA/lightning-lora.safetensors steps=${LIGHTNING_STEPS:-8}
    if [ ! -s "$lora" ]; then
        say "lightning: a random rank-64 LoRA in the Lightning layout, $lora"
        python3 $B/make_lightning_lora.py "$QA/lightning-lora.tmp.safetensors" && mv "$QA/lightning-lora.tmp.safetensors" "$lora"
    fi
    say "lightning: qwen, GPU $CUDA_VISIBLE_DEVICES, $RES, $steps steps, cfg 1, --lora --lightning, 1 warm-up + $IMAGES images"
    "$QA/bin/qwen-bench" warm --model "$QA/model" --res "$RES" --dtype bf16 --steps "$steps" --cfg 1 --lora "$lora" \
        --lightning --prompt "$PROMPT" --images "$IMAGES" --gpu "$(gpu_name)" --device "$DEVICE" --out "$RESULTS" \
        2> >(tee "$QA/lightning-qwen.log" >&2) || say "lightning: qwen failed"
    [ "${LIGHTNING_DIFFUSERS:-1}" != 0 ] || return 0
    say "lightning: diffusers, load_lora_weights + fuse_lora, the Lightning scheduler, $steps steps, cfg 1"
    LORA=$lora LIGHTNING=1 SKIP_DUMP=1 IMAGES=$IMAGES STEPS=$steps rows python3 $B/diffusers_qwen_e2e.py "$QA/model" \
        "$QA/latents.safetensors" "$QA/lightning-diffusers.safetensors" "$DUMP_STEPS" 1 "$PROMPT" "$NEG" "$RES" \
        2> >(tee "$QA/lightning-diffusers.log" >&2)
}

# Issue 12: other sizes, each a fresh qwen-bench warm (1 warm-up + 1 image, SIZE_STEPS steps, bf16; 2048² decodes
# in tiles when its decode does not fit) and diffusers_qwen_e2e.py at the same size (timing only; not with SIZES_DIFFUSERS=0), one after
# another.
phase_sizes() {
    mlx_env
    need_model
    need_bin qwen-bench
    need_file $B/diffusers_qwen_e2e.py
    local r steps=${SIZE_STEPS:-20}
    for r in ${SIZES:-1328 1664x928 2048}; do
        say "sizes: $r, $steps steps, qwen then diffusers"
        "$QA/bin/qwen-bench" warm --model "$QA/model" --res "$r" --dtype bf16 --steps "$steps" --cfg "$CFG" \
            --prompt "$PROMPT" --negative "$NEG" --images 1 --gpu "$(gpu_name)" --device "$DEVICE" --out "$RESULTS" \
            2> >(tee -a "$QA/sizes.log" >&2) || say "sizes: qwen $r failed"
        [ "${SIZES_DIFFUSERS:-1}" = 1 ] || continue
        SKIP_DUMP=1 IMAGES=1 STEPS=$steps rows python3 $B/diffusers_qwen_e2e.py "$QA/model" "$QA/latents.safetensors" \
            "$QA/sizes-diffusers.safetensors" "$DUMP_STEPS" "$CFG" "$PROMPT" "$NEG" "$r" \
            2> >(tee -a "$QA/sizes.log" >&2) || say "sizes: diffusers $r failed"
    done
}

# Issue 12: `--count` at RES: qwen-bench warm with --count COUNT (4) against --count 1, CFG as set (rows with count and
# images_per_s); then, unless COUNT_CHECK=0, the GPU check of the batch: qwen-run --count COUNT --seed 0 and a single
# qwen-run --seed 1, whose PNG must be the batch's second image (largest difference in 8-bit levels printed).
phase_count() {
    mlx_env
    need_model
    need_bin qwen-bench
    local n c=${COUNT:-4}
    for n in 1 "$c"; do
        say "count: $n images per generation, $RES, $STEPS steps, cfg $CFG"
        "$QA/bin/qwen-bench" warm --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" \
            --prompt "$PROMPT" --negative "$NEG" --images 1 --count "$n" --gpu "$(gpu_name)" --device "$DEVICE" \
            --out "$RESULTS" 2> >(tee -a "$QA/count.log" >&2) || say "count: $n failed"
    done
    [ "${COUNT_CHECK:-1}" = 1 ] || return 0
    need_bin qwen-run
    local run=("$QA/bin/qwen-run" --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG"
        --device "$DEVICE" --prompt "$PROMPT" --negative-prompt "$NEG")
    "${run[@]}" --count "$c" --seed 0 --output "$QA/count.png" 2>&1 | tee -a "$QA/count.log"
    "${run[@]}" --seed 1 --output "$QA/count-single.png" 2>&1 | tee -a "$QA/count.log"
    python3 -c 'import sys; from PIL import Image; import numpy as np; a, b = (np.asarray(Image.open(f)).astype(int) for f in sys.argv[1:]); print("count: image 2 of the batch against its single run, max difference", abs(a - b).max(), "levels")' \
        "$QA/count-2.png" "$QA/count-single.png" || say "count: could not compare the PNGs"
}

# Issue 11: qwen-run on one GPU, then `--gpus 2` (GPUs 0 and 1: run it on nvidia-h200-x2 with no background job),
# same seed: rows `image` (encode + denoise + decode as qwen-run prints them) with a `gpus` field and `split` (how the
# two GPUs shared the image: the CFG halves (1024², 2048²), or without CFG (CFG=1) the image tokens),
# and the two PNGs' largest difference in 8-bit levels. GPUS_DTYPE=f32 runs all three in f32 (bf16 by default).
phase_gpus() {
    mlx_env
    need_model
    need_bin qwen-run
    local n t log split step dtype=${GPUS_DTYPE:-bf16}
    for n in 1 2; do
        log=$QA/gpus-$n.log
        say "gpus: qwen-run --gpus $n, $RES, $dtype, $STEPS steps, cfg $CFG"
        CUDA_VISIBLE_DEVICES=$([ "$n" = 1 ] && echo "$FG_GPU" || echo "$FG_GPU,$BG_GPU") \
            "$QA/bin/qwen-run" --gpus "$n" --model "$QA/model" --res "$RES" --dtype "$dtype" --steps "$STEPS" --cfg "$CFG" \
            --device "$DEVICE" --seed 0 --prompt "$PROMPT" --negative-prompt "$NEG" --output "$QA/gpus-$n.png" 2>&1 | tee "$log"
        t=$(python3 -c 'import re,sys; t=open(sys.argv[1]).read(); m=re.search(r"encode: ([\d.]+) s, denoise: ([\d.]+) s.*decode: ([\d.]+) s", t); print(round(sum(float(x) for x in m.groups()) * 1000, 1) if m else "")' "$log")
        [ -n "$t" ] || { say "gpus: no timings from --gpus $n"; continue; }
        # in f32 not every network fits at open: the image's stages load them (no timing row then)
        [ "$dtype" = bf16 ] || continue
        # how --gpus N shared the image (qwen-run's `split:` line), and its step
        split=$(sed -n 's/^split: //p' "$log" | head -1)
        step=$(sed -n 's/.*denoise: [0-9.]* s (\([0-9.]*\) s\/step).*/\1/p' "$log" | head -1)
        rows echo "{\"system\": \"qwen-aot\", \"gpu\": \"$(gpu_name)\", \"width\": $W, \"height\": $H, \"steps\": $STEPS, \"cfg\": $CFG, \"dtype\": \"$dtype\", \"what\": \"image\", \"ms\": $t, \"step_s\": ${step:-null}, \"peak_gb\": null, \"gpus\": $n, \"split\": \"${split:-one GPU}\"}"
    done
    python3 -c 'import sys; from PIL import Image; import numpy as np; a, b = (np.asarray(Image.open(f)).astype(int) for f in sys.argv[1:]); print("gpus: PNGs of 1 and 2 GPUs, max difference", abs(a - b).max(), "levels")' \
        "$QA/gpus-1.png" "$QA/gpus-2.png" || say "gpus: could not compare the PNGs"
    # GPUS_ALSO=MODULE: `--gpus 2 --module MODULE` too (e.g. res2048_sp2, the image tokens split where the CFG halves
    # would be), its row and its PNG against one GPU's
    if [ -n "${GPUS_ALSO:-}" ]; then
        log=$QA/gpus-2-$GPUS_ALSO.log
        say "gpus: qwen-run --gpus 2 --module $GPUS_ALSO, $RES, $dtype, $STEPS steps, cfg $CFG"
        CUDA_VISIBLE_DEVICES="$FG_GPU,$BG_GPU" "$QA/bin/qwen-run" --gpus 2 --module "$GPUS_ALSO" --model "$QA/model" --res "$RES" \
            --dtype "$dtype" --steps "$STEPS" --cfg "$CFG" --device "$DEVICE" --seed 0 --prompt "$PROMPT" --negative-prompt "$NEG" \
            --output "$QA/gpus-2-$GPUS_ALSO.png" 2>&1 | tee "$log"
        t=$(python3 -c 'import re,sys; t=open(sys.argv[1]).read(); m=re.search(r"encode: ([\d.]+) s, denoise: ([\d.]+) s.*decode: ([\d.]+) s", t); print(round(sum(float(x) for x in m.groups()) * 1000, 1) if m else "")' "$log")
        split=$(sed -n 's/^split: //p' "$log" | head -1)
        step=$(sed -n 's/.*denoise: [0-9.]* s (\([0-9.]*\) s\/step).*/\1/p' "$log" | head -1)
        [ -n "$t" ] && [ "$dtype" = bf16 ] &&
            rows echo "{\"system\": \"qwen-aot\", \"gpu\": \"$(gpu_name)\", \"width\": $W, \"height\": $H, \"steps\": $STEPS, \"cfg\": $CFG, \"dtype\": \"$dtype\", \"what\": \"image\", \"ms\": $t, \"step_s\": ${step:-null}, \"peak_gb\": null, \"gpus\": 2, \"split\": \"${split:-?}\", \"module\": \"$GPUS_ALSO\"}"
        python3 -c 'import sys; from PIL import Image; import numpy as np; a, b = (np.asarray(Image.open(f)).astype(int) for f in sys.argv[1:3]); print("gpus: PNGs of 1 GPU and of --module", sys.argv[3], "on 2, max difference", abs(a - b).max(), "levels")' \
            "$QA/gpus-1.png" "$QA/gpus-2-$GPUS_ALSO.png" "$GPUS_ALSO" || say "gpus: could not compare the PNGs"
    fi
    # the ranks of the CFG halves run the module of one text per call, whose bf16 rounding is not the joint
    # module's: one GPU with that module (two calls a step) must give the two-GPU PNG exactly (unless
    # GPUS_ONE_TEXT=0; at the sizes with such a module: 1024², 2048²)
    local one=res$W
    [ "$W" = "$H" ] || one=res${W}x$H
    [ "${GPUS_ONE_TEXT:-1}" = 1 ] && grep -q '^split: the two CFG halves, one GPU each' "$QA/gpus-2.log" || return 0
    say "gpus: qwen-run --gpus 1 --module $one (one text per call), the PNG of --gpus 2?"
    CUDA_VISIBLE_DEVICES=$FG_GPU "$QA/bin/qwen-run" --module "$one" --model "$QA/model" --res "$RES" --dtype "$dtype" \
        --steps "$STEPS" --cfg "$CFG" --device "$DEVICE" --seed 0 --prompt "$PROMPT" --negative-prompt "$NEG" \
        --output "$QA/gpus-1-one-text.png" 2>&1 | tee "$QA/gpus-1-one-text.log"
    python3 -c 'import sys; from PIL import Image; import numpy as np; a, b = (np.asarray(Image.open(f)).astype(int) for f in sys.argv[1:]); print("gpus: PNGs of 2 GPUs and of 1 GPU with the one-text module, max difference", abs(a - b).max(), "levels")' \
        "$QA/gpus-1-one-text.png" "$QA/gpus-2.png" || say "gpus: could not compare the PNGs"
}

# Issue 14: an edit of one 1024² image at RES, STEPS steps, CFG, ours then diffusers' on the same GPU. The Edit folder
# links every weight file of $QA/model (no second 58 GB): Edit-2509/2511 have the text-to-image shapes.
phase_edit() {
    mlx_env
    need_model
    need_bin qwen-bench
    local v=${EDIT_VARIANT:-2511}
    local e=$QA/edit-$v prompt=${EDIT_PROMPT:-make the sky a watercolor sunset} n=${EDITS:-3}
    need_file $B/make_edit_folder.py $B/diffusers_qwen_edit.py "tests/fixtures/tiny-qwen-image-edit-$v/processor/preprocessor_config.json"
    [ -f "$e/input.png" ] || python3 $B/make_edit_folder.py "$QA/model" "$e" "$v" "tests/fixtures/tiny-qwen-image-edit-$v/processor/preprocessor_config.json" 1024 ||
        die "edit: could not make the Edit-$v folder"
    say "edit: Edit-$v, $RES, $STEPS steps, cfg $CFG, one 1024² input; qwen then diffusers, 1 warm-up + $n edits each"
    "$QA/bin/qwen-bench" edit --model "$e" --image "$e/input.png" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" \
        --prompt "$prompt" --negative "$NEG" --edits "$n" --gpu "$(gpu_name)" --device "$DEVICE" --out "$RESULTS" \
        2> >(tee "$QA/edit.log" >&2) || say "edit: qwen failed"
    EDITS=$n STEPS=$STEPS rows python3 $B/diffusers_qwen_edit.py "$e" "$CFG" "$prompt" "$NEG" "$RES" "$e/input.png" \
        2> >(tee -a "$QA/edit.log" >&2) || { say "edit: diffusers failed"; return 1; }
}

diffusers_dump() { # DTYPE
    need_mlx
    need_model
    need_latents
    need_file $B/diffusers_qwen_e2e.py
    dump_done "diffusers-$1" && return 0
    say "diffusers-dump-$1: GPU $CUDA_VISIBLE_DEVICES, $DUMP_STEPS steps from the initial latents (no timing)"
    DTYPE=$1 SKIP_TIMING=1 python3 $B/diffusers_qwen_e2e.py "$QA/model" "$QA/latents.safetensors" \
        "$QA/diffusers-$1.tmp.safetensors" "$DUMP_STEPS" "$CFG" "$PROMPT" "$NEG" "$RES" 2>&1 | tee "$QA/diffusers-dump-$1.log"
    mv "$QA/diffusers-$1.tmp.safetensors" "$QA/diffusers-$1.safetensors"
}

phase_diffusers_timing() {
    need_mlx
    need_model
    need_file $B/diffusers_qwen_e2e.py
    say "diffusers-timing: GPU $CUDA_VISIBLE_DEVICES, bf16, load, 1 warm-up + $IMAGES images of $STEPS steps, encode, decode"
    SKIP_DUMP=1 IMAGES=$IMAGES STEPS=$STEPS rows python3 $B/diffusers_qwen_e2e.py "$QA/model" "$QA/latents.safetensors" \
        "$QA/diffusers-timing.safetensors" "$DUMP_STEPS" "$CFG" "$PROMPT" "$NEG" "$RES" 2> >(tee "$QA/diffusers-timing.log" >&2)
}

# Prompt and negative rows (after the template drop) of a dump, for the compile phase's text lengths.
text_rows() {
    local f
    for f in "$QA/qwen-bf16.safetensors" "$QA/diffusers-bf16.safetensors" "$QA/qwen-f32.safetensors" "$QA/diffusers-f32.safetensors"; do
        [ -s "$f" ] && python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); print(h['prompt_emb']['shape'][1], h['negative_emb']['shape'][1])" "$f" 2>/dev/null && return
    done
    echo 14 6 # "a red fox in the snow, watercolor" and " " (tests/fixtures/references/pipeline.safetensors)
}

phase_compile() {
    need_mlx
    need_file $B/diffusers_qwen_dit.py
    local txt neg
    read -r txt neg <<<"$(text_rows)"
    txt=${TXT:-$txt}
    say "compile: GPU $CUDA_VISIBLE_DEVICES, diffusers transformer step, eager then torch.compile (minutes of compilation), txt $txt/$neg"
    rows python3 $B/diffusers_qwen_dit.py --width "$W" --height "$H" --txt "$txt" --neg-txt "$neg" --compile \
        2> >(tee "$QA/compile.log" >&2)
}

# Whether rows (here or in the background job's file) already compare NAME.
compared() {
    local f
    for f in "$RESULTS" "$QA/results.jsonl" "$QA/bg.jsonl"; do
        [ -f "$f" ] || continue
        # no grep -q here: with pipefail, the first grep could die of SIGPIPE and hide a match
        grep -F '"what": "fidelity"' "$f" | grep -F "\"ours\": \"$1\"" >/dev/null && return 0
    done
    return 1
}

phase_compare() {
    local gpu base name system dtype ref=$QA/diffusers-f32.safetensors failed=0
    need_file $B/compare_tensors.py
    if [ ! -s "$ref" ]; then
        say "compare: no diffusers-f32 dump ($ref), the reference of every pair: nothing compared"
        return 0
    fi
    gpu=$(gpu_name)
    for pair in "qwen-f32:qwen-aot:f32" "qwen-bf16:qwen-aot:bf16" "qwen-q8:qwen-aot:bf16" "qwen-q4:qwen-aot:bf16" \
        "diffusers-bf16:diffusers-eager:bf16"; do
        IFS=: read -r name system dtype <<<"$pair"
        if [ ! -s "$QA/$name.safetensors" ]; then
            say "compare: no $name dump ($QA/$name.safetensors), $name vs diffusers-f32 skipped"
            continue
        fi
        if compared "$name"; then
            say "compare: $name vs diffusers-f32 already in the rows"
            continue
        fi
        base=$(python3 -c 'import json,sys; a=sys.argv[1:]; print(json.dumps({"system": a[0], "gpu": a[1], "width": int(a[2]), "height": int(a[3]), "steps": int(a[4].split(",")[-1]), "cfg": float(a[5]), "dtype": a[6], "ours": a[7], "reference": "diffusers-f32"}))' \
            "$system" "$gpu" "$W" "$H" "$DUMP_STEPS" "$CFG" "$dtype" "$name")
        say "compare: $name vs diffusers-f32"
        rows python3 $B/compare_tensors.py "$QA/$name.safetensors" "$ref" --base "$base" || {
            say "compare: $name failed"
            failed=1
        }
    done
    return $failed
}

# ---- the background job (GPU BG_GPU) ----

bg_running() { [ -s "$QA/bg.pid" ] && [ ! -f "$QA/bg.rc" ] && kill -0 "$(cat "$QA/bg.pid")" 2>/dev/null; }

# Appends the background job's rows not appended yet (complete lines only) to RESULTS; fidelity rows that
# RESULTS already holds (the same pair and tensor, e.g. from a foreground compare) are left out.
bg_collect() {
    [ -f "$QA/bg.jsonl" ] || return 0
    python3 - "$QA/bg.jsonl" "$RESULTS" "$QA/bg.appended" <<'EOF'
import json, os, sys
src, dst, mark = sys.argv[1:]
done = int(open(mark).read().strip() or 0) if os.path.exists(mark) else 0
text = open(src).read()
lines = text.split("\n")[:-1]  # complete lines only (the job may be writing one)
key = lambda r: (r.get("ours"), r.get("tensor"), r.get("width"), r.get("height"), r.get("steps"), r.get("dtype"))
have = set()
if os.path.exists(dst):
    for l in open(dst):
        try:
            r = json.loads(l)
        except ValueError:
            continue
        if r.get("what") == "fidelity":
            have.add(key(r))
new = []
for l in lines[done:]:
    try:
        r = json.loads(l)
    except ValueError:
        continue
    if r.get("what") == "fidelity" and key(r) in have:
        continue
    new.append(l)
with open(dst, "a") as f:
    f.writelines(l + "\n" for l in new)
open(mark, "w").write(str(len(lines)))
if new:
    print(f"[bg] {len(new)} row(s) appended to {dst}", file=sys.stderr)
EOF
}

bg_job() {
    local s t0 rc failed=0
    say "bg: pid $$, CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES, steps: $BG_STEPS"
    for s in $BG_STEPS; do
        t0=$(date +%s)
        echo "$s $t0" >"$QA/bg.current"
        say "bg: $s"
        rc=0
        timeout -k 10 "$(case $s in compile) echo 600 ;; compare) echo 240 ;; *) echo 480 ;; esac)" \
            bash "$SELF" --phase "$s" || rc=$?
        echo "$s rc=$rc $(($(date +%s) - t0))s" >>"$QA/bg.steps"
        if [ "$rc" -eq 0 ]; then say "bg: $s done in $(($(date +%s) - t0)) s"; else
            say "bg: $s FAILED (exit status $rc$([ "$rc" -eq 124 ] && echo ": time limit"))"
            failed=$((failed + 1))
        fi
    done
    rm -f "$QA/bg.current"
    say "bg: finished, $failed step(s) failed"
    return $failed
}

phase_bg_start() {
    local s pid i
    for s in $BG_STEPS; do
        case " $BG_KNOWN " in *" $s "*) ;; *) die "BG_STEPS: unknown step $s (known: $BG_KNOWN)" ;; esac
    done
    need_mlx
    need_model
    need_latents
    case " $BG_STEPS " in *" qwen-dump-"*) need_bin qwen-bench ;; esac
    need_file $B/diffusers_qwen_e2e.py $B/diffusers_qwen_dit.py $B/compare_tensors.py
    if [ "$DEVICE" = gpu ]; then
        local n
        n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        [ "$n" -gt "$BG_GPU" ] || die "bg-start: GPU $BG_GPU needed, nvidia-smi lists $n GPU(s) (use nvidia-h200-x2; on one GPU run the steps in the foreground: $BG_KNOWN)"
    fi
    if bg_running; then die "bg-start: a background job is running already (pid $(cat "$QA/bg.pid"), $(cut -d' ' -f1 "$QA/bg.current" 2>/dev/null))"; fi
    if [ -f "$QA/bg.pid" ]; then # an earlier job: keep its rows, then start afresh
        bg_collect
        s=$(date +%H%M%S)
        for i in bg.log bg.jsonl bg.steps; do [ ! -f "$QA/$i" ] || mv "$QA/$i" "$QA/$i.$s"; done
        rm -f "$QA/bg.pid" "$QA/bg.rc" "$QA/bg.appended" "$QA/bg.current"
    fi
    # the job runs copies of the scripts: a later call's copy of the working tree may replace benches/
    rm -rf "$QA/src"
    mkdir -p "$QA/src/benches"
    cp $B/device.sh $B/*.py "$QA/src/benches/"
    : >"$QA/bg.jsonl"
    : >"$QA/bg.steps"
    local wrap=(bash -c 'echo $$ >"$1/bg.pid"; cd "$1/src" && bash benches/device.sh --bg-job; echo $? >"$1/bg.rc"' bg "$QA")
    command -v ionice >/dev/null && wrap=(ionice -c 2 -n 7 "${wrap[@]}")
    say "bg-start: GPU $BG_GPU: $BG_STEPS (log $QA/bg.log)"
    env -u T0 CUDA_VISIBLE_DEVICES="$BG_GPU" RESULTS="$QA/bg.jsonl" QA="$QA" setsid nohup nice -n 10 "${wrap[@]}" \
        </dev/null >>"$QA/bg.log" 2>&1 &
    for i in $(seq 50); do
        [ -s "$QA/bg.pid" ] && break
        sleep 0.1
    done
    [ -s "$QA/bg.pid" ] || die "bg-start: the background job did not start (see $QA/bg.log)"
    pid=$(cat "$QA/bg.pid")
    sleep 1
    kill -0 "$pid" 2>/dev/null || [ -f "$QA/bg.rc" ] || die "bg-start: the background job (pid $pid) ended at once, no status (see $QA/bg.log)"
    say "bg-start: pid $pid"
}

bg_progress() {
    local cur="" since=0 last
    [ -f "$QA/bg.current" ] && read -r cur since <"$QA/bg.current" 2>/dev/null
    last=$(grep -v '^[[:space:]]*$' "$QA/bg.log" 2>/dev/null | tail -1 | cut -c1-160)
    say "bg: $(wc -l <"$QA/bg.steps" 2>/dev/null || echo 0) step(s) done$([ -n "$cur" ] && echo ", now $cur for $(($(date +%s) - since)) s"); log: $last"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader 2>/dev/null |
        sed 's/^/    GPU /' >&2 || true
}

phase_bg_wait() {
    local want=${1:-420} pid start now limit waited rc tick=30
    [ -f "$QA/bg.pid" ] || die "bg-wait: no background job on this machine ($QA/bg.pid missing): bg-start has not run here (or /tmp/qa was lost with an idle machine)"
    pid=$(cat "$QA/bg.pid")
    start=$(date +%s)
    limit=$((CALL_LIMIT - 45 - (start - T0))) # leaves 45 s of the call for compare and the table
    [ "$want" -lt "$limit" ] && limit=$want
    [ "$limit" -lt 0 ] && limit=0
    [ "$want" -gt 0 ] && say "bg-wait: up to $limit s"
    while :; do
        now=$(date +%s)
        waited=$((now - start))
        [ -f "$QA/bg.rc" ] && break
        kill -0 "$pid" 2>/dev/null || break
        [ "$waited" -ge "$limit" ] && break
        if [ "$waited" -ge "$tick" ]; then
            tick=$((tick + 30))
            bg_progress
            bg_collect
            [ ! -f "$RESULTS" ] || cp "$RESULTS" "$OUT/results.jsonl"
        fi
        sleep 5
    done
    bg_collect
    sed 's/^/    /' "$QA/bg.steps" >&2 2>/dev/null || true
    if [ -f "$QA/bg.rc" ]; then
        rc=$(cat "$QA/bg.rc")
        [ "$rc" = 0 ] && say "bg: finished, every step done" && return 0
        say "bg: finished, $rc step(s) FAILED (their lines above; log $QA/bg.log)"
        return 1
    elif ! kill -0 "$pid" 2>/dev/null; then
        say "bg: the job (pid $pid) is gone without an exit status (killed?); log $QA/bg.log"
        return 1
    fi
    bg_progress
    say "bg: still running after $waited s: its rows so far are in; a later bg-wait appends the rest"
}

# ---- the table, the plan ----

table() {
    [ -f "$RESULTS" ] || {
        say "no rows yet"
        return 0
    }
    python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = []
for l in open(sys.argv[1]):
    try:
        rows.append(json.loads(l))
    except ValueError:
        pass
timing = {}
for r in rows:
    if r.get("what") == "fidelity" or r.get("ms") is None: continue
    note = r.get("note", "")
    if (r.get("width"), r.get("height")) != (1024, 1024): note = ("%sx%s " % (r.get("width"), r.get("height"))) + note
    if r.get("gpus"): note = ("gpus %d " % r["gpus"]) + note
    if r.get("count"): note = ("count %d " % r["count"]) + note
    if r.get("edit"): note = ("edit of %d " % r["edit"]) + note
    if r.get("lightning"): note = ("lightning %s steps " % r.get("steps")) + note
    if r.get("quantize"): note = ("q%s " % r["quantize"].split(",")[0].split("=")[-1]) + note
    if r.get("memory_limit_gb"): note = ("limit %g GB " % r["memory_limit_gb"]) + note
    k = (r["system"], r.get("dtype"), r["what"], note.strip())
    timing.setdefault(k, []).append(r)
print("\n%-18s %-5s %-11s %10s %8s %3s  %s" % ("system", "dtype", "what", "ms", "peak_gb", "n", "note"))
for (system, dtype, what, note), rs in timing.items():
    ms = statistics.median(r["ms"] for r in rs)
    peaks = [r["peak_gb"] for r in rs if r.get("peak_gb") is not None] or [r.get("smi_peak_gb") for r in rs if r.get("smi_peak_gb")]
    print("%-18s %-5s %-11s %10.1f %8s %3d  %s" % (system, dtype, what, ms, max(peaks) if peaks else "-", len(rs), note))
fid = [r for r in rows if r.get("what") == "fidelity"]
if fid:
    print("\nfidelity vs diffusers-f32 (rel err; decoded: max/mean 8-bit levels)")
    names = list(dict.fromkeys(r["ours"] for r in fid))
    tensors = list(dict.fromkeys(r["tensor"] for r in fid))
    print("%-15s" % "" + "".join("%24s" % n for n in names))
    for t in tensors:
        cells = []
        for n in names:
            r = next((r for r in fid if r["ours"] == n and r["tensor"] == t), None)
            c = "-" if r is None else ("%.2e" % r["rel_err"] if "rel_err" in r else "shape!")
            if r is not None and "px_max" in r: c += " %g/%g" % (r["px_max"], r["px_mean"])
            cells.append("%24s" % c)
        print("%-15s" % t + "".join(cells))
    err = lambda n, t: next((r.get("rel_err") for r in fid if r["ours"] == n and r["tensor"] == t), None)
    lat = [t for t in tensors if t.startswith("latents_")][-1:]
    if lat and err("qwen-f32", lat[0]) is not None:
        e = err("qwen-f32", lat[0])
        print(f"limit: qwen f32 {lat[0]} {e:.2e} <= 2e-3: {'ok' if e <= 2e-3 else 'NOT MET'}")
    if lat and err("qwen-bf16", lat[0]) is not None and err("diffusers-bf16", lat[0]):
        q, d = err("qwen-bf16", lat[0]), err("diffusers-bf16", lat[0])
        print(f"limit: qwen bf16 {lat[0]} {q:.2e} <= 1.1 x diffusers bf16 {d:.2e}: {'ok' if q <= 1.1 * d else 'NOT MET'} ({q / d:.2f}x)")
EOF
    if [ -f "$QA/bg.pid" ]; then
        if bg_running; then
            echo "background job: running ($(cut -d' ' -f1 "$QA/bg.current" 2>/dev/null)); done: $(tr '\n' ' ' <"$QA/bg.steps")"
        else echo "background job: ended (failed steps: $(cat "$QA/bg.rc" 2>/dev/null || echo 'unknown, no status')); $(tr '\n' ' ' <"$QA/bg.steps")"; fi
    fi
}

plan() {
    cat <<'EOF'
On nvidia-h200-x2, three calls chained at once (a machine idle ~30 s goes back with its /tmp/qa), each
with timeout_s 600 and carry = the six paths that benches/fill-dev.sh prints (benches/README.md):

  call 1  bash benches/device.sh setup bg-start qwen-warm                 4-4.5 min (+1-2 min machine start)
            setup 2-2.5 (device-setup, checkpoint 75 s + imports, latents); qwen-warm 1.5-2 (load 23 s,
            warm-up image ~25 s, 3 x 15-17 s); the background job starts on GPU 1 ~2.5 min in
  call 2  bash benches/device.sh qwen-cold diffusers-timing bg-status     ~2.5 min
            qwen-cold ~0.8 (load + one image + PNG); diffusers-timing ~1.7 (imports, load 12 s,
            4 x 17.4 s, encode/decode); bg-status brings in the background rows so far
  call 3  bash benches/device.sh bg-wait 420 compare table                ~3 min (7.5 at most)
            the job ends ~8 min after bg-start (dumps ~3.5, compare 0.3, compile ~4.3), ~3 min into
            this call; compare only makes the pairs the job has not

~12-13 min of device time with the start (give_back after call 3). If less is left, take 420 down to
budget_left_s - 120: $OUT/results.jsonl is rewritten after every phase and every 30 s of bg-wait.
IMAGES=3 costs nothing (the background job sets the length). Two-call variant, one gap less:
  bash benches/device.sh setup bg-start qwen-warm qwen-cold                ~5.5 min
  bash benches/device.sh diffusers-timing bg-wait 420 compare table        ~4.5 min
One GPU: setup qwen-warm | qwen-cold diffusers-timing | qwen-dump diffusers-dump compare | compile

Open measurements (2026-11-30, after that day's device time): the four-GPU kind, when it is lent:
`--gpus 4` at 1024² and 2048² (the CFG halves on two GPUs each, the image tokens split over them: the
`sp = 2` modules), which the CPU tests check for the image but no GPU has timed. The phase `gpus` takes
two GPUs; on nvidia-h200-x4 run qwen-run --gpus 4 by hand after `setup` (CUDA_VISIBLE_DEVICES=0,1,2,3).
Measured (results/2026-11-30-h200-x2-{h,i,j}.jsonl): the f32 pair, the 2048² pairs, the 1024² pair
without CFG; re-run them with
  GPUS_DTYPE=f32 bash benches/device.sh setup gpus                        ~6 min with the start
  RES=2048 STEPS=10 GPUS_ALSO=res2048_sp2 bash benches/device.sh setup gpus   ~4 min
  CFG=1 GPUS_ONE_TEXT=0 bash benches/device.sh gpus                       ~1 min after a setup
On one H200 (64 GiB disk, 128 GiB of host memory) cold runs are slower in a fresh machine's first
process (its page cache fills): run qwen-cold twice.
EOF
}

# ---- dispatch ----

run_phase() { # NAME [ARG]
    case "$1" in
    setup) phase_setup ;;
    bg-start) phase_bg_start ;;
    bg-wait) phase_bg_wait "${2:-420}" ;;
    bg-status) phase_bg_wait 0 ;;
    qwen-warm) phase_qwen_warm ;;
    qwen-cold) phase_qwen_cold ;;
    qwen-dump-f32) qwen_dump f32 ;;
    qwen-dump-bf16) qwen_dump bf16 ;;
    qwen-dump-q8) qwen_dump bf16 8 ;;
    qwen-dump-q4) qwen_dump bf16 4 ;;
    qwen-memory) phase_qwen_memory ;;
    lightning) phase_lightning ;;
    sizes) phase_sizes ;;
    gpus) phase_gpus ;;
    count) phase_count ;;
    edit) phase_edit ;;
    diffusers-timing) phase_diffusers_timing ;;
    diffusers-dump-f32) diffusers_dump f32 ;;
    diffusers-dump-bf16) diffusers_dump bf16 ;;
    compile) phase_compile ;;
    compare) phase_compare ;;
    table) ;;
    *) die "unknown phase $1" ;;
    esac
}

[ $# -gt 0 ] || {
    sed -n '3,/^set -euo/p' "$0" | sed '$d'
    exit 2
}
case "$1" in
--phase)
    shift
    run_phase "$@"
    exit
    ;;
--bg-job)
    bg_job
    exit
    ;;
plan)
    plan
    exit 0
    ;;
esac

# the phases asked for, groups expanded, checked before anything runs
todo=()
while [ $# -gt 0 ]; do
    case "$1" in
    qwen) todo+=(qwen-warm qwen-cold qwen-dump-f32 qwen-dump-bf16) ;;
    qwen-dump) todo+=(qwen-dump-f32 qwen-dump-bf16) ;;
    diffusers) todo+=(diffusers-timing diffusers-dump-f32 diffusers-dump-bf16) ;;
    diffusers-dump) todo+=(diffusers-dump-f32 diffusers-dump-bf16) ;;
    bg-wait)
        if [[ ${2:-} =~ ^[0-9]+$ ]]; then
            todo+=("bg-wait:$2")
            shift
        else todo+=("bg-wait:420"); fi
        ;;
    setup | bg-start | bg-status | qwen-warm | qwen-cold | qwen-memory | lightning | sizes | count | gpus | edit | qwen-dump-f32 | qwen-dump-bf16 | \
        qwen-dump-q8 | qwen-dump-q4 | diffusers-timing | \
        diffusers-dump-f32 | diffusers-dump-bf16 | compile | compare | table) todo+=("$1") ;;
    *) die "unknown phase $1 (setup bg-start bg-wait [S] bg-status qwen-warm qwen-cold diffusers-timing compare table plan; $BG_KNOWN; groups qwen qwen-dump diffusers diffusers-dump)" ;;
    esac
    shift
done

export CUDA_VISIBLE_DEVICES=$FG_GPU
save_out() {
    [ ! -f "$RESULTS" ] || cp "$RESULTS" "$OUT/results.jsonl"
    (cd "$QA" && ls ./*.log >/dev/null 2>&1 && tar -czf "$OUT/logs.tar.gz" ./*.log) || true
}
failed=()
for p in "${todo[@]}"; do
    name=${p%%:*}
    arg=${p#*:}
    [ "$arg" != "$p" ] || arg=""
    left=$((CALL_LIMIT - ($(date +%s) - T0)))
    if [ "$name" != table ] && [ "$left" -lt 30 ]; then
        say "$name: not started, only $left s left of CALL_LIMIT=$CALL_LIMIT"
        failed+=("$name(not started)")
        continue
    fi
    args=("$name")
    [ -z "$arg" ] || args+=("$arg")
    rc=0
    timeout -k 10 "$((left - 10))" bash "$SELF" --phase "${args[@]}" || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "$name: FAILED (exit status $rc$([ "$rc" -eq 124 ] && echo ": stopped at CALL_LIMIT"))"
        failed+=("$name")
    fi
    save_out
done
save_out
table
say "$(($(date +%s) - T0)) s in this call$([ ${#failed[@]} -eq 0 ] && echo ", every phase done" || echo "; FAILED: ${failed[*]}")"
[ ${#failed[@]} -eq 0 ]
