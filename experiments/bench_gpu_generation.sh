#!/usr/bin/env bash
# SD2 generation against issue 26's 60 % of the roofline, in one call of the device tool (≤ 9 min), the variants
# in order of what they tell; each is skipped when the time left would not let it finish (the JSON of a variant cut
# short still holds what it measured). All: compiled UNet and VAE decoder, channels-last, timed over 3 shards, the
# UNet alone as generation calls it (`unet_alone_roofline_fraction`: the loop's own cost is the difference), and
# each attention kernel alone on SD2's largest self-attention (32 × 5 heads × 4096 tokens × 64).
#   1. batch 16, default mode: the control (2026-12-04: 4.47 img/s; since then the decoder is compiled and the
#      images are rounded to uint8 on the GPU);
#   2. cuDNN's attention first (backbone.sdpa_backend=cudnn; torch tries FlashAttention-2 first by default):
#      attention is 16 % of SD2's UNet FLOPs at 4096 tokens and runs below the GEMMs' rate;
#   3. batch 32: do SD2's 320-channel GEMMs and convolutions gain from twice the rows?
#   4. inductor's options from diffusers' SDXL speed-up guide (coordinate-descent tuning of the Triton kernels,
#      1×1 convolutions as matmuls, no epilogue fusion), as backbone.compile_options sets them;
#   5. the best: every one of 2–4 that beat the control, together, with CUDA graphs (reduce-overhead: 4.60 img/s
#      against the default mode's 4.47 on 2026-12-04).
# max-autotune-no-cudagraphs (which also turns coordinate-descent tuning on) is left out: its GEMM autotuning takes
# minutes on SD2's shapes.
# From the repo root, with the wheels of experiments/gpu_wheels.sh carried in .whl/:
#     device run: bash experiments/bench_gpu_generation.sh $OUT      (carry: [".whl"], timeout_s ≈ 570)
# On a CPU, the same script at tiny size in seconds (its code path, not its speed):
#     BENCH_EXTRA="--tiny --compile-backend eager" bash experiments/bench_gpu_generation.sh /tmp/out
set -uo pipefail
out=${1:-results/bench}
budget=${BUDGET_S:-540}  # seconds this script may take
if ! nvidia-smi -L >/dev/null 2>&1 && [ -z "${BENCH_EXTRA:-}" ]; then
  echo "error: no GPU here (nvidia-smi failed); on a CPU: BENCH_EXTRA=\"--tiny --compile-backend eager\" $0 OUT" >&2
  exit 1
fi
. "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/smi.txt" 2>&1
variant() {  # name, seconds it needs, then bench_gpu's arguments; results in $out/<name>/
  local name=$1 need=$2; shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt "$need" ]; then echo "skipped $name: ${left}s left, needs ${need}s"; return; fi
  mkdir -p "$out/$name"
  echo "$*" > "$out/$name/args"  # for the last variant, which combines the winners
  timeout "$left" python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last --generation-only \
    --out "$out/$name" "$@" ${BENCH_EXTRA:-} 2>&1 | quiet | tee "$out/$name/generation.log"
  echo "$name done at ${SECONDS}s"
}
variant control 100
variant cudnn 100 --sdpa-backend cudnn
variant batch32 110 --batch 32
variant options 120 --compile-options coordinate_descent_tuning=true conv_1x1_as_mm=true epilogue_fusion=false
# the arguments of each variant that beat the control's img/s
best=$(python3 - "$out" cudnn batch32 options <<'PY'
import glob, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def rate(name):
    for f in glob.glob(str(out / name / "gpu_*.json")):
        m = json.load(open(f))["models"]
        if m and "generation_img_s" in m[0]:
            return m[0]["generation_img_s"]
    return 0.0
print(" ".join((out / n / "args").read_text().strip() for n in sys.argv[2:] if rate(n) > rate("control") > 0))
PY
)
echo "beat the control: ${best:-none}"
# shellcheck disable=SC2086
variant best 110 --compile-mode reduce-overhead $best
echo "total ${SECONDS}s"
