"""The world's training data stream, attribute oracle and CLIP models, at a tiny size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dbdpo.world.attributes import ATTRIBUTES, COLOURS, PATTERNS, RESERVED_PATTERNS
from dbdpo.world.data import RenderedBatches, WorldData, fixed_eval_set, sample_split, scene_half


def _same(a: dict, b: dict) -> bool:
    return (torch.equal(a["pixels"], b["pixels"]) and a["captions"] == b["captions"]
            and all(torch.equal(a["labels"][k], b["labels"][k]) for k in ATTRIBUTES))


# ---- data ----------------------------------------------------------------------------------------------------

def test_stream_batches_are_a_function_of_seed_and_index():
    full = list(RenderedBatches(6, seed=3, steps=5))
    resumed = list(RenderedBatches(6, seed=3, start=2, steps=3))
    assert len(full) == 5 and len(resumed) == 3
    for a, b in zip(full[2:], resumed):
        assert _same(a, b)
    assert _same(full[4], RenderedBatches(6, seed=3).batch(4))
    assert not _same(full[0], full[1])
    assert not torch.equal(full[0]["pixels"], RenderedBatches(6, seed=4).batch(0)["pixels"])

    b = full[0]
    assert b["pixels"].shape == (6, 3, 32, 32) and b["pixels"].dtype == torch.float32
    assert -1.0 <= float(b["pixels"].min()) and float(b["pixels"].max()) <= 1.0
    assert len(b["captions"]) == 6 and all(isinstance(c, str) and c for c in b["captions"])
    assert set(b["labels"]) == set(ATTRIBUTES)
    assert all(v.dtype == torch.long and v.shape == (6,) for v in b["labels"].values())
    # infinite stream
    it = iter(RenderedBatches(2, seed=0, with_captions=False))
    assert [next(it)["captions"] for _ in range(3)] == [[], [], []]


def test_datamodule_starts_at_the_restored_step():
    class FakeTrainer:
        global_step = 3

    dm = WorldData(batch_size=4, seed=5, split="pretrain", size=32, steps=6, with_captions=True)
    dm.trainer = FakeTrainer()
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    assert _same(batches[0], RenderedBatches(4, seed=5).batch(3))


def test_loader_workers_keep_the_batch_order():
    from dbdpo.world.data import WorldData

    def stream(workers):
        dm = WorldData(4, seed=5, split="pretrain", size=32, steps=5, with_captions=True, workers=workers)
        return list(dm.train_dataloader())

    one, two = stream(0), stream(2)
    assert len(one) == len(two) == 5
    for a, b in zip(one, two):
        assert torch.equal(a["pixels"], b["pixels"]) and a["captions"] == b["captions"]


def test_halves_and_oracle_split():
    rng = np.random.default_rng(0)
    for half in (0, 1):
        b = sample_split(200, rng, "pretrain", half=half)
        assert len(b) == 200 and (scene_half(b) == half).all()
    big = sample_split(3000, rng, "all")
    assert 0.4 < scene_half(big).mean() < 0.6
    oracle = sample_split(3000, rng, "oracle")
    seen = {PATTERNS[p] for p in np.unique(oracle.pattern)}
    assert set(RESERVED_PATTERNS) <= seen and "solid" in seen
    assert ((oracle.colour2 < 0) == (oracle.pattern == PATTERNS.index("solid"))).all()
    assert (oracle.colour2 != oracle.colour).all()
    ev = fixed_eval_set(10, seed=1, split="heldout")
    assert _same(ev, fixed_eval_set(10, seed=1, split="heldout"))
    assert ev["pixels"].shape == (10, 3, 32, 32) and len(ev["captions"]) == 10


# ---- oracle --------------------------------------------------------------------------------------------------

def test_oracle_save_load_round_trip(tmp_path):
    from dbdpo.world.oracle import HEADS, OracleNet, load_oracle, predict, save_weights

    torch.manual_seed(0)
    net = OracleNet().eval()
    path = save_weights(net, tmp_path / "oracle.safetensors", net.config)
    loaded = load_oracle(path)
    images = fixed_eval_set(16, seed=0, split="all", with_captions=False)["pixels"]
    uint8 = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    net.half().float()  # the same fp16 rounding as the file
    with torch.no_grad():
        a, b = net(images), loaded(uint8)
    for k in HEADS:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    pa, pb = predict(net, uint8), predict(loaded, images)
    assert set(pa) == set(HEADS)
    for k in HEADS:
        assert pa[k].shape == (16,) and (pa[k] == pb[k]).all()
        assert set(pa[k]) <= set(HEADS[k])
    assert set(HEADS["colour2"]) == set(COLOURS) | {"none"}


def test_train_oracle_tiny_and_resume(tmp_path):
    from dbdpo.world.oracle import HEADS, load_oracle, predict

    ckpt, out = tmp_path / "ckpt", tmp_path / "out" / "oracle.safetensors"
    acc = train_oracle_tiny(steps=3, ckpt=ckpt, out=out)
    assert set(HEADS) <= set(acc) and all(0.0 <= acc[k] <= 1.0 for k in HEADS)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 3
    first = load_oracle(out)
    images = fixed_eval_set(8, seed=2, split="all", with_captions=False)["pixels"]
    p1 = predict(first, images)

    train_oracle_tiny(steps=5, ckpt=ckpt, out=out)  # resumes at step 3
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 5
    p2 = predict(load_oracle(out), images)
    assert set(p2) == set(p1)


def train_oracle_tiny(steps, ckpt, out):
    from dbdpo.world.oracle import train_oracle

    return train_oracle(steps=steps, batch_size=8, lr=1e-3, seed=0, size=32, ckpt_dir=ckpt, out_path=out,
                        eval_n=32, checkpoint_every=2)


# ---- CLIPs ---------------------------------------------------------------------------------------------------

def test_retrieval_metric_on_hand_made_embeddings():
    from dbdpo.world.clips import retrieval_top1

    eye = torch.eye(8)
    assert retrieval_top1(eye, eye, group=4) == 1.0
    assert retrieval_top1(eye, eye.roll(1, dims=0), group=4) == 0.0
    txt = eye.clone()
    txt[0], txt[1] = eye[1], eye[0]  # images 0 and 1 of the first group swapped captions
    assert retrieval_top1(eye, txt, group=4) == pytest.approx(6 / 8)
    # a tie with another caption is not a retrieval
    tie = eye.clone()
    tie[1] = eye[0]
    assert retrieval_top1(eye, tie, group=4) == pytest.approx(6 / 8)
    # incomplete trailing group ignored
    assert retrieval_top1(torch.eye(10), torch.eye(10), group=4) == 1.0
    with pytest.raises(ValueError):
        retrieval_top1(eye[:3], eye[:3], group=4)


@pytest.mark.parametrize("which", ["scorer", "evaluator"])
def test_clip_weights_load_through_clip_scorer(tmp_path, which):
    from dbdpo.scores import ClipScorer
    from dbdpo.world.clips import ClipModule, model_name, register_world_clips, to_uint8
    from dbdpo.world.oracle import save_weights

    register_world_clips()
    name = model_name(which)
    module = ClipModule(name, steps=1, seed=3).eval()
    path = save_weights(module.model, tmp_path / f"{which}.safetensors", {"model_name": name})
    scorer = ClipScorer(name, pretrained=str(path))
    assert all(p.dtype == torch.float32 for p in scorer.model.parameters())
    data = fixed_eval_set(6, seed=0, split="heldout")
    with torch.no_grad():
        img, txt = module.encode(data["pixels"], data["captions"])
    s_img = scorer.embed_images(to_uint8(data["pixels"]))
    s_txt = scorer.embed_texts(data["captions"])
    torch.testing.assert_close(s_img, img, atol=1e-2, rtol=0)  # fp16 weights
    torch.testing.assert_close(s_txt, txt, atol=1e-2, rtol=0)
    module.model.half().float()  # the same rounding: only preprocessing could differ now
    with torch.no_grad():
        img, txt = module.encode(data["pixels"], data["captions"])
    torch.testing.assert_close(s_img, img, atol=1e-5, rtol=0)
    torch.testing.assert_close(s_txt, txt, atol=1e-5, rtol=0)


def test_train_clip_tiny_and_resume(tmp_path):
    from dbdpo.world.clips import train_clip

    ckpt, out = tmp_path / "ckpt", tmp_path / "scorer.safetensors"
    res = train_clip("scorer", steps=2, batch_size=8, lr=1e-3, seed=1, ckpt_dir=ckpt, out_path=out, eval_n=100)
    assert 0.0 <= res["top1_among_100_heldout"] <= 1.0 and res["model_name"] == "dbdpo-world-scorer"
    assert out.is_file() and out.with_suffix(".json").is_file()
    res = train_clip("scorer", steps=3, batch_size=8, lr=1e-3, seed=1, ckpt_dir=ckpt, out_path=out, eval_n=100)
    assert torch.load(ckpt / "last.ckpt", weights_only=True)["global_step"] == 3
