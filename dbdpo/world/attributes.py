"""The miniature world's vocabulary, scenes, and the pretrain / held-out split of attribute combinations.

A scene is one object on a background. Every attribute value is a word used in captions and prompts.
`SceneBatch` holds scenes as int arrays (indices into the tuples below), which is what the renderer,
the oracle and the samplers use; `Scene` is one row with names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
PATTERNS = ("solid", "stripes", "dots", "checks", "zigzag", "rings")
RESERVED_PATTERNS = ("zigzag", "rings")  # novel concepts only: never in pretraining or held-out scenes
SCENE_PATTERNS = tuple(p for p in PATTERNS if p not in RESERVED_PATTERNS)

COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 40),
    "purple": (145, 60, 195),
    "orange": (245, 140, 30),
    "white": (250, 250, 250),
    "black": (25, 25, 25),
}
COLOURS = tuple(COLOUR_RGB)

BACKGROUNDS = ("sky", "grass", "sand", "night", "brick", "snow", "fabric")
# Mean colour of each rendered background (the renderer draws texture around it); used for contrast rules.
BACKGROUND_RGB = {
    "sky": (150, 195, 240),
    "grass": (70, 140, 50),
    "sand": (222, 194, 136),
    "night": (22, 28, 70),
    "brick": (160, 75, 55),
    "snow": (232, 237, 246),
    "fabric": (225, 140, 175),
}

POSITIONS = ("center", "left", "right", "top", "bottom")
SIZES = ("small", "large")
STYLES = ("flat", "outlined", "grainy", "sketch")
ACCESSORIES = ("none", "hat", "halo", "scarf")
TINTS = ("none", "faded", "dark", "shiny")

# Attribute name -> its values (colour2 is the pattern's colour; -1 / None for solid objects).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "pattern": PATTERNS,
    "colour": COLOURS,
    "colour2": COLOURS,
    "background": BACKGROUNDS,
    "position": POSITIONS,
    "size": SIZES,
    "style": STYLES,
    "accessory": ACCESSORIES,
    "tint": TINTS,
}
# What each prompt category of method.md can speak about in this world.
CATEGORY_ATTRIBUTES = {
    "appearance": ("tint", "colour"),
    "outfit": ("accessory",),
    "background": ("background",),
    "style": ("style",),
    "position": ("position", "size"),
}
# Attributes that describe the object's look (the concept), not its context.
LOOK_ATTRIBUTES = ("shape", "pattern", "colour", "colour2")
CONTEXT_ATTRIBUTES = ("background", "position", "size", "style", "accessory", "tint")

# Held-out split: these combinations are hashed; HELDOUT_FRACTION of them never appear in pretraining.
COMBO_ATTRIBUTES = ("shape", "background", "style")
HELDOUT_FRACTION = 0.15
SPLITS = ("pretrain", "heldout", "all")

# Colour pairs (unordered) per shape kept out of every split for novel concepts, whatever the pattern.
RESERVED_LOOKS = {
    "circle": (("blue", "orange"), ("red", "green")),
    "square": (("yellow", "black"), ("purple", "white")),
    "triangle": (("orange", "blue"), ("green", "white")),
    "star": (("red", "yellow"), ("blue", "white")),
    "heart": (("green", "orange"), ("purple", "white")),
    "cross": (("yellow", "purple"), ("red", "white")),
}

JITTER = 0.025  # max |dx|, |dy| (image fractions, 0.8 px at 32): well below half the distance between positions
MIN_CONTRAST = 80.0  # RGB distance below which an object colour is unreadable on a background / pattern
TINT_FADE_TO = (215, 215, 215)
TINT_FADE = 0.5
TINT_DARK = 0.62  # multiplicative: dark white (155 grey) stays clearly lighter than faded black (120 grey)
HIGHLIGHT_RGB = (255, 255, 250)
MIN_TINT_EFFECT = 40.0
# Styles that wash the object towards paper (renderer: img * (1 - wash) + paper * wash); used for tint separation.
SKETCH_PAPER = (246, 241, 228)
SKETCH_WASH = 0.5
STYLE_WASH = {"sketch": (SKETCH_WASH, SKETCH_PAPER)}
MIN_TINT_SEPARATION = 18.0  # RGB distance two (colour, tint) fills keep under every style (old dark white vs faded black: 15 under sketch)


def tint_rgb(rgb, tint: str) -> np.ndarray:
    """The object colour(s) `rgb` (..., 3) after `tint` ("shiny" adds a highlight, not a colour change)."""
    c = np.asarray(rgb, dtype=np.float32)
    if tint == "faded":
        return c * (1 - TINT_FADE) + np.float32(TINT_FADE) * np.asarray(TINT_FADE_TO, np.float32)
    if tint == "dark":
        return c * np.float32(TINT_DARK)
    return c


def _dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def tint_effect(rgb, tint: str) -> float:
    """How visible `tint` is on an object of colour `rgb` (RGB distance)."""
    if tint == "none":
        return float("inf")
    if tint == "shiny":
        return _dist(rgb, HIGHLIGHT_RGB)
    return _dist(rgb, tint_rgb(rgb, tint))


LOW_CONTRAST = frozenset((c, b) for c in COLOURS for b in BACKGROUNDS
                         if _dist(COLOUR_RGB[c], BACKGROUND_RGB[b]) < MIN_CONTRAST)
LOW_CONTRAST_PAIRS = frozenset((a, b) for a in COLOURS for b in COLOURS
                               if _dist(COLOUR_RGB[a], COLOUR_RGB[b]) < MIN_CONTRAST)
INVISIBLE_TINTS = frozenset((c, t) for c in COLOURS for t in TINTS if tint_effect(COLOUR_RGB[c], t) < MIN_TINT_EFFECT)


def styled_fill(rgb, style: str) -> np.ndarray:
    """The fill colour `rgb` as it shows under `style` (only washing styles change it)."""
    c = np.asarray(rgb, np.float32)
    if style in STYLE_WASH:
        wash, paper = STYLE_WASH[style]
        return c * (1 - wash) + np.float32(wash) * np.asarray(paper, np.float32)
    return c


def _confusable_tints() -> frozenset[tuple[str, str]]:
    """Tinted (colour, tint) pairs ("faded" / "dark") whose fill renders within MIN_TINT_SEPARATION of another
    visible (colour, tint) pair's fill under some style (e.g. a dark white next to a faded black).
    "shiny" keeps the colour (it adds a highlight), so it is compared as the untinted colour."""
    items = [(c, t) for c in COLOURS for t in TINTS if (c, t) not in INVISIBLE_TINTS]
    out = set()
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if a[0] == b[0] and {a[1], b[1]} <= {"none", "shiny"}:
                continue
            fa, fb = tint_rgb(COLOUR_RGB[a[0]], a[1]), tint_rgb(COLOUR_RGB[b[0]], b[1])
            if min(_dist(styled_fill(fa, st), styled_fill(fb, st)) for st in STYLES) < MIN_TINT_SEPARATION:
                out.update(x for x in (a, b) if x[1] in ("faded", "dark"))
    return frozenset(out)


CONFUSABLE_TINTS = _confusable_tints()  # computed once; empty with the current colours and tints


def _hash01(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


@lru_cache(maxsize=1)
def heldout_combos() -> frozenset[tuple[str, ...]]:
    """The (shape, background, style) combinations held out of pretraining (a fixed, hash-chosen 15 %).

    Balanced: at most one style per (shape, background) pair, and every shape, background and style
    held out about equally often.
    """
    k = round(HELDOUT_FRACTION * len(SHAPES) * len(BACKGROUNDS) * len(STYLES))
    caps = {"shape": -(-k // len(SHAPES)), "background": -(-k // len(BACKGROUNDS)), "style": -(-k // len(STYLES))}
    pairs = sorted(((a, b) for a in SHAPES for b in BACKGROUNDS),
                   key=lambda t: _hash01("dbdpo-world-heldout/" + "/".join(t)))
    count: dict[str, int] = {}
    out: list[tuple[str, str, str]] = []
    for a, b in pairs:
        if len(out) == k:
            break
        if count.get(a, 0) >= caps["shape"] or count.get(b, 0) >= caps["background"]:
            continue
        styles = sorted((st for st in STYLES if count.get(st, 0) < caps["style"]),
                        key=lambda st: _hash01(f"dbdpo-world-heldout/{a}/{b}/{st}"))
        st = styles[0]
        out.append((a, b, st))
        for key in (a, b, st):
            count[key] = count.get(key, 0) + 1
    return frozenset(out)


@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    """Boolean lookup tables for the vectorised validity rules."""
    idx = {name: {v: i for i, v in enumerate(vals)} for name, vals in ATTRIBUTES.items()}
    heldout = np.zeros((len(SHAPES), len(BACKGROUNDS), len(STYLES)), bool)
    for s, b, st in heldout_combos():
        heldout[idx["shape"][s], idx["background"][b], idx["style"][st]] = True
    reserved = np.zeros((len(SHAPES), len(COLOURS), len(COLOURS)), bool)
    for s, pairs in RESERVED_LOOKS.items():
        for a, b in pairs:
            reserved[idx["shape"][s], idx["colour"][a], idx["colour"][b]] = True
            reserved[idx["shape"][s], idx["colour"][b], idx["colour"][a]] = True
    low_bg = np.zeros((len(COLOURS), len(BACKGROUNDS)), bool)
    for c, b in LOW_CONTRAST:
        low_bg[idx["colour"][c], idx["background"][b]] = True
    low_pair = np.zeros((len(COLOURS), len(COLOURS)), bool)
    for a, b in LOW_CONTRAST_PAIRS:
        low_pair[idx["colour"][a], idx["colour"][b]] = True
    bad_tint = np.zeros((len(COLOURS), len(TINTS)), bool)
    for c, t in INVISIBLE_TINTS | CONFUSABLE_TINTS:
        bad_tint[idx["colour"][c], idx["tint"][t]] = True
    reserved_pattern = np.array([p in RESERVED_PATTERNS for p in PATTERNS])
    return {"heldout": heldout, "reserved": reserved, "low_bg": low_bg, "low_pair": low_pair,
            "bad_tint": bad_tint, "reserved_pattern": reserved_pattern}


@dataclass(frozen=True)
class Scene:
    """One scene by name; `colour2` is None for solid objects. dx, dy (image fractions) and scale jitter."""

    shape: str
    pattern: str
    colour: str
    colour2: str | None
    background: str
    position: str = "center"
    size: str = "large"
    style: str = "flat"
    accessory: str = "none"
    tint: str = "none"
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def attributes(self) -> dict[str, str | None]:
        return {k: getattr(self, k) for k in ATTRIBUTES}


@dataclass
class SceneBatch:
    """Structure of arrays: one int array per attribute (index into ATTRIBUTES[name]) plus jitter."""

    shape: np.ndarray
    pattern: np.ndarray
    colour: np.ndarray
    colour2: np.ndarray  # -1 for solid
    background: np.ndarray
    position: np.ndarray
    size: np.ndarray
    style: np.ndarray
    accessory: np.ndarray
    tint: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    scale: np.ndarray

    def __post_init__(self):
        n = len(self.shape)
        for f in fields(self):
            a = np.asarray(getattr(self, f.name), dtype=np.float32 if f.name in ("dx", "dy", "scale") else np.int64)
            if a.shape != (n,):
                raise ValueError(f"SceneBatch.{f.name} has shape {a.shape}, expected ({n},)")
            object.__setattr__(self, f.name, a)

    def __len__(self) -> int:
        return len(self.shape)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.scene(int(i))
        return SceneBatch(**{f.name: getattr(self, f.name)[i] for f in fields(self)})

    def scene(self, i: int) -> Scene:
        kw = {}
        for name, vals in ATTRIBUTES.items():
            v = int(getattr(self, name)[i])
            kw[name] = vals[v] if v >= 0 else None
        return Scene(**kw, dx=float(self.dx[i]), dy=float(self.dy[i]), scale=float(self.scale[i]))

    def scenes(self) -> list[Scene]:
        return [self.scene(i) for i in range(len(self))]

    def labels(self) -> dict[str, np.ndarray]:
        """Attribute name -> int array (colour2 is -1 for solid objects)."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> "SceneBatch":
        cols: dict[str, list] = {f.name: [] for f in fields(cls)}
        for sc in scenes:
            for name, vals in ATTRIBUTES.items():
                v = getattr(sc, name)
                if v is None and name == "colour2":
                    cols[name].append(-1)
                    continue
                if v not in vals:
                    raise ValueError(f"unknown {name} {v!r}; valid values: {', '.join(vals)}")
                cols[name].append(vals.index(v))
            for k in ("dx", "dy", "scale"):
                cols[k].append(getattr(sc, k))
        return cls(**{k: np.asarray(v) for k, v in cols.items()})

    @classmethod
    def concat(cls, batches: Iterable["SceneBatch"]) -> "SceneBatch":
        bs = list(batches)
        return cls(**{f.name: np.concatenate([getattr(b, f.name) for b in bs]) for f in fields(cls)})


