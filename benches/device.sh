#!/bin/bash
# qwen-aot against diffusers on one GPU machine, in chained calls of < 10 minutes each on the same
# warm machine (state in /tmp/qa: a machine idle for ~30 s is lost with its /tmp). Run from the repository
# root with the carried .dev/ folder (device-setup.sh + the MLX CUDA pack, the diffusers and
# importlib_metadata wheels, qwen-run.xz and qwen-bench.xz built here: benches/fill-dev.sh). See benches/README.md.
#
#   usage: bash benches/device.sh PHASE [PHASE...]
#     setup      device-setup.sh, the full random bf16 checkpoint in /tmp/qa/model, the initial latents
#     qwen       = qwen-warm qwen-cold qwen-dump
#       qwen-warm  qwen-bench warm: load, one warm-up image, IMAGES timed images (rows load/image/step/...)
#       qwen-cold  qwen-run as one cold process timed by wall clock (row image-cold)
#       qwen-dump  fidelity dumps from the initial latents: f32 (MLX_ENABLE_TF32=0) and bf16, DUMP_STEPS steps
#     diffusers  diffusers_qwen_e2e.py: bf16 dump + timing rows, then the f32 dump (no timing)
#     compile    diffusers_qwen_dit.py --compile: eager and torch.compile transformer step rows
#     compare    compare_tensors.py: qwen f32 / qwen bf16 / diffusers bf16 against diffusers f32 (rows "fidelity")
#     table      only the table
#   Every phase appends its rows to /tmp/qa/results.jsonl and prints them; after the phases, all rows so far
#   are copied to $OUT/results.jsonl (with the logs in $OUT/logs.tar.gz) and a short table is printed last.
#   Settings (environment): RES (1024 or WxH), STEPS (50), CFG (4), IMAGES (3), DUMP_STEPS (2),
#   PROMPT ("a red fox in the snow, watercolor"), NEG (" "), TXT (prompt rows for the compile phase,
#   default: read from a dump, else 14).
set -euo pipefail
cd "$(dirname "$0")/.."

