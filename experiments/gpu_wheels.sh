#!/usr/bin/env bash
# The Python packages dbdpo needs that the lent GPU machine's image lacks (it has torch, transformers, peft,
# lightning, timm, huggingface_hub; no registry access), downloaded here as wheels into .whl/ (git-ignored
# through .git/info/exclude) for the device tool to carry. Checked on 2026-12-04 against the image's torch 2.11,
# transformers 5.17 and huggingface_hub 1.33 (`python -m dbdpo.bench_gpu --tiny` passes with those).
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==10.2.0 \
  lazy-importer==0.1.0
ls -la .whl
