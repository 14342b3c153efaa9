#!/usr/bin/env bash
# Retrain the world's text-to-image pipeline (text encoder, VAE, T2I) on one GPU box, keeping the shipped judges
# (oracle, scorer, evaluator: they meet their bars). Beside the shipped run, an ablation arm trains a second T2I on
# the shipped run's text encoder and VAE with the overrides in ABLATE_ARGS (default: a wider 16×16 level,
# t2i.channels=[64,64,128]), so one T2I change is measured at equal compute.
# Usage: experiments/world_t2i_gpu.sh OUT_DIR [tiny] [key=value ...]   (tiny: a few CPU steps, to test this script)
# Env: DEADLINE_S stops everything still training (stages are resumable); ABLATE=0 skips the ablation.
# Writes under OUT_DIR: ship.tar.part-* (the new out_dir), curves.tar.gz (curves, state, logs), summary.txt
set -u
OUT=$(realpath -m "${1:?usage: $0 OUT_DIR [tiny] [key=value ...]}"); shift
MODE=full; if [ "${1:-}" = tiny ]; then MODE=tiny; shift; fi
PY=${PYTHON:-python3}
RUNS=${RUNS_DIR:-/tmp/world_t2i_runs}
DEADLINE=${DEADLINE_S:-100000}
ABLATE=${ABLATE:-1}
read -r -a ABLATE_OVERRIDES <<< "${ABLATE_ARGS:-t2i.channels=[64,64,128]}"
SRC=dbdpo/assets/world
rm -rf "$RUNS"; mkdir -p "$RUNS/ship/out" "$RUNS/ship/work" "$RUNS/ablate/out" "$RUNS/ablate/work" "$OUT"
for f in oracle scorer evaluator; do cp "$SRC/$f.safetensors" "$SRC/$f.json" "$RUNS/ship/out/"; done
cp "$SRC/oracle.safetensors" "$SRC/oracle.json" "$RUNS/ablate/out/"   # the ablation's quality stage needs it
# the judges' figures and timings carry over into the new manifest
$PY - "$SRC/manifest.json" "$RUNS/ship/work/state.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
keep = ("oracle_accuracy", "scorer_retrieval", "evaluator_retrieval")
json.dump({"quality": {k: m["quality"][k] for k in keep},
           "timings_s": {k: m["timings_s"][k] for k in ("oracle", "scorer", "evaluator") if k in m["timings_s"]}},
          open(sys.argv[2], "w"), indent=2)
EOF
COMMON=(progress=false loader_workers=${LOADER_WORKERS:-4} threads=1 checkpoint_every=500 "reference_oracle=$SRC/oracle.safetensors")
CURVE=(t2i.curve_every=1000 t2i.curve_n=200)
if [ "$MODE" = tiny ]; then
  COMMON+=(text.steps=3 text.batch_size=8 vae.steps=3 vae.batch_size=4 t2i.steps=4 t2i.batch_size=4 quality.n=8
           quality.num_inference_steps=2 trainer.accelerator=cpu loader_workers=0)
  CURVE=(t2i.curve_every=2 t2i.curve_n=4)
fi
COMMON+=("$@")
pre() { local name=$1; shift; (PYTHONUNBUFFERED=1 $PY -m dbdpo.world pretrain "${COMMON[@]}" "$@" \
  > "$RUNS/$name.log" 2>&1; echo "$name exit $?" >> "$RUNS/exits.txt") & }
ship=(out_dir=$RUNS/ship/out work_dir=$RUNS/ship/work)
abl=(out_dir=$RUNS/ablate/out work_dir=$RUNS/ablate/work "${ABLATE_OVERRIDES[@]}")
alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
left() { [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ]; }
t0=$(date +%s)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 20 > "$RUNS/gpu.csv" 2>/dev/null & SMI=$!
save_curves() { (cd "$RUNS" && tar czf "$OUT/.curves.tmp" *.log exits.txt gpu.csv */work/state.json \
  */work/t2i_curve.jsonl 2>/dev/null; mv -f "$OUT/.curves.tmp" "$OUT/curves.tar.gz"); }
(while sleep 20; do save_curves; done) & SAVER=$!
pre ship_text "${ship[@]}" 'stages=[text]'; P1=$!
pre ship_vae "${ship[@]}" 'stages=[vae]'; P2=$!
while left && alive $P1 $P2; do sleep 1; done
pre ship_t2i "${ship[@]}" 'stages=[t2i]' "${CURVE[@]}"; P4=$!
P5=0
if [ "$ABLATE" = 1 ]; then  # same text encoder and VAE: only the overrides differ
  cp -r "$RUNS/ship/work/text_final" "$RUNS/ship/work/vae_final" "$RUNS/ablate/work/" 2>/dev/null
  pre abl_t2i "${abl[@]}" 'stages=[t2i,quality]' "${CURVE[@]}"; P5=$!
fi
while left && alive $P4; do sleep 1; done
echo "shipped T2I trained at $(( $(date +%s) - t0 )) s" >> "$RUNS/summary.txt"
pre ship_final "${ship[@]}" 'stages=[quality,manifest]'; P6=$!
while left && alive $P5 $P6; do sleep 1; done
pkill -f "work_dir=$RUNS/" 2>/dev/null; sleep 1   # only this script's runs
kill $SAVER 2>/dev/null; kill "$SMI" 2>/dev/null
echo "all done in $(( $(date +%s) - t0 )) s" >> "$RUNS/summary.txt"
{ cat "$RUNS/exits.txt"; for d in ship ablate; do echo "== $d"; cat "$RUNS/$d/work/state.json" 2>/dev/null; echo
  cat "$RUNS/$d/work/t2i_curve.jsonl" 2>/dev/null; done; } >> "$RUNS/summary.txt"
cp "$RUNS/summary.txt" "$OUT/summary.txt"
save_curves
(cd "$RUNS/ship" && tar cf - out | split -b 15M - "$OUT/ship.tar.part-")
ls -la "$OUT"
