"""The world judge: oracle prompt-following / identity on hand-made predictions and on real renders."""

from __future__ import annotations

import numpy as np
import pytest

from dbdpo.world.judge import look_labels, oracle_scores
from dbdpo.world.oracle import NONE
from dbdpo.world.render import ObjectSpec

HOLDER = "sks star"
LOOK = {"shape": "star", "pattern": "zigzag", "colour": "red", "colour2": "yellow"}


def preds(**cols):
    return {k: np.asarray(v, dtype=object) for k, v in cols.items()}


def test_oracle_scores_by_hand():
    prompts = ["a sks star in the snow", "a sks star on the left at night", "a red sks star", "a photo of a sks star"]
    p = preds(shape=["star", "star", "circle", "star"], pattern=["zigzag"] * 4, colour=["red", "red", "red", "blue"],
              colour2=["yellow"] * 4, background=["snow", "night", "grass", "sky"],
              position=["center", "right", "center", "center"])
    out = oracle_scores(p, prompts, HOLDER, LOOK)
    # snow asked and seen; left+night asked, only night seen; red asked and seen; nothing asked
    assert out["follow"][:3].tolist() == [1.0, 0.5, 1.0] and np.isnan(out["follow"][3])
    # identity: 3rd is a circle; 4th has the wrong colour; the red prompt overrides colour but not the shape
    assert out["identity"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_look_labels_maps_palette_colours_and_solid():
    from dbdpo.world.attributes import COLOUR_RGB

    assert look_labels(ObjectSpec("star", "zigzag", COLOUR_RGB["red"], COLOUR_RGB["yellow"])) == LOOK
    solid = look_labels(ObjectSpec("heart", "solid", COLOUR_RGB["blue"], None))
    assert solid == {"shape": "heart", "pattern": "solid", "colour": "blue", "colour2": NONE}
    assert "colour" not in look_labels(ObjectSpec("heart", "solid", (1, 2, 3), None))  # off-palette: not judged


@pytest.mark.slow
def test_shipped_oracle_judges_a_concepts_own_photos():
    """Renders of the concept on the grass, prompted 'on the grass': the oracle sees the prompt and the look."""
    from pathlib import Path

    from dbdpo.world.concepts import load_concept_config, parse_world_concept, photo_scenes, render_concept
    from dbdpo.world.oracle import load_oracle, predict

    oracle_path = Path(__file__).resolve().parents[1] / "dbdpo" / "assets" / "world" / "oracle.safetensors"
    if not oracle_path.exists():
        pytest.skip("no oracle shipped")
    concept = parse_world_concept(load_concept_config("zigzag_star"))
    images = render_concept(concept, photo_scenes(concept))
    prompts = [f"a {concept.holder} on the grass"] * len(images)
    out = oracle_scores(predict(load_oracle(oracle_path), images), prompts, concept.holder, look_labels(concept.look))
    assert out["follow"].mean() == 1.0 and out["identity"].mean() == 1.0
    wrong = oracle_scores(predict(load_oracle(oracle_path), images), [f"a {concept.holder} in the snow"] * len(images),
                          concept.holder, look_labels(concept.look))
    assert wrong["follow"].mean() == 0.0
