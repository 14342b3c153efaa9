"""Generation (dbdpo/generate.py): per-sample seeds, batch/shard invariance, resume, the stored layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dbdpo.errors import DbdpoError
from dbdpo.generate import format_prompt, generate, load_samples, sample_seed

PROMPTS = ["a [V*] in the snow", "a photo of [V*]", "[V*] on a beach"]
HOLDER = "sks dog"
M = 2


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()  # generation never changes the weights: one per module


def run(backbone, out, **kw):
    args = dict(images_per_prompt=M, seed=7, batch_size=4, prompts_per_shard=1, progress=False)
    args.update(kw)
    return generate(backbone, PROMPTS, HOLDER, out, **args)


def test_sample_seed_deterministic_and_distinct():
    s = sample_seed("a [V*] in the snow", 3, 11)
    assert s == sample_seed("a [V*] in the snow", 3, 11)
    assert isinstance(s, int) and 0 <= s < 2**63
    variants = {
        s,
        sample_seed("a [V*] in the rain", 3, 11),  # prompt
        sample_seed("a [V*] in the snow", 4, 11),  # sample index
        sample_seed("a [V*] in the snow", 3, 12),  # global seed
        sample_seed("a [V*] in the snow", 31, 1),  # no ambiguity from concatenating the parts
        sample_seed("a [V*] in the snow", 1, 31),
    }
    assert len(variants) == 6
    grid = {sample_seed(p, j, 0) for p in PROMPTS for j in range(50)}
    assert len(grid) == len(PROMPTS) * 50


def test_format_prompt():
    assert format_prompt("a [V*] in the snow", "sks dog") == "a sks dog in the snow"
    assert format_prompt("a cat", "sks dog") == "a cat"


def test_batch_size_and_sharding_do_not_change_samples(backbone, tmp_path):
    one = run(backbone, tmp_path / "bs1", batch_size=1, prompts_per_shard=2)
    four = run(backbone, tmp_path / "bs4", batch_size=4, prompts_per_shard=2)
    sharded = run(backbone, tmp_path / "pps3", batch_size=4, prompts_per_shard=3)

    assert one.latents.shape == (len(PROMPTS) * M, 4, 16, 16)
    for other in (four, sharded):
        assert torch.allclose(one.latents, other.latents, atol=1e-4)
        assert one.seeds == other.seeds
        assert one.prompts == other.prompts and one.texts == other.texts
        assert one.prompt_index == other.prompt_index and one.sample_index == other.sample_index
        assert [p.name for p in one.images] == [p.name for p in other.images]
    assert one.seeds == [sample_seed(p, j, 7) for p in PROMPTS for j in range(M)]

    # every sample is a different image (different seed, and prompts differ)
    flat = one.latents.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat)) * 1e9).min() > 1e-2
    pixels = [np.asarray(im, dtype=np.int16) for im in one.load_images()]
    assert all(im.shape == (32, 32, 3) for im in pixels)
    for i in range(len(pixels)):
        for j in range(i + 1, len(pixels)):
            assert np.abs(pixels[i] - pixels[j]).mean() > 1.0, (i, j)


def test_global_seed_changes_samples(backbone, tmp_path):
    a, b = (generate(backbone, PROMPTS[:1], HOLDER, tmp_path / str(seed), images_per_prompt=M, seed=seed,
                     progress=False) for seed in (1, 2))
    assert a.prompts == b.prompts and a.sample_index == b.sample_index
    assert not torch.allclose(a.latents, b.latents, atol=1e-2)


def _files(shard):
    return {p.name: p.stat().st_mtime_ns for p in sorted(shard.iterdir())}


def test_resume_regenerates_only_missing_shard(backbone, tmp_path):
    out = tmp_path / "gen"
    first = run(backbone, out)
    shards = sorted(p.name for p in out.glob("shard_*"))
    assert shards == ["shard_00000", "shard_00001", "shard_00002"]
    keep = {name: (_files(out / name), (out / name).stat().st_ino) for name in ("shard_00000", "shard_00002")}
    lost = torch.clone(first.latents[M : 2 * M])

    shutil.rmtree(out / "shard_00001")
    stale = out / ".tmp_shard_00001"  # what a run killed mid-shard leaves behind
    stale.mkdir()
    (stale / "p00001_000.png").write_bytes(b"half written")
    orphan = out / ".tmp_shard_00099"  # stale folders of shards not regenerated go too
    orphan.mkdir()
    (orphan / "latents.safetensors").write_bytes(b"junk")

    again = run(backbone, out)
    assert not stale.exists() and not orphan.exists() and not list(out.glob(".tmp_shard_*"))
    assert sorted(p.name for p in out.glob("shard_*")) == shards
    assert torch.equal(again.latents[M : 2 * M], lost)
    assert torch.equal(again.latents, first.latents)
    assert again.seeds == first.seeds and again.texts == first.texts
    for name, (files, inode) in keep.items():  # finished shards are neither rewritten nor replaced
        assert _files(out / name) == files
        assert (out / name).stat().st_ino == inode

    # a finished run does no work the third time (nothing rewritten at all)
    before = {p.name: _files(p) for p in out.glob("shard_*")}
    run(backbone, out)
    assert {p.name: _files(p) for p in out.glob("shard_*")} == before


@pytest.fixture(scope="module")
def finished_run(backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "gen"
    run(backbone, out)
    return out


@pytest.mark.parametrize("change", [
    {"seed": 8},
    {"images_per_prompt": 3},
    {"guidance_scale": 1.5},
    {"num_inference_steps": 2},
    {"prompts_per_shard": 2},  # would otherwise duplicate prompts across old and new shards
    {"prompts": PROMPTS[:2]},
    {"holder": "sks cat"},
])
def test_other_settings_into_same_dir_raise(backbone, finished_run, tmp_path, change):
    out = tmp_path / "gen"
    shutil.copytree(finished_run, out)
    args = dict(images_per_prompt=M, seed=7, batch_size=4, prompts_per_shard=1, progress=False)
    prompts, holder = PROMPTS, HOLDER
    change = dict(change)
    prompts = change.pop("prompts", prompts)
    holder = change.pop("holder", holder)
    before = {p.name: _files(p) for p in out.glob("shard_*")}
    with pytest.raises(DbdpoError, match="other settings"):
        generate(backbone, prompts, holder, out, **{**args, **change})
    assert {p.name: _files(p) for p in out.glob("shard_*")} == before
    # the batch size is not a setting: resuming with another one is fine
    assert len(generate(backbone, PROMPTS, HOLDER, out, **{**args, "batch_size": 1})) == len(PROMPTS) * M


def test_load_samples_aligned_and_safetensors(backbone, tmp_path):
    out = tmp_path / "gen"
    made = run(backbone, out, prompts_per_shard=2)
    s = load_samples(out)
    n = len(PROMPTS) * M
    assert len(s) == n
    for field in (s.prompts, s.texts, s.prompt_index, s.sample_index, s.seeds, s.images):
        assert len(field) == n
    assert s.latents.shape == (n, 4, 16, 16) and s.latents.dtype == torch.float32
    assert torch.equal(s.latents, made.latents)
    assert s.prompt_index == [0, 0, 1, 1, 2, 2] and s.sample_index == [0, 1] * 3
    for i in range(n):
        p, j = s.prompt_index[i], s.sample_index[i]
        assert s.prompts[i] == PROMPTS[p]
        assert s.texts[i] == format_prompt(PROMPTS[p], HOLDER)
        assert s.seeds[i] == sample_seed(PROMPTS[p], j, 7)
        assert s.images[i].name == f"p{p:05d}_{j:03d}.png" and s.images[i].exists()

    # each stored image is its row of latents decoded (so latents and images are aligned)
    decoded = backbone.decode(s.latents)
    for i, im in enumerate(decoded):
        stored = np.asarray(Image.open(s.images[i]).convert("RGB"), dtype=np.int16)
        assert np.abs(np.asarray(im, dtype=np.int16) - stored).max() <= 2, i

    # storage: one safetensors file of latents per shard, plus meta.json; no pickles
    shards = sorted(out.glob("shard_*"))
    assert [p.name for p in shards] == ["shard_00000", "shard_00001"]
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    rows = 0
    for shard in shards:
        with safe_open(str(shard / "latents.safetensors"), framework="pt") as f:
            assert list(f.keys()) == ["latents"]
            rows += f.get_tensor("latents").shape[0]
        meta = json.loads((shard / "meta.json").read_text())
        assert {"prompt", "text", "prompt_index", "sample_index", "seed", "image"} <= set(meta[0])
    assert rows == n
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["seed"] == 7 and manifest["images_per_prompt"] == M and manifest["n_prompts"] == 3


def test_load_samples_of_empty_folder_raises(tmp_path):
    (tmp_path / ".tmp_shard_00000").mkdir()  # an unfinished shard is not a sample
    with pytest.raises(DbdpoError, match="no generated samples"):
        load_samples(tmp_path)


def test_sample_cache_shares_identical_shards_across_runs(backbone, tmp_path, monkeypatch):
    import dbdpo.generate as gen

    calls = []
    real = gen._generate_batch
    monkeypatch.setattr(gen, "_generate_batch", lambda bb, texts, *a: calls.append(list(texts)) or real(bb, texts, *a))
    cache = tmp_path / "cache"
    full = generate(backbone, PROMPTS, HOLDER, tmp_path / "a", M, seed=7, batch_size=8, prompts_per_shard=1,
                    progress=False, cache_dir=cache)
    assert len(calls) == 3 and len(list(cache.iterdir())) == 3
    # a run over the first two prompts (another pool part, same weights and seed) generates nothing
    calls.clear()
    part = generate(backbone, PROMPTS[:2], HOLDER, tmp_path / "b", M, seed=7, batch_size=8, prompts_per_shard=1,
                    progress=False, cache_dir=cache)
    assert calls == [] and torch.equal(part.latents, full.latents[: 2 * M]) and part.seeds == full.seeds[: 2 * M]
    assert [p.name for p in part.images] == [p.name for p in full.images[: 2 * M]]
    # the same prompt at another position, another seed, or other weights: generated anew
    generate(backbone, PROMPTS[1:2], HOLDER, tmp_path / "c", M, seed=7, prompts_per_shard=1, progress=False,
             cache_dir=cache)
    generate(backbone, PROMPTS[:1], HOLDER, tmp_path / "d", M, seed=8, prompts_per_shard=1, progress=False,
             cache_dir=cache)
    assert len(calls) == 2
    with torch.no_grad():
        p = next(backbone.unet.parameters())
        saved = p.clone()
        p.add_(1e-3)
        try:
            generate(backbone, PROMPTS[:1], HOLDER, tmp_path / "e", M, seed=7, prompts_per_shard=1, progress=False,
                     cache_dir=cache)
        finally:
            p.copy_(saved)
    assert len(calls) == 3


def test_png_writer_threads_write_the_same_files_and_a_failed_write_leaves_no_shard(backbone, tmp_path, monkeypatch):
    import dbdpo.generate as gen

    threaded = run(backbone, tmp_path / "threads", batch_size=2, prompts_per_shard=2)
    monkeypatch.setattr(gen, "PNG_WRITERS", 1)
    serial = run(backbone, tmp_path / "serial", batch_size=2, prompts_per_shard=2)
    assert [p.read_bytes() for p in threaded.images] == [p.read_bytes() for p in serial.images]
    # each PNG is the decoded latent it sits beside
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(threaded.load_images(), backbone.decode(threaded.latents)))

    monkeypatch.setattr(gen, "PNG_WRITERS", 3)
    real_save, calls = Image.Image.save, []

    def failing_save(self, fp, *a, **k):
        calls.append(str(fp))
        if len(calls) == 3:  # the first image of the second batch of shard 0
            raise OSError("disk full")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    out = tmp_path / "failed"
    with pytest.raises(OSError, match="disk full"):
        run(backbone, out, batch_size=2, prompts_per_shard=2)
    assert not list(out.glob("shard_*"))  # the shard never moved into place half written
    monkeypatch.setattr(Image.Image, "save", real_save)
    again = run(backbone, out, batch_size=2, prompts_per_shard=2)
    assert [p.read_bytes() for p in again.images] == [p.read_bytes() for p in serial.images]


def test_a_shard_is_finished_while_the_next_one_samples(backbone, tmp_path, monkeypatch):
    # shard 0's last PNGs, latents and move into place run on the finisher thread while shard 1 samples, and the
    # result is the serial run's, byte for byte
    import threading

    import dbdpo.generate as gen

    serial = run(backbone, tmp_path / "serial", batch_size=2, prompts_per_shard=1)
    real_batch, real_save = gen._generate_batch, Image.Image.save
    second_shard_sampling, seen = threading.Event(), []

    def batch(*a, **k):
        if len(seen) >= M // 2:  # shard 0 (one prompt, M images) takes M / 2 batches of 2
            second_shard_sampling.set()
        seen.append(1)
        return real_batch(*a, **k)

    def save(self, fp, *a, **k):
        if Path(fp).parent.name == ".tmp_shard_00000":
            waited.append(second_shard_sampling.wait(timeout=30))
        return real_save(self, fp, *a, **k)

    waited = []
    monkeypatch.setattr(gen, "_generate_batch", batch)
    monkeypatch.setattr(Image.Image, "save", save)
    overlapped = run(backbone, tmp_path / "overlapped", batch_size=2, prompts_per_shard=1)
    assert waited and all(waited)  # shard 0's writes could wait for shard 1's sampling to begin
    assert [p.read_bytes() for p in overlapped.images] == [p.read_bytes() for p in serial.images]
    assert [p.name for p in sorted((tmp_path / "overlapped").iterdir())] == \
        [p.name for p in sorted((tmp_path / "serial").iterdir())]
