#!/usr/bin/env bash
# Train the miniature world on one GPU box in a few minutes: the default-config run that is shipped
# (`python -m dbdpo.world pretrain`, its independent stages as parallel processes on one work_dir), and, beside
# it, comparison runs that say what more compute or another latent size would buy:
#   long    the default VAE + T2I with 2.5x the T2I steps              (accuracy-vs-minutes curve)
#   wide    a wider UNet, 64/128/128 with attention at 4x4 and 2x2       (same T2I steps as the default)
#   judges  oracle / scorer / evaluator with 2x their default steps
# Usage: experiments/world_pretrain_gpu.sh OUT_DIR [tiny]    (tiny: a few steps on the CPU, to test this script)
# Env: COMPARE=0 skips the comparison runs; SHIP_DEADLINE_S stops unfinished shipped stages (they are resumable).
# Writes under OUT_DIR: ship.tar.gz.part-* (the shipped out_dir), curves.tar.gz (curves, state, logs), summary.txt
set -u
OUT=$(realpath "${1:?usage: $0 OUT_DIR [tiny]}"); MODE=${2:-full}
PY=${PYTHON:-python3}
RUNS=${RUNS_DIR:-/tmp/world_runs}
DEADLINE=${DEADLINE_S:-400}     # comparison runs are stopped here
SHIP_DEADLINE=${SHIP_DEADLINE_S:-100000}
COMPARE=${COMPARE:-1}
rm -rf "$RUNS"; mkdir -p "$RUNS" "$OUT"
REF=dbdpo/assets/world/oracle.safetensors   # the previously shipped oracle judges curves while the new one trains
COMMON=(progress=false loader_workers=2 threads=1 checkpoint_every=500 "reference_oracle=$REF")
CURVE=(t2i.curve_every=500 t2i.curve_n=200)
if [ "$MODE" = tiny ]; then
  COMMON+=(oracle.steps=4 oracle.batch_size=8 scorer.steps=4 scorer.batch_size=8 evaluator.steps=4
           evaluator.batch_size=8 vae.steps=4 vae.batch_size=4 t2i.steps=4 t2i.batch_size=4 quality.n=8
           quality.num_inference_steps=2 trainer.accelerator=cpu)
  CURVE=(t2i.curve_every=2 t2i.curve_n=4)
  T2I_LONG=10; JUDGE=(oracle.steps=8 scorer.steps=8 evaluator.steps=8)
else
  T2I_LONG=8000; JUDGE=(oracle.steps=6000 scorer.steps=3000 evaluator.steps=3000)
fi
pre() { local name=$1; shift; (PYTHONUNBUFFERED=1 $PY -m dbdpo.world pretrain "${COMMON[@]}" "$@" \
  > "$RUNS/$name.log" 2>&1; echo "$name exit $?" >> "$RUNS/exits.txt") & }
ship=(out_dir=$RUNS/ship/out work_dir=$RUNS/ship/work)
t0=$(date +%s)
pre ship_oracle "${ship[@]}" 'stages=[oracle]';    P1=$!
pre ship_scorer "${ship[@]}" 'stages=[scorer]';    P2=$!
pre ship_evaluator "${ship[@]}" 'stages=[evaluator]'; P3=$!
pre ship_t2i "${ship[@]}" 'stages=[vae,t2i]' "${CURVE[@]}"; P4=$!
P5=0; P6=0; P7=0
if [ "$COMPARE" = 1 ]; then
pre long out_dir=$RUNS/long/out work_dir=$RUNS/long/work 'stages=[vae,t2i]' t2i.steps=$T2I_LONG \
  "${CURVE[@]}"; P5=$!
pre wide out_dir=$RUNS/wide/out work_dir=$RUNS/wide/work 'stages=[vae,t2i]' 't2i.channels=[64,128,128]' \
  't2i.attention=[false,true,true]' "${CURVE[@]}"; P6=$!
pre judges out_dir=$RUNS/judges/out work_dir=$RUNS/judges/work 'stages=[oracle,scorer,evaluator]' "${JUDGE[@]}"; P7=$!
fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 30 > "$RUNS/gpu.csv" 2>/dev/null & SMI=$!
save_curves() { (cd "$RUNS" && tar czf "$OUT/.curves.tmp" *.log exits.txt */work/state.json */work/t2i_curve.jsonl \
  2>/dev/null; mv -f "$OUT/.curves.tmp" "$OUT/curves.tar.gz"); }
(while sleep 30; do save_curves; done) & SAVER=$!   # if the command is cut off, the latest curves still come back
while [ $(( $(date +%s) - t0 )) -lt "$SHIP_DEADLINE" ] && { kill -0 $P1 || kill -0 $P2 || kill -0 $P3 || kill -0 $P4; } 2>/dev/null
do sleep 2; done
for p in $P1 $P2 $P3 $P4; do kill -0 $p 2>/dev/null && { echo "stopped unfinished: pid $p" >> "$RUNS/summary.txt"; pkill -P $p; }; done
sleep 1
echo "shipped stages trained in $(( $(date +%s) - t0 )) s" | tee -a "$RUNS/summary.txt"
pre ship_final "${ship[@]}" 'stages=[quality,manifest]'; wait $!
echo "shipped run done in $(( $(date +%s) - t0 )) s" | tee -a "$RUNS/summary.txt"
while [ "$COMPARE" = 1 ] && [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ] && { kill -0 $P5 || kill -0 $P6 || kill -0 $P7; } 2>/dev/null; do
  sleep 2; done
pkill -f "work_dir=$RUNS/" 2>/dev/null; sleep 2   # only this script's runs
kill $SAVER 2>/dev/null; kill "$SMI" 2>/dev/null
echo "all done in $(( $(date +%s) - t0 )) s" | tee -a "$RUNS/summary.txt"
{ cat "$RUNS/exits.txt"; for d in ship long wide judges; do echo "== $d"; cat "$RUNS/$d/work/state.json" 2>/dev/null;
  echo; cat "$RUNS/$d/work/t2i_curve.jsonl" 2>/dev/null; done; } >> "$RUNS/summary.txt"
cp "$RUNS/summary.txt" "$OUT/summary.txt"
save_curves
(cd "$RUNS/ship" && tar cf - out | split -b 15M - "$OUT/ship.tar.part-")
[ -d "$RUNS/long/out/pipeline" ] && (cd "$RUNS/long/out" && tar cf - pipeline | split -b 15M - "$OUT/long.tar.part-")
ls -la "$OUT"
