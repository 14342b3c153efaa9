#!/usr/bin/env bash
# Issue 27 on a GPU box: does DPO's gain reach the oracle at the paper's data scale? One `verify` per setting over
# the same concepts × seeds (the same DreamBooth starts: each setting's units reuse the first setting's DreamBooth
# checkpoints and evaluations), settings in priority order, each with its own deadline share, through
# experiments/world_verify_gpu.sh (units in parallel, finished units packed).
# Usage: experiments/scale_sweep_gpu.sh OUT_DIR [setting ...]
# Env: CONCEPTS (default: 4 concepts), SEEDS (default "0 1"), PARALLEL (16), DEADLINE_S per setting (240),
#      RESULTS_ROOT (/tmp/scale_sweep), EVAL_IMAGES (32: evaluation images per prompt; images 0-3 are verify's own
#      4-image check, the rest measure that check's sampling noise, experiments/eval_noise.py), EVAL_NOISE
#      (per_unit: each unit's evaluation draws its own noises, so they average out over units; verify's default
#      `shared` gives every unit the same ones).
# Settings (N = prompts per DPO step at S = 2, so prompts.n = 2N; M = images per prompt):
#   n16        verify's own (N 16, M 8, DDIM η 0, guidance 3)     n64        N 64
#   n256       N 256                                              n64_m16    N 64, M 16
#   n64_eta1   N 64, DPO samples with DDIM η = 1 (DDPM-like variety)
#   n64_g7.5   N 64, DPO samples at guidance 7.5
# Then, per setting, the oracle agreement of the kept pairs (experiments/pair_labels_vs_oracle.py on the S = 1
# runs) goes to OUT_DIR/<setting>/pairs.txt and the pooled Δ with the 4-image check's noise
# (experiments/eval_noise.py) to OUT_DIR/<setting>/eval_noise.txt. Unpack each OUT_DIR/<setting>/units.tar.gz into
# results/scale/<setting> and rerun `python -m dbdpo.world verify results_dir=results/scale/<setting> ...` (same
# keys) to write its report from the finished units; then the Δ table across settings:
# `python experiments/scale_table.py n16=results/scale/n16/verify.json n64=results/scale/n64/verify.json …`
# (results/scale-check/notes.md shows both outputs for the CPU subset).
set -u
OUT=$(realpath -m "${1:?usage: $0 OUT_DIR [setting ...]}"); shift
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
ROOT=$(realpath -m "${RESULTS_ROOT:-/tmp/scale_sweep}")
export CONCEPTS=${CONCEPTS:-"zigzag_star ringed_circle dotted_triangle checked_heart"}
export SEEDS=${SEEDS:-"0 1"}
export DEADLINE_S=${DEADLINE_S:-240}
SETTINGS=("$@")
[ ${#SETTINGS[@]} -eq 0 ] && SETTINGS=(n16 n64 n256 n64_m16 n64_eta1 n64_g7.5)
base="\"backbone=world\",\"logger=none\",\"progress=false\",\"eval.images_per_prompt=${EVAL_IMAGES:-32}\""
overrides() {
  case $1 in
    n16) echo "$base,\"prompts.n=32\"" ;;
    n64) echo "$base,\"prompts.n=128\"" ;;
    n256) echo "$base,\"prompts.n=512\"" ;;
    n64_m16) echo "$base,\"prompts.n=128\",\"generate.images_per_prompt=16\"" ;;
    n64_eta1) echo "$base,\"prompts.n=128\",\"generate.eta=1.0\"" ;;
    n64_g7.5) echo "$base,\"prompts.n=128\",\"generate.guidance_scale=7.5\"" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
first=""
for s in "${SETTINGS[@]}"; do
  res="$ROOT/$s"
  mkdir -p "$res/runs" "$OUT/$s"
  if [ -n "$first" ]; then  # the same DreamBooth starts: copy the first setting's checkpoints and evaluations
    for d in "$ROOT/$first"/runs/*/seed*/db; do
      u=${d#"$ROOT/$first/runs/"}; mkdir -p "$res/runs/$(dirname "$u")"
      [ -e "$res/runs/$u" ] || cp -r "$d" "$res/runs/$u"
    done
  fi
  RESULTS_DIR="$res" "$HERE/world_verify_gpu.sh" "$OUT/$s" "train_overrides=[$(overrides "$s")]" \
    "eval_noise=${EVAL_NOISE:-per_unit}"
  $PY "$HERE/pair_labels_vs_oracle.py" "$res"/runs/*/seed* > "$OUT/$s/pairs.txt" 2>&1
  $PY "$HERE/eval_noise.py" "$res" --json "$OUT/$s/eval_noise.json" > "$OUT/$s/eval_noise.txt" 2>/dev/null
  [ -z "$first" ] && first=$s
done