QA=/tmp/qa
DEV=.dev
B=benches
OUT=${OUT:-$QA/out}
RESULTS=$QA/results.jsonl
RES=${RES:-1024}
STEPS=${STEPS:-50}
CFG=${CFG:-4}
IMAGES=${IMAGES:-3}
DUMP_STEPS=${DUMP_STEPS:-2}
PROMPT=${PROMPT:-a red fox in the snow, watercolor}
NEG=${NEG:- }
case "$RES" in *x*) W=${RES%x*} H=${RES#*x} ;; *) W=$RES H=$RES ;; esac
mkdir -p "$QA" "$OUT"

say() { printf '[device.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Runs a command, prints its output, appends its schema rows (lines starting {"system") to RESULTS.
rows() {
    "$@" | while IFS= read -r line; do
        printf '%s\n' "$line"
        case "$line" in '{"system"'*) printf '%s\n' "$line" >>"$RESULTS" ;; esac
    done
}

gpu_name() {
    [ -s "$QA/gpu" ] || python3 -c "import torch; print(torch.cuda.get_device_name(0))" >"$QA/gpu"
    cat "$QA/gpu"
}

need_setup() {
    [ -s /tmp/mlx-libdir ] && [ -f "$QA/model/model_index.json" ] && [ -f "$QA/latents.safetensors" ] ||
        die "no /tmp/qa state: run the setup phase first (a machine left idle loses its /tmp)"
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH=$(cat /tmp/mlx-libdir)
}

# The carried binary NAME ($DEV/NAME.xz, stripped and compressed by benches/fill-dev.sh, or $DEV/NAME),
# unpacked into $QA/bin.
need_bin() {
    mkdir -p "$QA/bin"
    if [ -f "$DEV/$1.xz" ]; then
        xz -dc "$DEV/$1.xz" >"$QA/bin/$1"
    elif [ -f "$DEV/$1" ]; then
        cp "$DEV/$1" "$QA/bin/$1"
    else
        die "$DEV/$1.xz missing: run benches/fill-dev.sh here (benches/README.md)"
    fi
    chmod +x "$QA/bin/$1"
}

phase_setup() {
    say "setup: MLX CUDA, diffusers"
    bash "$DEV/device-setup.sh" 2>&1 | tee "$QA/setup.log"
    gpu_name >/dev/null
    if [ -f "$QA/model/model_index.json" ]; then
        say "setup: $QA/model exists"
    else
        say "setup: full random bf16 checkpoint in $QA/model (~58 GB, ~75 s)"
        df -h /tmp | tail -1 >&2
        python3 $B/make_full_checkpoint.py "$QA/model" tests/fixtures/tiny-qwen-image/tokenizer \
            tests/fixtures/tiny-qwen-image/vae/config.json 2>&1 | tee "$QA/checkpoint.log"
    fi
    python3 $B/make_latents.py "$QA/latents.safetensors" $(((W / 16) * (H / 16))) 0
    say "setup: done ($(gpu_name), $(cat /tmp/mlx-libdir))"
}

phase_qwen_warm() {
    need_setup
    need_bin qwen-bench
    say "qwen-warm: $RES, bf16, $STEPS steps, cfg $CFG, 1 warm-up + $IMAGES images"
    "$QA/bin/qwen-bench" warm --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" \
        --prompt "$PROMPT" --negative "$NEG" --images "$IMAGES" --gpu "$(gpu_name)" \
        --out "$RESULTS" 2> >(tee "$QA/qwen-warm.log" >&2)
}

phase_qwen_cold() {
    need_setup
    need_bin qwen-run
    say "qwen-cold: qwen-run, one process, $RES, bf16, $STEPS steps"
    # GPU memory in use, sampled every 0.2 s (MLX's own peak is not printed by qwen-run)
    (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0; sleep 0.2; done) \
        >"$QA/smi.log" 2>/dev/null &
    local smi=$!
    local t0 t1
    t0=$(date +%s.%N)
    "$QA/bin/qwen-run" --model "$QA/model" --res "$RES" --dtype bf16 --steps "$STEPS" --cfg "$CFG" \
        --prompt "$PROMPT" --negative-prompt "$NEG" --output "$QA/qwen-cold.png" 2>&1 | tee "$QA/qwen-cold.log"
    t1=$(date +%s.%N)
    kill "$smi" 2>/dev/null || true
    wait "$smi" 2>/dev/null || true
    python3 - "$t0" "$t1" "$QA/qwen-cold.log" "$QA/smi.log" "$(gpu_name)" "$W" "$H" "$STEPS" "$CFG" >>"$RESULTS.cold" <<'EOF'
import json, re, sys
t0, t1, log, smi, gpu, w, h, steps, cfg = sys.argv[1:]
text = open(log).read()
ms = lambda pat: round(float(m.group(1)) * 1000, 1) if (m := re.search(pat, text)) else None
mib = [int(l) for l in open(smi).read().split() if l.strip().isdigit()]
print(json.dumps({"system": "qwen-aot", "gpu": gpu, "width": int(w), "height": int(h), "steps": int(steps),
                  "cfg": float(cfg), "dtype": "bf16", "what": "image-cold", "ms": round((float(t1) - float(t0)) * 1000, 1),
                  "peak_gb": None, "smi_peak_gb": round(max(mib) * 2**20 / 1e9, 2) if mib else None,
                  "load_ms": ms(r"load: ([\d.]+) s"), "encode_ms": ms(r"encode: ([\d.]+) s"),
                  "denoise_ms": ms(r"denoise: ([\d.]+) s"), "decode_ms": ms(r"decode: ([\d.]+) s")}))
EOF
    rows cat "$RESULTS.cold"
    rm -f "$RESULTS.cold"
}

phase_qwen_dump() {
    need_setup
    need_bin qwen-bench
    local common=(--model "$QA/model" --res "$RES" --latents "$QA/latents.safetensors" --steps-list "$DUMP_STEPS"
        --cfg "$CFG" --prompt "$PROMPT" --negative "$NEG")
    say "qwen-dump: f32 (MLX_ENABLE_TF32=0), $DUMP_STEPS steps"
    MLX_ENABLE_TF32=0 "$QA/bin/qwen-bench" dump "${common[@]}" --dtype f32 --out "$QA/qwen-f32.safetensors" 2>&1 |
        tee "$QA/qwen-dump-f32.log"
    say "qwen-dump: bf16, $DUMP_STEPS steps"
    "$QA/bin/qwen-bench" dump "${common[@]}" --dtype bf16 --out "$QA/qwen-bf16.safetensors" 2>&1 |
        tee "$QA/qwen-dump-bf16.log"
}

phase_diffusers() {
    need_setup
    say "diffusers: bf16 dump ($DUMP_STEPS steps) and timing (1 warm-up + $IMAGES images)"
    IMAGES=$IMAGES STEPS=$STEPS rows python3 $B/diffusers_qwen_e2e.py "$QA/model" "$QA/latents.safetensors" \
        "$QA/diffusers-bf16.safetensors" "$DUMP_STEPS" "$CFG" "$PROMPT" "$NEG" "$RES" 2> >(tee "$QA/diffusers-bf16.log" >&2)
    say "diffusers: f32 dump ($DUMP_STEPS steps)"
    DTYPE=f32 SKIP_TIMING=1 python3 $B/diffusers_qwen_e2e.py "$QA/model" "$QA/latents.safetensors" \
        "$QA/diffusers-f32.safetensors" "$DUMP_STEPS" "$CFG" "$PROMPT" "$NEG" "$RES" 2> >(tee "$QA/diffusers-f32.log" >&2)
}

# Prompt rows (after the template drop) of a dump, for the compile phase's text length.
prompt_rows() {
    local f
    for f in "$QA/qwen-bf16.safetensors" "$QA/diffusers-bf16.safetensors" "$QA/qwen-f32.safetensors"; do
        [ -f "$f" ] && python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; print(json.loads(f.read(n))['prompt_emb']['shape'][1])" "$f" && return
    done
    echo 14 # "a red fox in the snow, watercolor" (tests/fixtures/references/pipeline.safetensors)
}

phase_compile() {
    [ -s /tmp/mlx-libdir ] || die "run the setup phase first (diffusers is installed there)"
    local txt=${TXT:-$(prompt_rows)}
    say "compile: diffusers transformer step, eager and torch.compile (minutes of compilation), txt $txt/6"
    rows python3 $B/diffusers_qwen_dit.py --width "$W" --height "$H" --txt "$txt" --neg-txt 6 --compile \
        2> >(tee "$QA/compile.log" >&2)
}

phase_compare() {
    local gpu base
    gpu=$(gpu_name)
    for pair in "qwen-f32:qwen-aot:f32" "qwen-bf16:qwen-aot:bf16" "diffusers-bf16:diffusers-eager:bf16"; do
        IFS=: read -r name system dtype <<<"$pair"
        [ -f "$QA/$name.safetensors" ] && [ -f "$QA/diffusers-f32.safetensors" ] || {
            say "compare: $name or diffusers-f32 missing, skipped"
            continue
        }
        base=$(python3 -c 'import json,sys; a=sys.argv[1:]; print(json.dumps({"system": a[0], "gpu": a[1], "width": int(a[2]), "height": int(a[3]), "steps": int(a[4].split(",")[-1]), "cfg": float(a[5]), "dtype": a[6], "ours": a[7], "reference": "diffusers-f32"}))' \
            "$system" "$gpu" "$W" "$H" "$DUMP_STEPS" "$CFG" "$dtype" "$name")
        say "compare: $name vs diffusers-f32"
        rows python3 $B/compare_tensors.py "$QA/$name.safetensors" "$QA/diffusers-f32.safetensors" --base "$base"
    done
}

table() {
    [ -f "$RESULTS" ] || { say "no rows yet"; return; }
    python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
timing = {}
for r in rows:
    if r.get("what") == "fidelity": continue
    k = (r["system"], r.get("dtype"), r["what"], r.get("note", ""))
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
    print("%-15s" % "" + "".join("%16s" % n for n in names))
    for t in tensors:
        cells = []
        for n in names:
            r = next((r for r in fid if r["ours"] == n and r["tensor"] == t), None)
            c = "-" if r is None else ("%.2e" % r["rel_err"] if "rel_err" in r else "shape!")
            if r is not None and "px_max" in r: c += " %g/%g" % (r["px_max"], r["px_mean"])
            cells.append("%16s" % c)
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
}

[ $# -gt 0 ] || { sed -n '2,23p' "$0"; exit 2; }
for phase in "$@"; do
    case "$phase" in
    setup) phase_setup ;;
    qwen)
        phase_qwen_warm
        phase_qwen_cold
        phase_qwen_dump
        ;;
    qwen-warm) phase_qwen_warm ;;
    qwen-cold) phase_qwen_cold ;;
    qwen-dump) phase_qwen_dump ;;
    diffusers) phase_diffusers ;;
    compile) phase_compile ;;
    compare) phase_compare ;;
    table) ;;
    *) die "unknown phase $phase (setup, qwen, qwen-warm, qwen-cold, qwen-dump, diffusers, compile, compare, table)" ;;
    esac
done
[ -f "$RESULTS" ] && cp "$RESULTS" "$OUT/results.jsonl"
(cd "$QA" && ls ./*.log >/dev/null 2>&1 && tar -czf "$OUT/logs.tar.gz" ./*.log) || true
table
