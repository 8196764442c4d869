#!/usr/bin/env bash
# CUDA check of secateur: logits parity on the reference fixtures (CUDA against CPU, max |diff|
# <= 1e-3), a short Shears run on the embedded model with --device cuda, and the LoRA / NLS step
# time on both devices.
#
#   scripts/gpu-check.sh                 # build with --features cuda here, then check (needs a GPU)
#   scripts/gpu-check.sh --build-only    # build only (a machine without a GPU); prints the binary
#   scripts/gpu-check.sh --bin PATH      # check with a binary built elsewhere (nothing to download)
#
# Needs python3 (standard library only) to compare the logits. Writes into a scratch directory.
# GPU_CHECK_DEVICE=cpu dry-runs the script on a machine without a GPU (CPU against CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
gpu="${GPU_CHECK_DEVICE:-cuda}"
bin=""
build_only=false
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --build-only) build_only=true; shift ;;
    *) echo "usage: $0 [--build-only | --bin PATH]" >&2; exit 2 ;;
  esac
done
if [ -z "$bin" ]; then
  target="${CUDA_TARGET_DIR:-$HOME/.cache/secateur-cuda-target}"
  CARGO_TARGET_DIR="$target" cargo build --release --locked -p secateur-cli --features cuda
  bin="$target/release/secateur"
  echo "built: $bin"
  if $build_only; then exit 0; fi
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi

echo "== logits parity: CUDA against CPU"
echo '[[1, 5, 9, 2, 7, 3, 8, 4], [6, 2, 11, 3]]' > "$scratch/ids.json"
status=0
for fixture in crates/models/tests/fixtures/*/; do
  name="$(basename "$fixture")"
  [ -f "$fixture/config.json" ] || continue
  "$bin" logits --model "$fixture" --input-ids "$scratch/ids.json" --device cpu > "$scratch/$name.cpu.json"
  "$bin" logits --model "$fixture" --input-ids "$scratch/ids.json" --device "$gpu" > "$scratch/$name.cuda.json"
  python3 - "$name" "$scratch/$name.cpu.json" "$scratch/$name.cuda.json" <<'PY' || status=1
import json, sys
name, a, b = sys.argv[1], json.load(open(sys.argv[2]))["logits"], json.load(open(sys.argv[3]))["logits"]
flat = lambda x: [v for s in x for t in s for v in t]
fa, fb = flat(a), flat(b)
assert len(fa) == len(fb), f"{name}: shapes differ"
d = max(abs(x - y) for x, y in zip(fa, fb))
print(f"{name}: max |cuda - cpu| = {d:.2e} over {len(fa)} logits", "ok" if d <= 1e-3 else "FAIL (> 1e-3)")
sys.exit(0 if d <= 1e-3 else 1)
PY
done

echo "== Shears on the embedded model (1 epoch on 320 examples, 40 test examples), CPU then CUDA"
for device in cpu "$gpu"; do
  run="shears-$device"; [ -e "$scratch/$run" ] && run="$run-2"
  start=$(date +%s.%N)
  "$bin" shears --device "$device" --epochs 1 --train-size 320 --test-size 40 \
    --out "$scratch/$run" > "$scratch/$run.md" 2> "$scratch/$run.log" \
    || { tail -n 20 "$scratch/$run.log"; status=1; continue; }
  python3 -c "import sys; print(f'{sys.argv[1]}: {float(sys.argv[3]) - float(sys.argv[2]):.1f} s wall')" "$run" "$start" "$(date +%s.%N)"
  cat "$scratch/$run.md"
done

echo "== step time (seconds per optimizer step of 16 examples)"
for run in "$scratch"/shears-*/; do
  device="$(basename "$run")"
  for stage in lora nls; do
    report="$run/train-$stage/report.json"
    [ -f "$report" ] || continue
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'{sys.argv[2]} {sys.argv[3]:>4}: {r[\"seconds\"]/r[\"steps\"]:.4f} s/step ({r[\"steps\"]} steps)')" "$report" "$device" "$stage"
  done
done
exit $status
