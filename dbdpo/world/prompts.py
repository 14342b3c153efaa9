"""World prompt sets: the training pool (five categories, one `[V*]` each) and the evaluation set.

Both use the captions' vocabulary (so the world's text encoders know every word), but never the same
phrasing: the eval set's phrases (`EVAL_PHRASES`) are left out of the pool. Every prompt names the
attributes of its category, which `parse_prompt` reads back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from dbdpo.errors import ConfigError
from dbdpo.prompts.dreambench import PLACEHOLDER
from dbdpo.prompts.pool import CATEGORIES, PoolPrompt

from .attributes import COLOURS
from .captions import (ACCESSORY_PHRASES, BACKGROUND_PHRASES, FRAMES, POSITION_PHRASES, SIZE_WORDS, STYLE_PREFIX,
                       STYLE_SUFFIX, TINT_ADJ, TINT_SUFFIX, article)

EVAL_SETS = ("full", "val")


@dataclass(frozen=True)
class Mod:
    """One attribute phrase: `pre` opens the prompt ("a sketch of"), `adj` precedes [V*], `post` follows."""

    kind: str  # "pre" | "adj" | "post"
    text: str
    attr: str
    value: str
    category: str


def _mods() -> list[Mod]:
    out = []
    for t, words in TINT_ADJ.items():
        out += [Mod("adj", w, "tint", t, "appearance") for w in words]
    for t, phrases in TINT_SUFFIX.items():
        out += [Mod("post", p, "tint", t, "appearance") for p in phrases]
    for c in COLOURS:
        out += [Mod("adj", c, "colour", c, "appearance"), Mod("post", f"in {c}", "colour", c, "appearance"),
                Mod("post", f"painted {c}", "colour", c, "appearance")]
    for a, phrases in ACCESSORY_PHRASES.items():
        out += [Mod("post", p, "accessory", a, "outfit") for p in phrases]
    for b, phrases in BACKGROUND_PHRASES.items():
        out += [Mod("post", p, "background", b, "background") for p in phrases]
    for s, phrases in STYLE_PREFIX.items():
        out += [Mod("pre", p, "style", s, "style") for p in phrases]
    for s, phrases in STYLE_SUFFIX.items():
        out += [Mod("post", p, "style", s, "style") for p in phrases]
    for p, phrases in POSITION_PHRASES.items():
        out += [Mod("post", q, "position", p, "position") for q in phrases]
    for s, words in SIZE_WORDS.items():
        out += [Mod("adj", w, "size", s, "position") for w in words]
    return out


# The eval set: (category, mod) per prompt, the analogue of DreamBench's 25 prompts, in a fixed order.
_EVAL = [
    ("background", Mod("post", "in the snow", "background", "snow", "background")),
    ("background", Mod("post", "on the beach", "background", "sand", "background")),
    ("background", Mod("post", "on the grass", "background", "grass", "background")),
    ("background", Mod("post", "in the sky", "background", "sky", "background")),
    ("background", Mod("post", "at night", "background", "night", "background")),
    ("background", Mod("post", "in front of a brick wall", "background", "brick", "background")),
    ("background", Mod("post", "on top of pink fabric", "background", "fabric", "background")),
    ("style", Mod("pre", "a sketch of", "style", "sketch", "style")),
    ("style", Mod("pre", "a grainy picture of", "style", "grainy", "style")),
    ("style", Mod("pre", "an outlined drawing of", "style", "outlined", "style")),
    ("style", Mod("pre", "a flat illustration of", "style", "flat", "style")),
    ("position", Mod("post", "on the left", "position", "left", "position")),
    ("position", Mod("post", "on the right", "position", "right", "position")),
    ("position", Mod("post", "at the top", "position", "top", "position")),
    ("position", Mod("post", "at the bottom", "position", "bottom", "position")),
    ("position", Mod("adj", "small", "size", "small", "position")),
    ("outfit", Mod("post", "wearing a hat", "accessory", "hat", "outfit")),
    ("outfit", Mod("post", "with a halo", "accessory", "halo", "outfit")),
    ("outfit", Mod("post", "wearing a scarf", "accessory", "scarf", "outfit")),
    ("appearance", Mod("adj", "shiny", "tint", "shiny", "appearance")),
    ("appearance", Mod("adj", "faded", "tint", "faded", "appearance")),
    ("appearance", Mod("adj", "dark", "tint", "dark", "appearance")),
    ("appearance", Mod("adj", "red", "colour", "red", "appearance")),
    ("appearance", Mod("adj", "purple", "colour", "purple", "appearance")),
    ("appearance", Mod("adj", "blue", "colour", "blue", "appearance")),
]
EVAL_PHRASES = frozenset(m for _, m in _EVAL)
_VAL = ("in the snow", "a sketch of", "on the left", "wearing a hat", "shiny")  # one per category


def compose(mods: tuple[Mod, ...] | list[Mod], frame: str = "") -> str:
    """A `[V*]` prompt from attribute phrases, e.g. (sketch prefix, snow) -> "a sketch of a [V*] in the snow"."""
    pre = [m.text for m in mods if m.kind == "pre"]
    adjs = [m.text for m in mods if m.kind == "adj"]
    posts = sorted((m.text for m in mods if m.kind == "post"), key=lambda t: t.startswith(","))  # ", grainy" last
    head = " ".join(adjs + [PLACEHOLDER])
    opening = pre or ([frame] if frame else [])
    text = " ".join(opening + [article(head), head] + posts)
    return text.replace(" ,", ",")


@lru_cache(maxsize=1)
def _candidates() -> dict[str, tuple[list[tuple[str, tuple[Mod, ...]]], list[tuple[str, tuple[Mod, ...]]]]]:
    """Per category: (single-attribute prompts, two-attribute prompts), each as (prompt, mods), de-duplicated."""
    mods = [m for m in _mods() if m not in EVAL_PHRASES]
    seen: set[str] = {compose([m]) for m in EVAL_PHRASES}
    out = {}
    for cat in CATEGORIES:
        singles, doubles = [], []
        own = [m for m in mods if m.category == cat]
        for m in own:
            for frame in ("",) + (FRAMES if m.kind != "pre" else ()):
                p = compose([m], frame)
                if p not in seen:
                    seen.add(p)
                    singles.append((p, (m,)))
        for m in own:
            for o in mods:
                if o.category == cat or (m.kind == "pre" and o.kind == "pre") or o.attr == m.attr:
                    continue
                if o.attr == "colour" and o.kind != "adj":  # "a [V*] with a hat in black" reads as a black hat
                    continue
                p = compose([m, o])
                if p not in seen:
                    seen.add(p)
                    doubles.append((p, (m, o)))
        out[cat] = (singles, doubles)
    return out


def world_pool_size() -> int:
    """How many distinct pool prompts there are."""
    return sum(len(s) + len(d) for s, d in _candidates().values())


def world_pool_mods(n: int, seed: int = 0) -> list[tuple[PoolPrompt, tuple[Mod, ...]]]:
    """`world_pool` with the attribute phrases each prompt was built from."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"prompts.n must be a positive integer (got {n!r})")
    total = world_pool_size()
    if n > total:
        raise ConfigError(f"prompts.n={n} is more than the {total} distinct world prompts; lower prompts.n")
    rng = random.Random(seed)
    queues = {}
    for cat, (singles, doubles) in _candidates().items():
        s, d = list(singles), list(doubles)
        rng.shuffle(s)
        rng.shuffle(d)
        queues[cat] = s + d  # single-attribute prompts first
    picked: list[tuple[PoolPrompt, tuple[Mod, ...]]] = []
    pos = {c: 0 for c in CATEGORIES}
    while len(picked) < n:  # round-robin keeps the categories balanced
        for cat in CATEGORIES:
            if len(picked) == n:
                break
            if pos[cat] < len(queues[cat]):
                prompt, mods = queues[cat][pos[cat]]
                pos[cat] += 1
                picked.append((PoolPrompt(prompt, "agnostic", cat), mods))
    rng.shuffle(picked)
    return picked


