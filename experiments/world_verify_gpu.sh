#!/usr/bin/env bash
# Run `python -m dbdpo.world verify` on a GPU box: each concept × seed unit is its own process (units are
# independent and resumable), PARALLEL at a time, in the order given (the first concepts' seeds first), with a
# deadline, and packs the small files that come back from a GPU box (`verify workers=16` runs the same units in
# one process tree, without the deadline and the packing).
# Usage: experiments/world_verify_gpu.sh OUT_DIR [key=value ...]   (extra keys go to every verify process)
# Env: CONCEPTS / SEEDS (space-separated; default every shipped concept × 0 1 2), PARALLEL (default 16),
#      DEADLINE_S (stop what still runs and collect what finished), RESULTS_DIR.
# Writes OUT_DIR/units.tar.gz (runs/<concept>/seed<k>/unit.json, per-unit logs) and OUT_DIR/summary.txt;
# unpack into results/miniworld and rerun verify there to write the report from the finished units.
set -u
OUT=$(realpath -m "${1:?usage: $0 OUT_DIR [key=value ...]}"); shift
PY=${PYTHON:-python3}
RES=$(realpath -m "${RESULTS_DIR:-/tmp/verify_results}")
PAR=${PARALLEL:-16}
DEADLINE=${DEADLINE_S:-100000}
SEEDS=${SEEDS:-0 1 2}
CONCEPTS=${CONCEPTS:-$($PY -c 'from dbdpo.world.concepts import shipped_concepts; print(*shipped_concepts())')}
mkdir -p "$OUT" "$RES/logs"
t0=$(date +%s)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 15 > "$RES/logs/gpu.csv" 2>/dev/null & SMI=$!
unit() {  # concept seed
  local s0; s0=$(date +%s)
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 $PY -m dbdpo.world verify "concepts=[$1]" "seeds=[$2]" "results_dir=$RES" \
    threads=1 progress=false "hydra.run.dir=$RES/hydra/$1_$2" "${@:3}" > "$RES/logs/$1_seed$2.log" 2>&1
  echo "$1 seed$2 exit $? $(( $(date +%s) - s0 )) s (ended at $(( $(date +%s) - t0 )) s)" >> "$RES/logs/units.txt"
}
pids=()
for c in $CONCEPTS; do for s in $SEEDS; do
  while [ "$(jobs -rp | wc -l)" -gt "$PAR" ] && [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ]; do sleep 1; done
  [ $(( $(date +%s) - t0 )) -ge "$DEADLINE" ] && break 2
  unit "$c" "$s" "$@" & pids+=($!)
done; done
while [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ] && [ -n "$(for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo x; done)" ]; do
  sleep 2; done
pkill -f "results_dir=$RES" 2>/dev/null;   # only this script's units
kill "$SMI" 2>/dev/null; sleep 1
{ echo "verify units in $(( $(date +%s) - t0 )) s, PARALLEL=$PAR"; sort "$RES/logs/units.txt" 2>/dev/null
  echo "finished: $(ls "$RES"/runs/*/seed*/unit.json 2>/dev/null | wc -l)"; } > "$OUT/summary.txt"
(cd "$RES" && tar czf "$OUT/units.tar.gz" logs $(ls runs/*/seed*/unit.json 2>/dev/null))  # grids stay behind: 16 MiB per file comes back
cat "$OUT/summary.txt"
