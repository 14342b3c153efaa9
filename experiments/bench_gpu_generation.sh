#!/usr/bin/env bash
# SD2 generation against issue 26's 60 % of the roofline, in one call of the device tool (≤ 9 min), the variants
# in order of what they tell; each is skipped when the time left would not let it finish (the JSON of a variant cut
# short still holds what it measured). All: compiled UNet and VAE decoder, channels-last, timed over 3 shards, and
# the UNet alone as generation calls it (`unet_alone_roofline_fraction`: the loop's own cost is the difference).
#   1. batch 16, default mode: the control (2026-12-04: 4.47 img/s; since then the decoder is compiled and the
#      images are rounded to uint8 on the GPU);
#   2. batch 32: do SD2's 320-channel GEMMs and convolutions gain from twice the rows?
#   3. batch 16 with inductor's options from diffusers' SDXL speed-up guide (coordinate-descent tuning of the
#      Triton kernels, 1×1 convolutions as matmuls, no epilogue fusion), as backbone.compile_options sets them;
#   4. the same with CUDA graphs (reduce-overhead: 4.60 img/s without the options on 2026-12-04).
# Measured before (2026-12-04): default mode 4.47 img/s, reduce-overhead 4.60; max-autotune-no-cudagraphs (which
# also turns coordinate-descent tuning on) is left out: its GEMM autotuning takes minutes on SD2's shapes.
# From the repo root, with the wheels of experiments/gpu_wheels.sh carried in .whl/:
#     device run: bash experiments/bench_gpu_generation.sh $OUT      (carry: [".whl"], timeout_s ≈ 560)
# On a CPU, the same script at tiny size in seconds (its code path, not its speed):
#     BENCH_EXTRA="--tiny --compile-backend eager" bash experiments/bench_gpu_generation.sh /tmp/out
set -uo pipefail
out=${1:-results/bench}
budget=${BUDGET_S:-540}  # seconds this script may take
. "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/smi.txt" 2>&1
flags="coordinate_descent_tuning=true conv_1x1_as_mm=true epilogue_fusion=false"
variant() {  # name, seconds it needs, then bench_gpu's arguments
  local name=$1 need=$2; shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "skipped $name: ${left}s left, needs ${need}s"; return; fi
  timeout "$left" python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last --generation-only \
    --out "$out" "$@" ${BENCH_EXTRA:-} 2>&1 | quiet | tee "$out/generation_$name.log"
  echo "$name done at ${SECONDS}s"
}
variant batch16 100
variant batch32 140 --batch 32
# shellcheck disable=SC2086
variant options 150 --compile-options $flags
# shellcheck disable=SC2086
variant options_cudagraphs 130 --compile-mode reduce-overhead --compile-options $flags
echo "total ${SECONDS}s"
