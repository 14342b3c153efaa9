"""Evaluate: CLIP-I / CLIP-T on the DreamBench prompt set of the concept's kind (live or object).

CLIP-I = IS and CLIP-T = TS of generated images; each is averaged per prompt over its M images, then the
prompt means give the reported mean and 1σ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .distributed import is_main
from .generate import SampleSet, generate
from .io import atomic_write, read_json, write_json


def per_prompt_mean(values: np.ndarray, prompt_index: Sequence[int]) -> np.ndarray:
    idx = np.asarray(prompt_index)
    return np.array([values[idx == p].mean() for p in np.unique(idx)])


def mean_std(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": int(len(x))}


def labelled_grid(rows: list[tuple[str, list]], path: str | Path, header: list[str] | None = None,
                  min_size: int = 128, text_width: int = 300) -> Path:
    """A PNG of image rows, each row's text (its prompt) written beside it; `header` labels the columns."""
    import textwrap

    from PIL import Image, ImageDraw

    w, h = rows[0][1][0].size
    scale = max(1, math.ceil(min_size / max(w, h)))
    w, h = w * scale, h * scale
    cols = max(len(images) for _, images in rows)
    top = 18 if header else 0
    grid = Image.new("RGB", (text_width + cols * w, top + len(rows) * h), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(header or []):
        draw.text((text_width + c * w + 4, 3), name, fill="black")
    for r, (text, images) in enumerate(rows):
        for line_no, line in enumerate(textwrap.wrap(text, width=text_width // 7)[: max(1, h // 13)]):
            draw.text((6, top + r * h + 6 + 13 * line_no), line, fill="black")
        for c, img in enumerate(images):
            grid.paste(img.resize((w, h), Image.Resampling.NEAREST), (text_width + c * w, top + r * h))
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def save_grid(samples: SampleSet, path: str | Path, per_prompt: int = 1, max_prompts: int = 25,
              labels: bool = False) -> Path:
    """A PNG grid of generated images: one row of `per_prompt` images per prompt (with `labels`: the prompt
    written beside its row)."""
    from PIL import Image

    pidx = np.asarray(samples.prompt_index)
    prompts = list(dict.fromkeys(samples.prompt_index))[:max_prompts]
    rows = [[i for i in np.flatnonzero(pidx == p)[:per_prompt]] for p in prompts]
    if labels:
        return labelled_grid([(samples.texts[r[0]], samples.load_images(r)) for r in rows], path)
    first = samples.load_images([rows[0][0]])[0]
    w, h = first.size
    cols = max(len(r) for r in rows)
    n_cols = cols if cols > 1 else min(len(rows), 5)
    n_rows = len(rows) if cols > 1 else math.ceil(len(rows) / n_cols)
    flat = [i for r in rows for i in r]
    grid = Image.new("RGB", (n_cols * w, n_rows * h), "white")
    for k, img in enumerate(samples.load_images(flat)):
        r, c = (k // cols, k % cols) if cols > 1 else (k // n_cols, k % n_cols)
        grid.paste(img, (c * w, r * h))
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


def comparison_grid(stage_dirs: dict[str, Path], path: str | Path, max_prompts: int = 8) -> Path | None:
    """The evaluation prompts down, the stages across (baseline, then every DPO step): the first image of each
    prompt at each stage, same prompt and seed, with the prompt beside its row."""
    from .generate import load_samples

    sets = {name: load_samples(d / "samples") for name, d in stage_dirs.items() if (d / "samples").is_dir()}
    if not sets:
        return None
    first = next(iter(sets.values()))
    order = list(dict.fromkeys(first.prompt_index))[:max_prompts]
    rows = []
    for p in order:
        images = []
        for s in sets.values():
            idx = [i for i, (q, j) in enumerate(zip(s.prompt_index, s.sample_index)) if q == p and j == 0]
            images.append(s.load_images(idx[:1])[0])
        rows.append((first.texts[first.prompt_index.index(p)], images))
    return labelled_grid(rows, path, header=list(sets))


def evaluate(backbone, scorer, concept, concept_emb, prompts: Sequence[str], out_dir: str | Path,
             images_per_prompt: int, seed: int, batch_size: int = 8, text_variant: str = "remove",
             progress: bool = True, desc: str = "eval") -> dict:
    """Generate M images per evaluation prompt and report CLIP-I / CLIP-T (mean, 1σ over prompts)."""
    from .scores import score_generation

    out_dir = Path(out_dir)
    result_file = out_dir / "eval.json"
    if result_file.exists():
        return read_json(result_file)
    samples = generate(backbone, prompts, concept.holder, out_dir / "samples", images_per_prompt, seed,
                       batch_size=batch_size, desc=desc, progress=progress)
    scores = score_generation(scorer, samples, concept_emb, concept.holder, text_variant=text_variant,
                              class_name=concept.class_name, out_dir=out_dir / "scores")
    result = {
        "eval/clip_i": mean_std(per_prompt_mean(scores["is"], samples.prompt_index)),
        "eval/clip_t": mean_std(per_prompt_mean(scores["ts"], samples.prompt_index)),
        "images_per_prompt": images_per_prompt,
        "n_prompts": len(prompts),
    }
    if is_main():
        save_grid(samples, out_dir / "grid.png", per_prompt=min(images_per_prompt, 4), labels=True)
        write_json(result_file, result)
    return result
