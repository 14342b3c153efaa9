#!/usr/bin/env bash
# A short second device call after experiments/bench_gpu.sh (≈ 5 min): SD2 generation alone (compiled UNet and VAE
# decoder, channels-last, timed over 3 shards). Run on 2026-12-04: torch.compile's default mode (4.47 img/s) against
# mode=reduce-overhead (CUDA graphs, 4.60). Next: a batch of 32 (do the UNet's 320-channel GEMMs gain from longer
# rows?), then mode=max-autotune-no-cudagraphs (Triton/cuBLAS autotuning; its compile time is part of the answer).
# Same wheels and call as bench_gpu.sh:
#     device run: bash experiments/bench_gpu_generation.sh $OUT      (carry: [".whl"], timeout_s ≈ 360)
set -uo pipefail
out=${1:-results/bench}
. "$(dirname "$0")/gpu_env.sh"
timeout 170 python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last --generation-only --batch 32 \
  --out "$out" 2>&1 | quiet | tee "$out/generation_batch32.log"
echo "batch 32 done at ${SECONDS}s"
timeout $((335 - SECONDS)) python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last \
  --compile-mode max-autotune-no-cudagraphs --generation-only --out "$out" 2>&1 | quiet \
  | tee "$out/generation_autotune.log"
echo "total ${SECONDS}s"
