"""`python -m dbdpo.full_size MODEL OUT [--dtype float32|bfloat16|float16]`: a full-size pipeline, random weights."""

import argparse

import torch

from . import MODELS, build_pipeline

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("model", choices=MODELS)
parser.add_argument("out")
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
parser.add_argument("--seed", type=int, default=0)
a = parser.parse_args()
print(build_pipeline(a.model, a.out, seed=a.seed, dtype=getattr(torch, a.dtype)))
