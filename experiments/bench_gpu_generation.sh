#!/usr/bin/env bash
# A short second device call after experiments/bench_gpu.sh (≈ 4 min): SD2 generation alone (compiled UNet,
# channels-last, batch 16, timed over 3 shards) with torch.compile's default mode, then with mode=reduce-overhead
# (CUDA graphs: no launch gaps between the UNet's kernels). Same wheels and call as bench_gpu.sh:
#     device run: bash experiments/bench_gpu_generation.sh $OUT      (carry: [".whl"], timeout_s ≈ 290)
set -uo pipefail
out=${1:-results/bench}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
quiet() { grep -v -E "kept in float32|Dynamo|originates from|upsampling.py|warn_once|is_torch_version|^$"; }
timeout 125 python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last --generation-only \
  --out "$out" 2>&1 | quiet | tee "$out/generation_default.log"
echo "default mode done at ${SECONDS}s"
timeout $((275 - SECONDS)) python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last \
  --compile-mode reduce-overhead --generation-only --out "$out" 2>&1 | quiet | tee "$out/generation_cudagraphs.log"
echo "total ${SECONDS}s"
