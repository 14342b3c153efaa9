"""DreamBench (Ruiz et al. 2023, CC BY 4.0): the 30 subjects and the evaluation prompt sets."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dbdpo.errors import ConfigError, DataError

PLACEHOLDER = "[V*]"
DATA_DIR = Path(__file__).parent / "data"
EVAL_SETS = ("full", "val", "long")


@dataclass(frozen=True)
class Subject:
    name: str
    class_name: str
    live: bool


_LIVE = {"cat": "cat", "cat2": "cat", "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog",
         "dog6": "dog", "dog7": "dog", "dog8": "dog"}
_OBJECT = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "clock": "clock",
    "colorful_sneaker": "sneaker", "duck_toy": "toy", "fancy_boot": "boot",
    "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy", "pink_sunglasses": "glasses",
    "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon", "robot_toy": "toy",
    "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase", "wolf_plushie": "stuffed animal",
}

SUBJECTS: dict[str, Subject] = {
    name: Subject(name, cls, live)
    for live, table in ((True, _LIVE), (False, _OBJECT))
    for name, cls in sorted(table.items())
}


def get_subject(name: str) -> Subject:
    """The DreamBench subject called `name` (e.g. "dog6")."""
    try:
        return SUBJECTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown DreamBench subject {name!r}; valid names: {', '.join(sorted(SUBJECTS))}"
        ) from None


@lru_cache(maxsize=1)
def _data() -> dict:
    path = DATA_DIR / "dreambench_prompts.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the shipped DreamBench prompts {path} ({e}); reinstall dbdpo") from e


def eval_prompts(live: bool, which: str = "full") -> list[str]:
    """DreamBench prompts (with `[V*]`): `which` = "full" (25), "val" (5) or "long" (10)."""
    if which not in EVAL_SETS:
        raise ConfigError(f"unknown prompt set {which!r} (prompts.eval_set); use one of {', '.join(EVAL_SETS)}")
    kind = "live" if live else "object"
    key = {"full": kind, "val": f"val_{kind}", "long": f"long_{kind}"}[which]
    return list(_data()[key])


def prompt_source(key: str) -> str:
    """The credit line of a shipped set ("live", "object", "long_live", ...)."""
    return _data()["source"][key]


def format_prompt(prompt: str, holder: str) -> str:
    """Replace `[V*]` by `holder` (e.g. "sks dog"); an empty holder removes it ("a in the jungle")."""
    if prompt.count(PLACEHOLDER) != 1:
        raise DataError(f"prompt {prompt!r} must contain the placeholder {PLACEHOLDER} exactly once; fix the prompt file")
    out = prompt.replace(PLACEHOLDER, holder)
    return re.sub(r"\s+", " ", out).strip() if not holder.strip() else out
