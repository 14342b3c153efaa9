"""Concept-specific prompts mined from COCO captions (method.md, "Prompts").

A caption is kept when its image carries the concept's COCO label and the caption names the concept
exactly once, unambiguously; that mention becomes `[V*]`. Which words count as a mention
(`_TERMS`): for a mapping to one COCO category, the category word ("dog", "bottle", "teddy bear" plus
its synonyms "teddy"/"stuffed animal"/"stuffed bear"); for a whole-supercategory mapping ("*"), the
class word and close synonyms ("boot"; "sneaker"/"tennis shoe"/"shoe"; "glasses"/"sunglasses"/
"eyeglasses", where "a pair of glasses" is replaced as a whole). A caption is dropped if it also holds
a plural form anywhere ("dogs", "pairs of glasses"), a hyphenated compound ("dog-shaped"), or a
known other sense ("hot dog", "wine glasses").
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from dbdpo.errors import ConfigError, DataError
from dbdpo.prompts.dreambench import PLACEHOLDER

DOWNLOAD_HINT = (
    "download annotations_trainval2017.zip (or annotations_trainval2014.zip) from "
    "https://cocodataset.org/#download and pass its captions_train2017.json and instances_train2017.json "
    "(the 2014 files work too)"
)

# DreamBench class word -> (COCO supercategory, COCO category or "*" for any in the supercategory).
# Category names are spelled as in COCO ("teddy bear"; method.md writes teddy_bear).
CLASS_TO_COCO: dict[str, tuple[str, str]] = {
    "backpack": ("accessory", "backpack"),
    "boot": ("accessory", "*"),
    "bowl": ("kitchen", "bowl"),
    "can": ("kitchen", "bottle"),
    "candle": ("indoor", "*"),
    "cartoon": ("indoor", "teddy bear"),
    "cat": ("animal", "cat"),
    "clock": ("indoor", "clock"),
    "dog": ("animal", "dog"),
    "glasses": ("accessory", "*"),
    "sneaker": ("accessory", "*"),
    "stuffed animal": ("indoor", "teddy bear"),
    "teapot": ("kitchen", "bottle"),
    "toy": ("indoor", "teddy bear"),
    "vase": ("indoor", "vase"),
}

# Mention key (COCO category, or the class word for "*") -> (singular forms, plural forms, other senses).
# Singular forms are tried longest first, so "pair of glasses" wins over "glasses".
_TERMS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "backpack": (("backpack", "back pack"), ("backpacks", "back packs"), ()),
    "boot": (("boot",), ("boots",), (r"car boot", r"boot (?:of|up)")),
    "bowl": (("bowl",), ("bowls",), (r"super bowl", r"toilet bowl")),
    "bottle": (("bottle",), ("bottles",), ()),
    "candle": (("candle",), ("candles",), ()),
    "teddy bear": (
        ("teddy bear", "stuffed animal", "stuffed bear", "teddy"),
        ("teddy bears", "stuffed animals", "stuffed bears", "teddies"),
        (),
    ),
    "cat": (("cat",), ("cats",), ()),
    "clock": (("clock",), ("clocks",), ()),
    "dog": (("dog",), ("dogs",), (r"hot dog", r"corn dog")),
    "glasses": (
        ("pair of sunglasses", "pair of eyeglasses", "pair of glasses", "sunglasses", "eyeglasses", "glasses"),
        ("pairs of sunglasses", "pairs of eyeglasses", "pairs of glasses"),
        (r"(?:wine|drinking|beer|shot|water|champagne|martini|empty|full) glasses", r"glasses of",
         r"(?:two|three|four|five|several|many|some|few|both) glasses"),
    ),
    "sneaker": (("tennis shoe", "sneaker", "shoe"), ("tennis shoes", "sneakers", "shoes"), ()),
    "vase": (("vase",), ("vases",), ()),
}


def _key(class_name: str) -> str:
    cls = normalise_class(class_name)
    _, cat = CLASS_TO_COCO[cls]
    return cls if cat == "*" else cat


def normalise_class(class_name: str) -> str:
    """Canonical class word ("Stuffed_Animal" -> "stuffed animal"); ConfigError if unknown."""
    cls = " ".join(str(class_name).replace("_", " ").lower().split())
    if cls not in CLASS_TO_COCO:
        raise ConfigError(
            f"no COCO mapping for class {class_name!r}; known classes: {', '.join(sorted(CLASS_TO_COCO))} "
            "(or set prompts.coco_prompts: null to use concept-agnostic prompts only)"
        )
    return cls


def _words(phrase: str) -> str:
    return r"\s+".join(re.escape(w) for w in phrase.split())


def _rx(phrases: Iterable[str], raw: bool = False) -> re.Pattern | None:
    phrases = list(phrases)
    if not phrases:
        return None
    alts = phrases if raw else [_words(p) for p in sorted(phrases, key=len, reverse=True)]
    return re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?![\w-])", re.IGNORECASE)


def _replacer(class_name: str):
    """A function caption -> prompt with `[V*]`, or None when the caption is dropped."""
    singular, plural, senses = _TERMS[_key(class_name)]
    one, many, other = _rx(singular), _rx(plural), _rx(senses, raw=True)
    loose = re.compile(r"(?:" + "|".join(_words(p) for p in singular + plural) + r")", re.IGNORECASE)

    def replace(caption: str) -> str | None:
        text = " ".join(caption.split())
        if (many and many.search(text)) or (other and other.search(text)):
            return None
        hits = list(one.finditer(text))
        if len(hits) != 1:
            return None
        # A mention glued to a hyphen ("dog-shaped", "hot-dog") is a compound: ambiguous.
        for m in loose.finditer(text):
            before = text[m.start() - 1] if m.start() else " "
            after = text[m.end()] if m.end() < len(text) else " "
            if "-" in (before, after):
                return None
        h = hits[0]
        return normalise_caption(text[: h.start()] + PLACEHOLDER + text[h.end():])

    return replace


def normalise_caption(text: str) -> str:
    """Strip, collapse spaces, lowercase the first letter, drop a trailing period; "an [V*]" -> "a [V*]"."""
    text = " ".join(text.split()).rstrip(" .")
    text = re.sub(r"\b([Aa])n(\s+)" + re.escape(PLACEHOLDER), lambda m: m[1] + m[2] + PLACEHOLDER, text)
    return text[:1].lower() + text[1:] if text else text


def _load(path: str | os.PathLike, kind: str, required: tuple[str, ...]) -> dict:
    path = Path(path)
    if path.is_dir():
        names = [f"{kind}_{split}{year}.json" for year in (2017, 2014) for split in ("train", "val")]
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise DataError(f"no COCO {kind} file ({', '.join(names)}) in {path}; {DOWNLOAD_HINT}")
        path = found[0]
    if not path.is_file():
        raise DataError(f"COCO {kind} file not found: {path}; {DOWNLOAD_HINT}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as JSON ({e}); expected a COCO {kind}_*.json file: {DOWNLOAD_HINT}") from e
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(
            f"{path} is not a COCO {kind} file (missing {', '.join(repr(k) for k in missing)}); {DOWNLOAD_HINT}"
        )
    return data


def mine_coco(
    captions_json: str | os.PathLike,
    instances_json: str | os.PathLike,
    class_name: str,
    n: int = 3000,
    seed: int = 0,
) -> list[str]:
    """Up to `n` unique `[V*]` prompts for `class_name` from COCO captions, sorted.

    Each path may be a file or the COCO `annotations/` folder (then the 2017, else 2014, train, else
    val, file is used). Fewer than `n` matching captions: all of them, with a warning.
    """
    cls = normalise_class(class_name)
    if n < 1:
        raise ConfigError(f"n must be at least 1 (got {n})")
    captions = _load(captions_json, "captions", ("annotations", "images"))
    instances = _load(instances_json, "instances", ("annotations", "images", "categories"))

    sup, cat = CLASS_TO_COCO[cls]

    def wanted(c: dict) -> bool:
        name = str(c.get("name", "")).replace("_", " ")
        return c.get("supercategory") == sup and (cat == "*" or name == cat)

    cat_ids = {c["id"] for c in instances["categories"] if wanted(c)}
    if not cat_ids:
        raise DataError(f"{instances_json} has no COCO category {sup}/{cat}; is it a COCO instances file?")
    images = {a["image_id"] for a in instances["annotations"] if a.get("category_id") in cat_ids}

    replace = _replacer(cls)
    unique: set[str] = set()
    for a in captions["annotations"]:
        if a.get("image_id") in images and isinstance(a.get("caption"), str):
            prompt = replace(a["caption"])
            if prompt:
                unique.add(prompt)
    pool = sorted(unique)
    if len(pool) < n:
        warnings.warn(f"only {len(pool)} COCO captions match class {cls!r} (asked for {n}); using all of them",
                      stacklevel=2)
        return pool
    return sorted(random.Random(seed).sample(pool, n))
