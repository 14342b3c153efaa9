#!/usr/bin/env bash
# Every GPU measurement of issue 26 in one call of the device tool (≈ 8 min on an H200, inside the 8 the issue
# allows), the least-known first. SD2 eager and SD2 compiled were measured on 2026-12-04 (benchmarks.md); next:
# SDXL with torch.compile + channels-last (its defaults now: backbone.compile in generation; backbone.compile_training
# in the DPO step at 2 pairs, with its compile time and the step-0 loss's distance from ln 2), then SD2's compiled
# generation again (a second sample of the figure, with matmul_rate's steadier roofline). Each measurement is
# written to its JSON as soon as it is made ("partial": true until the model is done), so a run cut short keeps what
# it has. From the repo root, with the wheels of experiments/gpu_wheels.sh carried in .whl/:
#     device run: bash experiments/bench_gpu.sh $OUT      (carry: [".whl"], timeout_s ≈ 540)
# then copy $OUT's JSON and logs into results/bench/ and the table into experiments/benchmarks.md.
set -uo pipefail
out=${1:-results/bench}
. "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/smi.txt" 2>&1
mkdir -p "$out/sdxl"
timeout 400 python3 -m dbdpo.bench_gpu --models sdxl-base --compile --channels-last --micros 2 --out "$out/sdxl" \
  2>&1 | quiet | tee "$out/sdxl/compile.log"
echo "sdxl compiled done at ${SECONDS}s"
timeout $((510 - SECONDS)) python3 -m dbdpo.bench_gpu --models sd2-base --compile --channels-last \
  --generation-only --out "$out" 2>&1 | quiet | tee "$out/compile.log"
echo "total ${SECONDS}s"
