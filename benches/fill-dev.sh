#!/bin/bash
# Here (the development machine): builds qwen-run and qwen-bench (release), puts them stripped and
# xz-compressed into .dev/ with the MLX CUDA pack and the diffusers wheels, and says whether what a device
# call carries (the working tree + .dev) fits the 64 MiB limit (and, if not, what in .dev device.sh does not use). Then: the phases of benches/device.sh.
#   usage: bash benches/fill-dev.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.dev
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || grep -qx '/.dev' .gitignore || echo /.dev/ >>.git/info/exclude
mkdir -p "$DEV"
[ -f "$DEV/mlx-cuda13-sm90.tar.xz" ] || ../shared/tools/mlx-cuda-pack.sh "$DEV"
ls "$DEV"/diffusers-0.42.1-*.whl >/dev/null 2>&1 ||
    python3 -m pip download -q --no-deps -d "$DEV" diffusers==0.42.1 importlib_metadata

cargo build --release -p qwen --bin qwen-run
cargo build --release --bin qwen-bench
for b in qwen-run qwen-bench; do
    rm -f "$DEV/$b" "$DEV/$b.xz"
    strip -o "$DEV/$b.tmp" "target/release/$b"
    xz -T2 -9 -c "$DEV/$b.tmp" >"$DEV/$b.xz"
    rm "$DEV/$b.tmp"
done
ls -la "$DEV"

tree=$({ git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s}')
dev=$(du -sb "$DEV" | cut -f1)
total=$((tree + dev))
awk -v t="$tree" -v d="$dev" -v n="$DEV" 'BEGIN {
    m = 1048576; printf "travels: working tree %.1f MiB + %s %.1f MiB = %.1f MiB (limit 64 MiB)\n", t / m, n, d / m, (t + d) / m }'
if [ "$total" -gt $((64 * 1048576)) ]; then
    echo "warning: over the limit; files in $DEV that device.sh does not use:" >&2
    for f in "$DEV"/* "$DEV"/.[!.]*; do
        case "${f#"$DEV"/}" in
        device-setup.sh | mlx-*.whl | mlx-cuda13-sm90.tar.xz | .mlx-version | diffusers-*.whl | importlib_metadata-*.whl | qwen-run.xz | qwen-bench.xz) ;;
        *) [ -e "$f" ] && du -h "$f" >&2 ;;
        esac
    done
    echo "carry less (benches/README.md: later calls can carry only .dev/qwen-run.xz and .dev/qwen-bench.xz)" >&2
fi