def world_pool(n: int, seed: int = 0) -> list[PoolPrompt]:
    """`n` distinct world prompts (one `[V*]` each), balanced over the five categories, shuffled; seeded.

    Compatible with `dbdpo.prompts.pool` (`split_pool`, `write_pool`); source is "agnostic".
    Single-attribute prompts come first; larger pools add two-attribute prompts tagged by their first.
    """
    return [p for p, _ in world_pool_mods(n, seed)]


def world_eval_prompts(which: str = "full") -> list[str]:
    """The world's DreamBench analogue: "full" (25 prompts over the five categories) or "val" (5)."""
    if which not in EVAL_SETS:
        raise ConfigError(f"unknown world prompt set {which!r} (eval.prompt_set); use one of {', '.join(EVAL_SETS)}")
    prompts = [compose([m]) for _, m in _EVAL]
    if which == "val":
        return [p for (_, m), p in zip(_EVAL, prompts) if m.text in _VAL]
    return prompts


def world_eval_categories(which: str = "full") -> list[str]:
    """The category of each prompt of `world_eval_prompts(which)`, in the same order."""
    cats = [c for c, _ in _EVAL]
    if which == "val":
        return [c for c, (_, m) in zip(cats, _EVAL) if m.text in _VAL]
    world_eval_prompts(which)
    return cats