def split_mask(batch: SceneBatch, split: str) -> np.ndarray:
    """Which scenes belong to `split` ("pretrain", "heldout" or "all"); reserved looks belong to none."""
    if split == "train":
        split = "pretrain"
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    t = _tables()
    ok = ~t["reserved_pattern"][batch.pattern]
    solid = batch.colour2 < 0
    c2 = np.where(solid, 0, batch.colour2)
    ok &= solid | ~t["reserved"][batch.shape, batch.colour, c2]
    if split == "all":
        return ok
    held = t["heldout"][batch.shape, batch.background, batch.style]
    return ok & (held if split == "heldout" else ~held)


def readable_mask(batch: SceneBatch) -> np.ndarray:
    """Scenes whose object colour contrasts with the background and pattern colour, and whose tint shows."""
    t = _tables()
    solid = batch.colour2 < 0
    c2 = np.where(solid, 0, batch.colour2)
    ok = ~t["low_bg"][batch.colour, batch.background] & ~t["bad_tint"][batch.colour, batch.tint]
    return ok & (solid | ~t["low_pair"][batch.colour, c2])


def _allowed(name: str, allow: Mapping[str, Iterable[str]] | None, default: Sequence[str]) -> np.ndarray:
    vals = ATTRIBUTES[name]
    chosen = list(default)
    if allow and name in allow:
        want = allow[name]
        want = [want] if isinstance(want, str) else list(want)
        for v in want:
            if v not in vals:
                raise ValueError(f"allow[{name!r}]: unknown value {v!r}; valid values: {', '.join(vals)}")
        chosen = [v for v in chosen if v in want]
        if not chosen:
            raise ValueError(f"allow[{name!r}] = {want} leaves no value to sample from {list(default)}")
    return np.array([vals.index(v) for v in chosen])


