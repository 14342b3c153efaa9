"""The training prompt pool: COCO-mined + concept-agnostic prompts, split into one part per DPO step."""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from dbdpo.errors import ConfigError, DataError
from dbdpo.io import write_text
from dbdpo.prompts.dreambench import DATA_DIR, PLACEHOLDER

AGNOSTIC_FILE = DATA_DIR / "concept_agnostic_prompts.jsonl"
CATEGORIES = ("appearance", "outfit", "background", "style", "position")
SOURCES = ("coco", "agnostic")


@dataclass(frozen=True)
class PoolPrompt:
    prompt: str
    source: str  # "coco" | "agnostic"
    category: str | None = None  # agnostic category; None for COCO prompts


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder's context and was cut."""


@lru_cache(maxsize=1)
def _agnostic_rows() -> tuple[tuple[str, str, bool], ...]:
    rows = []
    try:
        with open(AGNOSTIC_FILE, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append((r["prompt"], r["category"], bool(r["live_only"])))
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read the shipped prompts {AGNOSTIC_FILE} ({e}); reinstall dbdpo") from e
    return tuple(rows)


def load_agnostic(live: bool) -> list[PoolPrompt]:
    """The shipped concept-agnostic prompts; object concepts (`live=False`) get no live-only ones."""
    return [PoolPrompt(p, "agnostic", c) for p, c, live_only in _agnostic_rows() if live or not live_only]


def _mentions(prompt: str, class_name: str) -> bool:
    words = class_name.replace("_", " ").split()
    if not words:
        return False
    rx = r"\b" + r"\s+".join(map(re.escape, words)) + r"(?:e?s)?\b"
    return re.search(rx, prompt, re.IGNORECASE) is not None


def build_pool(
    class_name: str,
    live: bool,
    n: int,
    coco_fraction: float,
    seed: int,
    coco_prompts: Sequence[str] | None = None,
) -> list[PoolPrompt]:
    """`n` distinct prompts, `round(n * coco_fraction)` from `coco_prompts` and the rest agnostic, shuffled.

    No COCO prompts (None or empty): agnostic only. One source short: the other fills in, with a warning.
    Agnostic prompts that name the class word itself ("... toy shop" for class "toy") are left out.
    Same arguments, same pool.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"prompts.n must be a positive integer (got {n!r})")
    if not 0.0 <= float(coco_fraction) <= 1.0:
        raise ConfigError(f"prompts.coco_fraction must be between 0 and 1 (got {coco_fraction!r})")

    agnostic = [p for p in load_agnostic(live) if not _mentions(p.prompt, class_name)]
    taken = {p.prompt for p in agnostic}
    coco: list[PoolPrompt] = []
    for text in coco_prompts or ():
        if not isinstance(text, str) or text.count(PLACEHOLDER) != 1:
            raise DataError(
                f"COCO prompt {text!r} must contain {PLACEHOLDER} exactly once; "
                "regenerate prompts.coco_prompts with `python -m dbdpo.prompts coco`"
            )
        if text not in taken:
            taken.add(text)
            coco.append(PoolPrompt(text, "coco", None))

    available = len(coco) + len(agnostic)
    if n > available and not coco:
        # Agnostic-only pools are capped at what suits the concept rather than failing the default run.
        warnings.warn(
            f"prompts.n={n} but only {available} agnostic prompts suit {'a live' if live else 'an object'} "
            f"concept; using {available}. Mine COCO prompts (`python -m dbdpo.prompts coco`) and set "
            "prompts.coco_prompts for a larger pool", stacklevel=2)
        n = available
    if n > available:
        raise ConfigError(
            f"prompts.n={n} is more than the {available} distinct prompts available "
            f"({len(coco)} COCO, {len(agnostic)} agnostic for {'a live' if live else 'an object'} concept); "
            "lower prompts.n or give more COCO prompts (prompts.coco_prompts)"
        )
    want_coco = round(n * float(coco_fraction)) if coco else 0
    if want_coco > len(coco):
        warnings.warn(f"only {len(coco)} COCO prompts for {want_coco} wanted; filling with agnostic prompts",
                      stacklevel=2)
        want_coco = len(coco)
    if n - want_coco > len(agnostic):
        warnings.warn(f"only {len(agnostic)} agnostic prompts for {n - want_coco} wanted; filling with COCO prompts",
                      stacklevel=2)
        want_coco = n - len(agnostic)

    rng = random.Random(seed)
    pool = rng.sample(coco, want_coco) + rng.sample(agnostic, n - want_coco)
    rng.shuffle(pool)
    return pool


def split_pool(pool: Sequence[PoolPrompt], parts: int) -> list[list[PoolPrompt]]:
    """`parts` disjoint consecutive slices covering `pool`, sizes differing by at most one."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ConfigError(f"the number of pool parts (DPO steps) must be a positive integer (got {parts!r})")
    if parts > len(pool):
        raise ConfigError(
            f"cannot split {len(pool)} prompts into {parts} non-empty parts; raise prompts.n or use fewer steps"
        )
    q, r = divmod(len(pool), parts)
    out, start = [], 0
    for i in range(parts):
        size = q + (i < r)
        out.append(list(pool[start:start + size]))
        start += size
    return out


def write_pool(path: str | os.PathLike, pool: Sequence[PoolPrompt] | Sequence[Sequence[PoolPrompt]]) -> Path:
    """Write a pool as JSONL (atomically); a list of parts (from `split_pool`) adds a "part" field."""
    if pool and not isinstance(pool[0], PoolPrompt):
        rows = [dict(asdict(p), part=i) for i, part in enumerate(pool) for p in part]
    else:
        rows = [asdict(p) for p in pool]
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_rows(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt pool file not found: {path}; create it with `python -m dbdpo.prompts build`")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if not isinstance(r.get("prompt"), str):
                    raise ValueError('no "prompt" string')
            except (ValueError, AttributeError) as e:
                raise DataError(f"{path} line {i} is not a pool entry ({e}); rewrite it with write_pool") from e
            rows.append(r)
    return rows


def read_pool(path: str | os.PathLike) -> list[PoolPrompt]:
    """Read a pool written by `write_pool` (any "part" field is ignored)."""
    return [PoolPrompt(r["prompt"], r.get("source", "agnostic"), r.get("category")) for r in _read_rows(path)]


def read_pool_parts(path: str | os.PathLike) -> list[list[PoolPrompt]]:
    """Read a split pool back as its parts (a file without "part" fields is one part)."""
    parts: dict[int, list[PoolPrompt]] = {}
    for r in _read_rows(path):
        parts.setdefault(int(r.get("part", 0)), []).append(
            PoolPrompt(r["prompt"], r.get("source", "agnostic"), r.get("category")))
    return [parts[k] for k in sorted(parts)]


def _counter(tokenizer) -> tuple[Callable[[str], int], int]:
    """(count tokens without start/end, content budget) for an open_clip or transformers tokenizer."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
    if inner is not None and hasattr(inner, "encode") and hasattr(tokenizer, "context_length"):
        return (lambda s: len(inner.encode(s, add_special_tokens=False))), int(tokenizer.context_length) - 2
    if hasattr(tokenizer, "model_max_length") and hasattr(tokenizer, "encode"):  # transformers CLIPTokenizer
        return (lambda s: len(tokenizer.encode(s, add_special_tokens=False))), int(tokenizer.model_max_length) - 2
    if hasattr(tokenizer, "encode"):  # open_clip SimpleTokenizer
        return (lambda s: len(tokenizer.encode(s))), int(getattr(tokenizer, "context_length", 77)) - 2
    if callable(tokenizer):
        return tokenizer, 75
    raise TypeError(f"truncate_prompt needs a tokenizer or a count_tokens(str) -> int callable, got {type(tokenizer)}")


def truncate_prompt(prompt: str, tokenizer, max_tokens: int | None = None) -> str:
    """Cut `prompt` at a word boundary to fit the text encoder; warns once per cut, never raises on length.

    `tokenizer`: an open_clip tokenizer, a transformers CLIPTokenizer, or a callable `count_tokens(str) -> int`
    (tokens without start/end). `max_tokens`: the budget without start/end tokens; default context - 2
    (75 for a bare callable).
    """
    count, limit = _counter(tokenizer)
    if max_tokens is not None:
        limit = int(max_tokens)
    limit = max(limit, 0)
    total = count(prompt)
    if total <= limit:
        return prompt

    ends = [m.end() for m in re.finditer(r"\S+", prompt)]
    lo, hi = 0, len(ends)  # largest k with count(first k words) <= limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(prompt[: ends[mid - 1]]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        out = prompt[: ends[lo - 1]].rstrip(" ,;:-")
    else:  # a single word longer than the budget: cut inside it
        word = prompt.strip()
        a, b = 0, len(word)
        while a < b:
            mid = (a + b + 1) // 2
            a, b = (mid, b) if count(word[:mid]) <= limit else (a, mid - 1)
        out = word[:a]
    warnings.warn(
        f"prompt of {total} tokens cut to {count(out)} (limit {limit}): {prompt[:60]!r}...",
        PromptTruncatedWarning,
        stacklevel=2,
    )
    return out
