"""Captions for world scenes (varied English, optional mentions) and `parse_prompt`, their inverse.

Every phrase below is built so that one keyword in it names one attribute value and nothing else
(e.g. position phrases never say a bare "top", so "on top of pink fabric" is only a background).
`parse_prompt` reads any prompt written with this vocabulary: captions, the world pool, the eval set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dbdpo.prompts.dreambench import PLACEHOLDER

from .attributes import (ACCESSORIES, BACKGROUNDS, COLOURS, PATTERNS, POSITIONS, SHAPES, SIZES, STYLES, TINTS,
                         Scene, SceneBatch)

OBJECT_NOUNS = ("object", "thing", "shape")  # when the shape is not mentioned
FRAMES = ("a picture of", "an image of", "a photo of")  # neutral openings
PATTERN_ADJ = {"solid": ("plain", "solid"), "stripes": ("striped",), "dots": ("dotted", "spotted", "polka-dot"),
               "checks": ("checkered", "checked"), "zigzag": ("zigzag",), "rings": ("ringed",)}
PATTERN_NOUN = {"stripes": ("stripes",), "dots": ("dots", "spots", "polka dots"), "checks": ("checks",),
                "zigzag": ("zigzags", "zigzag stripes"), "rings": ("rings", "concentric rings")}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
TINT_ADJ = {"faded": ("faded", "pale", "washed-out"), "dark": ("dark", "shadowed", "dim"),
            "shiny": ("shiny", "glossy", "gleaming")}
TINT_SUFFIX = {"faded": ("that looks faded", "with faded colors"), "dark": ("that looks dark", "in dark colors"),
               "shiny": ("that looks shiny", "with a glossy finish")}
BACKGROUND_PHRASES = {
    "sky": ("in the sky", "against a clear sky", "under a clear sky", "with a clear sky behind it",
            "in front of a daytime sky"),
    "grass": ("on the grass", "on a lawn", "in a grassy field", "in a meadow", "on grass"),
    "sand": ("on the beach", "on the sand", "on a sandy beach", "in the desert", "on sand"),
    "night": ("at night", "against a night sky", "under a starry sky", "in the starry night", "on a starry night"),
    "brick": ("in front of a brick wall", "against a brick wall", "on a brick background", "by a wall of bricks",
              "with bricks behind it"),
    "snow": ("in the snow", "on the snow", "on a snowy field", "in a snowy landscape", "on snow"),
    "fabric": ("on top of pink fabric", "on pink fabric", "on a pink cloth", "on soft pink fabric",
               "lying on fabric"),
}
POSITION_PHRASES = {
    "center": ("in the center", "in the middle", "in the center of the picture", "in the middle of the image",
               "centered"),
    "left": ("on the left", "to the left", "on the left side", "at the left of the picture",
             "in the left part of the image"),
    "right": ("on the right", "to the right", "on the right side", "at the right of the picture",
              "in the right part of the image"),
    "top": ("at the top", "near the top", "at the top of the picture", "in the upper part of the image",
            "high up in the frame"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the picture", "in the lower part of the image",
               "low in the frame"),
}
ACCESSORY_PHRASES = {
    "hat": ("wearing a hat", "with a hat", "with a hat on", "in a hat", "that wears a hat"),
    "halo": ("with a halo", "wearing a halo", "with a halo around it", "surrounded by a halo", "inside a halo"),
    "scarf": ("wearing a scarf", "with a scarf", "with a scarf on", "in a scarf", "that wears a scarf"),
}
STYLE_PREFIX = {  # "<prefix> <object phrase>"
    "flat": ("a flat illustration of", "a flat drawing of", "a simple flat picture of"),
    "outlined": ("an outlined drawing of", "an outlined illustration of", "a bold outlined picture of"),
    "grainy": ("a grainy picture of", "a grainy photo of", "a noisy grainy image of"),
    "sketch": ("a sketch of", "a pencil sketch of", "a rough sketch of"),
}
STYLE_SUFFIX = {  # "<object phrase> <suffix>"; a leading comma attaches to the previous word
    "flat": ("in a flat style", "in flat colors", ", flat illustration", "drawn flat"),
    "outlined": ("with a thick outline", "with bold outlines", ", outlined", "in an outlined style"),
    "grainy": ("with film grain", ", grainy", "in a grainy style", "with a grainy texture"),
    "sketch": (", drawn as a sketch", "in sketch style", ", sketched in pencil", "as a pencil sketch"),
}

# ---- parsing: keyword regexes, one attribute value each ----

_COLOUR_RX = "|".join(COLOURS)
_PNOUN_RX = {p: "|".join(sorted({re.escape(w) for w in ws}, key=len, reverse=True)) for p, ws in PATTERN_NOUN.items()}
_ALL_PNOUN_RX = "|".join(_PNOUN_RX.values())
KEYWORDS: dict[str, dict[str, str]] = {
    "shape": {s: rf"\b{s}\b" for s in SHAPES},
    "pattern": {
        "zigzag": r"\bzigzags?(?: stripes)?\b",
        "rings": r"\b(?:concentric )?rings\b|\bringed\b",
        "solid": r"\bplain\b|\bsolid\b",
        "stripes": r"\bstripes\b|\bstriped\b",
        "dots": r"\b(?:polka )?dots\b|\bdotted\b|\bspots\b|\bspotted\b|\bpolka-dot\b",
        "checks": r"\bchecks\b|\bcheckered\b|\bchecked\b",
    },
    "size": {"small": r"\bsmall\b|\btiny\b|\blittle\b", "large": r"\blarge\b|\bbig\b|\bhuge\b"},
    "tint": {"faded": r"\bfaded\b|\bpale\b|\bwashed-out\b", "dark": r"\bdark\b|\bshadowed\b|\bdim\b",
             "shiny": r"\bshiny\b|\bglossy\b|\bgleaming\b"},
    "background": {
        "sky": r"\bclear sky\b|\bin the sky\b|\bdaytime sky\b",
        "night": r"\bnight\b|\bstarry\b",
        "grass": r"\bgrass(?:y)?\b|\blawn\b|\bmeadow\b",
        "sand": r"\bsand(?:y)?\b|\bbeach\b|\bdesert\b",
        "brick": r"\bbricks?\b",
        "snow": r"\bsnow(?:y)?\b",
        "fabric": r"\bfabric\b|\bcloth\b",
    },
    "position": {
        "center": r"\bcent(?:er|re|ered|red)\b|\bmiddle\b",
        "left": r"\bleft\b",
        "right": r"\bright\b",
        "top": r"\b(?:at|near) the top\b|\bupper\b|\bhigh up\b",
        "bottom": r"\b(?:at|near) the bottom\b|\blower\b|\blow in\b",
    },
    "style": {"flat": r"\bflat\b", "outlined": r"\boutlined?\b|\boutlines\b",
              "grainy": r"\bgrain(?:y)?\b|\bnoisy\b", "sketch": r"\bsketch(?:ed|y)?\b|\bpencil\b"},
    "accessory": {"hat": r"\bhat\b", "halo": r"\bhalo\b", "scarf": r"\bscarf\b"},
}
_KEYWORD_RX = {attr: [(v, re.compile(rx)) for v, rx in table.items()] for attr, table in KEYWORDS.items()}
_PAIR_RX = re.compile(rf"\b({_COLOUR_RX}) and ({_COLOUR_RX})\b")
_SECOND_RX = re.compile(rf"\b({_COLOUR_RX}) (?:{_ALL_PNOUN_RX})\b")
_COLOUR_WORD_RX = re.compile(rf"\b({_COLOUR_RX})\b")


def parse_prompt(prompt: str, holder: str | None = None) -> dict[str, str]:
    """The attributes a prompt asks for, e.g. {"shape": "star", "background": "snow", "style": "sketch"}.

    `[V*]` and `holder` (e.g. "sks star") are removed first, so a concept prompt yields only its context.
    Keys: shape, pattern, colour, colour2 (the pattern's colour), size, tint, background, position, style,
    accessory; only those the prompt names. The first mention wins if one attribute is named twice.
    """
    text = " " + prompt.lower().replace(PLACEHOLDER.lower(), " ") + " "
    if holder:
        text = re.sub(rf"(?<![\w-]){re.escape(holder.lower())}(?![\w-])", " ", text)
    out: dict[str, str] = {}
    spans: list[tuple[int, int]] = []

    def free(m) -> bool:
        return not any(a < m.end() and m.start() < b for a, b in spans)

    for attr in ("background", "pattern", "shape", "size", "tint", "position", "style", "accessory"):
        best = None
        for value, rx in _KEYWORD_RX[attr]:
            for m in rx.finditer(text):
                if free(m) and (best is None or m.start() < best[1].start()):
                    best = (value, m)
                    break
        if best:
            out[attr] = best[0]
            spans.append(best[1].span())
    # Colours: "red and yellow striped" (colour, colour2), "yellow stripes" (colour2), else the first colour word.
    used: list[tuple[int, int]] = []
    if m := _PAIR_RX.search(text):
        out["colour"], out["colour2"] = m.group(1), m.group(2)
        used.append(m.span())
    elif m := _SECOND_RX.search(text):
        out["colour2"] = m.group(1)
        used.append(m.span(1))
    if "colour" not in out:
        for m in _COLOUR_WORD_RX.finditer(text):
            if not any(a < m.end() and m.start() < b for a, b in used):
                out["colour"] = m.group(1)
                break
    return {k: out[k] for k in ("shape", "pattern", "colour", "colour2", "size", "tint", "background", "position",
                                "style", "accessory") if k in out}


# ---- captions ----

def _pick(rng, seq):
    return seq[int(rng.random() * len(seq)) % len(seq)]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    text = " ".join(p for p in parts if p)
    return re.sub(r"\s+,", ",", re.sub(r"\s+", " ", text)).strip()


def _look_phrase(sc: Scene, rng, m: dict[str, bool], noun: str) -> str:
    """Colour and pattern words around the noun, per the mention flags in `m`."""
    c1, c2, pat = sc.colour, sc.colour2, sc.pattern
    if not m["pattern"]:
        return f"{c1} {noun}" if m["colour"] else noun
    if pat == "solid":
        return f"{_pick(rng, PATTERN_ADJ['solid'])} {c1 + ' ' if m['colour'] else ''}{noun}"
    adj, pn = _pick(rng, PATTERN_ADJ[pat]), _pick(rng, PATTERN_NOUN[pat])
    if m["colour"] and m["colour2"]:
        return _pick(rng, (f"{c1} {noun} with {c2} {pn}", f"{c1} and {c2} {adj} {noun}",
                           f"{c1} {noun} covered in {c2} {pn}"))
    if m["colour"]:
        return _pick(rng, (f"{adj} {c1} {noun}", f"{c1} {noun} with {pn}"))
    if m["colour2"]:
        return _pick(rng, (f"{noun} with {c2} {pn}", f"{noun} covered in {c2} {pn}"))
    return _pick(rng, (f"{adj} {noun}", f"{noun} with {pn}"))


def caption_with_mentions(scene: Scene, rng, holder: str | None = None, p_mention: float = 0.85,
                          p_shape: float = 0.95) -> tuple[str, dict[str, str]]:
    """A caption of `scene` and the attributes it mentions (exactly what `parse_prompt` recovers).

    `rng`: anything with `.random()` (numpy Generator or random.Random). Each attribute is mentioned with
    probability `p_mention` (the shape with `p_shape`); "none" accessories and tints are never mentioned.
    With `holder` (e.g. "sks star", or "" for the holder-removed text) the object's look is not described:
    the holder stands for it and only the context is mentioned.
    """
    def coin(p=p_mention):
        return rng.random() < p

    m = {k: False for k in ("shape", "pattern", "colour", "colour2", "size", "tint", "background", "position",
                            "style", "accessory")}
    if holder is None:
        m["shape"], m["colour"], m["pattern"] = coin(p_shape), coin(), coin()
        m["colour2"] = m["pattern"] and scene.pattern != "solid" and coin()
    m["size"], m["background"], m["position"], m["style"] = coin(), coin(), coin(), coin()
    m["tint"] = scene.tint != "none" and coin()
    m["accessory"] = scene.accessory != "none" and coin()

    if holder is None:
        noun = scene.shape if m["shape"] else _pick(rng, OBJECT_NOUNS)
        core = _look_phrase(scene, rng, m, noun)
    else:
        core = holder
    tint_suffix = None
    adjs = []
    if m["size"]:
        adjs.append(_pick(rng, SIZE_WORDS[scene.size]))
    if m["tint"]:
        if rng.random() < 0.3:
            tint_suffix = _pick(rng, TINT_SUFFIX[scene.tint])
        else:
            adjs.append(_pick(rng, TINT_ADJ[scene.tint]))
    head = " ".join(adjs + [core]).strip()
    obj = _join([article(head or "x"), head, tint_suffix or ""])

    clauses = []
    if m["position"]:
        clauses.append(_pick(rng, POSITION_PHRASES[scene.position]))
    if m["background"]:
        clauses.append(_pick(rng, BACKGROUND_PHRASES[scene.background]))
    if m["accessory"]:
        clauses.append(_pick(rng, ACCESSORY_PHRASES[scene.accessory]))
    for i in range(len(clauses) - 1, 0, -1):  # shuffle
        j = int(rng.random() * (i + 1)) % (i + 1)
        clauses[i], clauses[j] = clauses[j], clauses[i]
    clauses = [c if k == 0 or rng.random() < 0.6 else ", " + c for k, c in enumerate(clauses)]

    prefix, suffix = "", ""
    if m["style"]:
        if rng.random() < 0.5:
            prefix = _pick(rng, STYLE_PREFIX[scene.style])
        else:
            suffix = _pick(rng, STYLE_SUFFIX[scene.style])
    elif rng.random() < 0.15:
        prefix = _pick(rng, FRAMES)
    front = ""
    if clauses and rng.random() < 0.15:  # "on the grass, a red star ..."
        front, clauses = clauses[0].lstrip(", ") + ",", clauses[1:]
        if clauses:
            clauses[0] = clauses[0].lstrip(", ")
    text = _join([front, prefix, obj, *clauses, suffix])
    mentions = {}
    for k, on in m.items():
        if on:
            mentions[k] = getattr(scene, k)
    if holder is not None:
        mentions.pop("shape", None)
    return text, mentions


def caption(scene: Scene, rng, holder: str | None = None, **kw) -> str:
    """A caption of `scene` (see `caption_with_mentions`)."""
    return caption_with_mentions(scene, rng, holder, **kw)[0]


def captions(batch: SceneBatch, rng, holder: str | None = None, **kw) -> list[str]:
    """One caption per scene of `batch`."""
    return [caption_with_mentions(batch.scene(i), rng, holder, **kw)[0] for i in range(len(batch))]


def full_caption(scene: Scene | Mapping[str, str]) -> str:
    """The canonical caption naming every attribute (for retrieval tests and debugging)."""
    sc = scene if isinstance(scene, Scene) else Scene(**scene)
    look = f"{sc.colour} {sc.shape}" if sc.pattern == "solid" else f"{sc.colour} {sc.shape} with {sc.colour2} " \
        f"{PATTERN_NOUN[sc.pattern][0]}"
    adj = [SIZE_WORDS[sc.size][0]] + ([TINT_ADJ[sc.tint][0]] if sc.tint != "none" else [])
    if sc.pattern == "solid":
        adj.append("plain")
    head = " ".join(adj + [look])
    acc = [ACCESSORY_PHRASES[sc.accessory][0]] if sc.accessory != "none" else []
    return _join([STYLE_PREFIX[sc.style][0], article(head), head, POSITION_PHRASES[sc.position][0],
                  BACKGROUND_PHRASES[sc.background][0], *acc])


assert set(PATTERN_ADJ) == set(PATTERNS) and set(SIZE_WORDS) == set(SIZES)
assert set(BACKGROUND_PHRASES) == set(BACKGROUNDS) and set(POSITION_PHRASES) == set(POSITIONS)
assert set(ACCESSORY_PHRASES) | {"none"} == set(ACCESSORIES) and set(TINT_ADJ) | {"none"} == set(TINTS)
assert set(STYLE_PREFIX) == set(STYLES) == set(STYLE_SUFFIX)