def sample_scenes(n: int, rng: np.random.Generator | int, split: str = "pretrain",
                  allow: Mapping[str, Iterable[str]] | None = None, jitter: bool = True,
                  solid_fraction: float | None = None) -> SceneBatch:
    """`n` random readable scenes from `split`, uniform over allowed values, deterministic given `rng`.

    `allow`: attribute -> allowed values (e.g. {"background": ["grass"]}); reserved patterns are never
    sampled. `solid_fraction`: share of solid objects (default: uniform over patterns).
    """
    if allow:
        bad = set(allow) - set(ATTRIBUTES)
        if bad:
            raise ValueError(f"allow has unknown attributes {sorted(bad)}; valid: {', '.join(ATTRIBUTES)}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    choices = {name: _allowed(name, allow, SCENE_PATTERNS if name == "pattern" else vals)
               for name, vals in ATTRIBUTES.items()}
    parts, have = [SceneBatch(**{f.name: np.zeros(0) for f in fields(SceneBatch)})], 0
    for _ in range(1000):
        if have >= n:
            break
        m = max(64, int((n - have) * 1.3) + 16)
        cols = {name: rng.choice(c, size=m) for name, c in choices.items()}
        if solid_fraction is not None:
            solid_i = PATTERNS.index("solid")
            others = choices["pattern"][choices["pattern"] != solid_i]
            if len(others):
                cols["pattern"] = np.where(rng.random(m) < solid_fraction, solid_i, rng.choice(others, size=m))
        solid = cols["pattern"] == PATTERNS.index("solid")
        t = _tables()
        for _ in range(8):  # redraw unreadable / reserved pattern colours so patterns stay balanced
            bad = ~solid & (t["low_pair"][cols["colour"], cols["colour2"]]
                            | t["reserved"][cols["shape"], cols["colour"], cols["colour2"]])
            if not bad.any():
                break
            cols["colour2"] = np.where(bad, rng.choice(choices["colour2"], size=m), cols["colour2"])
        cols["colour2"] = np.where(solid, -1, cols["colour2"])
        if jitter:
            cols["dx"] = rng.uniform(-JITTER, JITTER, m)
            cols["dy"] = rng.uniform(-JITTER, JITTER, m)
            cols["scale"] = rng.uniform(0.92, 1.08, m)
        else:
            cols["dx"] = cols["dy"] = np.zeros(m)
            cols["scale"] = np.ones(m)
        b = SceneBatch(**cols)
        keep = split_mask(b, split) & readable_mask(b) & (b.colour2 != b.colour)
        parts.append(b[np.flatnonzero(keep)[: n - have]])
        have += len(parts[-1])
    if have < n:
        raise ValueError(f"no readable scene in split {split!r} matches allow={dict(allow or {})}")
    return SceneBatch.concat(parts)
