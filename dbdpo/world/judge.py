"""Judge world-concept samples with models the method never trains against: the evaluator CLIP and the oracle.

For samples x of prompt p (concept holder removed from p for text similarity, as for the scorer):

    evaluator IS = mean_k cos(E_img(x), E_img(photo_k)),   evaluator TS = cos(E_img(x), E_txt(p \\ holder))
    oracle prompt-following = mean over the attributes a that p asks for of 1[oracle_a(x) = a(p)]
    oracle identity = 1[oracle_a(x) = look_a for every look attribute a (shape, pattern, colours) p leaves alone]

Each is averaged per prompt over its images; the prompt means give the reported mean and 1σ (as CLIP-I/T).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluate import mean_std, per_prompt_mean
from ..io import read_json, write_json
from .attributes import COLOUR_RGB
from .captions import parse_prompt
from .oracle import NONE, load_oracle, predict

LOOK_ATTRIBUTES = ("shape", "pattern", "colour", "colour2")


def look_labels(look) -> dict[str, str]:
    """The oracle labels of a concept's look (`render.ObjectSpec`); colours only when they are palette colours."""
    names = {tuple(rgb): name for name, rgb in COLOUR_RGB.items()}
    out = {"shape": look.shape, "pattern": look.pattern}
    if tuple(look.rgb) in names:
        out["colour"] = names[tuple(look.rgb)]
    if look.rgb2 is None:
        out["colour2"] = NONE
    elif tuple(look.rgb2) in names:
        out["colour2"] = names[tuple(look.rgb2)]
    return out


def oracle_scores(pred: dict[str, np.ndarray], prompts: Sequence[str], holder: str,
                  look: dict[str, str]) -> dict[str, np.ndarray]:
    """Per image: prompt-following (fraction of the prompt's attributes the oracle sees; NaN if it asks for
    none) and identity (1 when every look attribute the prompt does not override is the concept's)."""
    n = len(prompts)
    follow = np.full(n, np.nan)
    identity = np.zeros(n)
    for i, p in enumerate(prompts):
        asked = parse_prompt(p, holder)
        hits = [pred[a][i] == v for a, v in asked.items() if a in pred]
        if hits:
            follow[i] = float(np.mean(hits))
        keep = [a for a in look if a not in asked and not (a == "colour2" and "pattern" in asked)]
        identity[i] = float(all(pred[a][i] == look[a] for a in keep))
    return {"follow": follow, "identity": identity}


class WorldJudge:
    """The evaluator CLIP (an open_clip model independent of the scorer) and the attribute oracle, bound to one
    concept: its photos (embedded once by the evaluator), its holder phrase and its look."""

    labels = {"eval/evaluator_is": "IS (evaluator)", "eval/evaluator_ts": "TS (evaluator)",
              "eval/oracle_prompt": "oracle prompt-following", "eval/oracle_identity": "oracle identity"}

    def __init__(self, evaluator: str | os.PathLike, oracle: str | os.PathLike, concept_images, holder: str, look,
                 device: str = "cpu", batch_size: int = 256):
        from ..scores import ClipScorer
        from .clips import EVALUATOR

        self.evaluator = ClipScorer(EVALUATOR, pretrained=os.fspath(evaluator), device=device, batch_size=batch_size)
        self.oracle = load_oracle(oracle, device)
        self.reference = self.evaluator.embed_images(concept_images, reference=True)
        self.holder, self.look = holder, look_labels(look)

    def __call__(self, out_dir: str | os.PathLike, progress: bool = False) -> dict:
        """Judge the samples of an evaluation (`out_dir/samples`); cached as `out_dir/judge.json`."""
        from ..generate import load_samples
        from ..scores import score_generation

        cache = Path(out_dir) / "judge.json"
        if cache.exists():
            return read_json(cache)
        samples = load_samples(Path(out_dir) / "samples")
        ev = score_generation(self.evaluator, samples, self.reference, self.holder, text_variant="remove",
                              out_dir=Path(out_dir) / "evaluator_scores", progress=progress)
        images = np.stack([np.asarray(im.convert("RGB")) for im in samples.load_images(range(len(samples)))])
        orc = oracle_scores(predict(self.oracle, images), list(samples.prompts), self.holder, self.look)
        pidx = np.asarray(samples.prompt_index)
        asks = ~np.isnan(orc["follow"])
        result = {
            "eval/evaluator_is": mean_std(per_prompt_mean(ev["is"], pidx)),
            "eval/evaluator_ts": mean_std(per_prompt_mean(ev["ts"], pidx)),
            "eval/oracle_prompt": mean_std(per_prompt_mean(orc["follow"][asks], pidx[asks])),
            "eval/oracle_identity": mean_std(per_prompt_mean(orc["identity"], pidx)),
        }
        write_json(cache, result)
        return result
