#!/bin/bash
# Here (the development machine): builds qwen-run and qwen-bench (release), puts them stripped, in one
# xz-compressed tar (they share most of their code: 2.1 MB together against 3.4 MB as two .xz files), into
# .dev/qwen-bins.tar.xz, makes the MLX CUDA pack and fetches the diffusers wheels when missing, then prints the
# `carry` list of what benches/device.sh uses and whether the working tree + those files fit the 64 MiB a call
# carries (the exit status is 1 when they do not).
#   usage: bash benches/fill-dev.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.dev
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || grep -qx '/.dev' .gitignore || echo /.dev/ >>.git/info/exclude
mkdir -p "$DEV"
[ -f "$DEV/mlx-cuda13-sm90.tar.xz" ] || ../shared/tools/mlx-cuda-pack.sh "$DEV"
ls "$DEV"/diffusers-0.42.1-*.whl >/dev/null 2>&1 ||
    python3 -m pip download -q --no-deps -d "$DEV" diffusers==0.42.1 importlib_metadata
# diffusers' load_lora_weights needs peft (the lightning phase); its other needs are on the device
ls "$DEV"/peft-0.21.2-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps -d "$DEV" peft==0.21.2

cargo build --release -p qwen --bin qwen-run
cargo build --release --bin qwen-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in qwen-run qwen-bench; do strip -o "$tmp/$b" "target/release/$b"; done
tar -C "$tmp" -cf - qwen-run qwen-bench | xz -9e -c >"$tmp/qwen-bins.tar.xz"
mv "$tmp/qwen-bins.tar.xz" "$DEV/qwen-bins.tar.xz"
rm -f "$DEV/qwen-run.xz" "$DEV/qwen-bench.xz" # the former separate files (device.sh would take the tar first anyway)
tar -tvJf "$DEV/qwen-bins.tar.xz"

# the Python wheels device.sh installs (diffusers, importlib_metadata, peft) in one tar.xz, each re-zipped
# uncompressed so that xz compresses its contents: 2.2 MB against 7.2 MB as carried wheels
python3 - "$DEV" "$tmp" <<'PY'
import glob, os, sys, zipfile
dev, tmp = sys.argv[1:]
os.makedirs(f"{tmp}/wheels")
for pat in ("diffusers-*.whl", "importlib_metadata-*.whl", "peft-*.whl"):
    found = glob.glob(f"{dev}/{pat}")
    if len(found) != 1:
        sys.exit(f"error: want exactly one {dev}/{pat}, found: {found}")
    with zipfile.ZipFile(found[0]) as zi, zipfile.ZipFile(f"{tmp}/wheels/{os.path.basename(found[0])}", "w") as zo:
        for info in zi.infolist():
            zo.writestr(info, zi.read(info.filename), compress_type=zipfile.ZIP_STORED)
PY
tar -C "$tmp/wheels" -cf - . | xz -9e -c >"$DEV/py-wheels.tar.xz"

# what device.sh uses, as `carry` names them (globs are not expanded there): the MLX pack (`first`) and the
# wheels and binaries (`rest`)
found=($DEV/mlx-*-cp312-*.whl) # shellcheck disable=SC2206 # the glob is meant
if [ ${#found[@]} -ne 1 ] || [ ! -f "${found[0]}" ]; then
    echo "error: want exactly one $DEV/mlx-*-cp312-*.whl, found: ${found[*]}" >&2
    exit 1
fi
first=("$DEV/device-setup.sh" "$DEV/mlx-cuda13-sm90.tar.xz" "${found[0]}")
rest=("$DEV/py-wheels.tar.xz" "$DEV/qwen-bins.tar.xz")
carry=("${first[@]}" "${rest[@]}")
ls -l "${carry[@]}"

bytes() { stat -c %s "$@" | awk '{s += $1} END {print s}'; }
# the paths as the run tool's `carry` takes them: ["a", "b"]
carry_list() {
    local sep="" f
    printf '['
    for f in "$@"; do
        printf '%s"%s"' "$sep" "$f"
        sep=", "
    done
    printf ']'
}
tree=$({ git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
dev=$(bytes "${carry[@]}")
all=$(du -sb "$DEV" | cut -f1)
echo "carry: $(carry_list "${carry[@]}")"
awk -v t="$tree" -v d="$dev" -v a="$all" 'BEGIN {
    m = 1048576
    printf "travels: working tree %.1f MiB + the carry above %.1f MiB = %.1f MiB (limit 64 MiB; all of .dev: %.1f MiB)\n",
        t / m, d / m, (t + d) / m, a / m }'
limit=$((64 * 1048576))
if [ $((tree + dev)) -gt $limit ]; then
    # Two carries: a machine keeps the carried paths a later call does not name (while it is held), so a
    # first call can bring the MLX pack and the next ones the rest (setup checks that all are there).
    d1=$(bytes "${first[@]}")
    d2=$(bytes "${rest[@]}")
    if [ $((tree + d1)) -gt $limit ] || [ $((tree + d2)) -gt $limit ]; then
        echo "error: over the 64 MiB a call carries, also in two carries: make the working tree smaller" >&2
        exit 1
    fi
    awk -v t="$tree" -v a="$d1" -v b="$d2" 'BEGIN { m = 1048576
        printf "over 64 MiB in one call: carry in two (%.1f and %.1f MiB with the tree), chained on one held machine:\n",
            (t + a) / m, (t + b) / m }'
    echo "  first call, command \`true\`: carry $(carry_list "${first[@]}")"
    echo "  then each call: carry $(carry_list "${rest[@]}")"
fi
echo "then: bash benches/device.sh plan"
