"""Generate M images per prompt with the current model, in resumable shards.

Every sample's initial noise comes from its own generator seeded with
`seed(prompt, index, global_seed) = sha256(global_seed ‖ index ‖ prompt)[:8]`, never from its batch
position, so batch size, sharding and resume never change an image.

Layout of `out_dir`: `shard_00000/` … each holding `latents.safetensors` (diffusion-space latents,
what DPO trains on), `meta.json` (prompt, formatted text, index, seed, image file) and PNG images.
A shard is written to a temporary folder and renamed into place, so it is either complete or absent;
a restart skips finished shards. With `cache_dir`, finished shards are also kept there under a key made of
the model's weights fingerprint and everything that determines the shard's images (prompts, their indices,
seed, sampler settings), so another run that would generate the same shard copies it instead (e.g. DPO
variants that start from one checkpoint). PNGs are encoded by a few threads while the next batch is sampled
(PIL releases the GIL while compressing), so the accelerator does not wait for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .distributed import barrier, is_main, main_writes, mine
from .errors import DbdpoError
from .io import read_json, write_json
from .prompts.dreambench import PLACEHOLDER

PNG_WRITERS = min(4, os.cpu_count() or 1)  # threads encoding PNGs while the next batch samples


def sample_seed(prompt: str, index: int, seed: int) -> int:
    """A 63-bit seed from (prompt, sample index, global seed)."""
    digest = hashlib.sha256(f"{seed}\x1f{index}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def format_prompt(prompt: str, holder: str) -> str:
    """Replace the `[V*]` placeholder by the concept holder (e.g. `sks dog`)."""
    return prompt.replace(PLACEHOLDER, holder)


@dataclass
class SampleSet:
    """All samples of one generation: flat lists aligned with `latents` rows."""

    root: Path
    latents: torch.Tensor  # (K, C, h, w)
    prompts: list[str]  # templates with [V*]
    texts: list[str]  # formatted prompts the model saw
    prompt_index: list[int]  # index of the prompt in the generation's prompt list
    sample_index: list[int]
    seeds: list[int]
    images: list[Path]

    def __len__(self) -> int:
        return len(self.prompts)

    def load_images(self, idx: Sequence[int] | None = None):
        from PIL import Image

        idx = range(len(self)) if idx is None else idx
        return [Image.open(self.images[i]).convert("RGB") for i in idx]


def model_fingerprint(backbone) -> str:
    """sha256 over the weights of every module of the backbone's pipeline and its scheduler's config."""
    h = hashlib.sha256(f"{type(backbone.pipe).__name__} {backbone.resolution}".encode())
    for name, comp in sorted(backbone.pipe.components.items()):
        h.update(name.encode())
        if isinstance(comp, torch.nn.Module):
            for key, t in comp.state_dict().items():
                h.update(key.encode())
                h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif hasattr(comp, "config"):
            # `_use_default_values` lists names in set order, which changes from one process to the next
            h.update(repr(sorted((k, v) for k, v in dict(comp.config).items() if k != "_use_default_values")).encode())
    return h.hexdigest()


def _shard_key(fingerprint: str, settings: dict, first: int, prompts: list[str]) -> str:
    keep = {k: v for k, v in settings.items() if k not in ("n_prompts", "prompts_sha256", "prompts_per_shard")}
    blob = repr((fingerprint, sorted(keep.items()), first, prompts)).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}"


@torch.no_grad()
def _generate_batch(backbone, texts: list[str], seeds: list[int], guidance_scale: float, steps: int,
                    eta: float | None = None) -> torch.Tensor:
    device = backbone.pipe.device
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    shape = (len(seeds), *backbone.latent_shape)
    # Initial noise drawn per sample on the CPU (device-independent), then handed to the pipeline.
    latents = torch.stack([torch.randn(shape[1:], generator=g) for g in gens]).to(device, backbone.unet.dtype)
    with backbone.sampling() as pipe, backbone.autocast():  # autocast: an fp32-trained UNet, half-precision rest
        out = pipe(
            prompt=texts, height=backbone.resolution, width=backbone.resolution, num_inference_steps=steps,
            guidance_scale=guidance_scale, latents=latents, output_type="latent",
            generator=[torch.Generator(device="cpu").manual_seed(s + 1) for s in seeds],
            **({"eta": eta} if eta is not None else {}),  # DDIM's stochasticity (η = 1: DDPM-like), per-sample noise
        )
    return out.images.float().cpu()


def generate(
    backbone,
    prompts: Sequence[str],
    holder: str,
    out_dir: str | os.PathLike,
    images_per_prompt: int,
    seed: int,
    batch_size: int = 8,
    prompts_per_shard: int = 16,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    desc: str = "generate",
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    sampler: str | None = None,
    eta: float | None = None,
) -> SampleSet:
    """Generate `images_per_prompt` samples for every prompt (templates with `[V*]`), resumably; with `sampler`
    (a diffusers scheduler class name) instead of the backbone's own."""
    if sampler is not None and sampler != type(backbone.pipe.scheduler).__name__:
        with swapped_scheduler(backbone, sampler):
            return generate(backbone, prompts, holder, out_dir, images_per_prompt, seed, batch_size,
                            prompts_per_shard, guidance_scale, num_inference_steps, desc, progress, cache_dir,
                            sampler, eta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = list(prompts)
    guidance = backbone.guidance_scale if guidance_scale is None else guidance_scale
    steps = backbone.num_inference_steps if num_inference_steps is None else num_inference_steps
    settings = {"holder": holder, "images_per_prompt": images_per_prompt, "seed": seed,
                "guidance_scale": guidance, "num_inference_steps": steps, "n_prompts": len(prompts),
                **({"sampler": type(backbone.pipe.scheduler).__name__} if sampler is not None else {}),
                **({"eta": float(eta)} if eta is not None else {}),
                "prompts_per_shard": prompts_per_shard,  # shard k covers prompts [k·pps, (k+1)·pps)
                "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}
    manifest = out_dir / "generation.json"
    if manifest.exists():
        if read_json(manifest) != settings:
            raise DbdpoError(f"{out_dir} holds samples generated with other settings; remove it or choose "
                             "another run directory (hydra.run.dir=...) to start fresh.")
    with main_writes() as main:  # with several processes, process 0 writes and the others wait
        if main:
            if not manifest.exists():
                write_json(manifest, settings)
            for stale in out_dir.glob(".tmp_shard_*"):
                shutil.rmtree(stale, ignore_errors=True)

    shards = [range(i, min(i + prompts_per_shard, len(prompts))) for i in range(0, len(prompts), prompts_per_shard)]
    # shard k is made by process k mod W (all of them with one process)
    todo = [k for k in range(len(shards)) if mine(k) and not (out_dir / _shard_name(k)).exists()]
    total = sum(len(shards[k]) for k in range(len(shards)) if mine(k)) * images_per_prompt
    done = total - sum(len(shards[k]) for k in todo) * images_per_prompt
    bar = tqdm(total=total, initial=done, desc=desc, unit="img", disable=not progress or not is_main())
    cache = Path(cache_dir) if cache_dir is not None and todo else None
    fingerprint = model_fingerprint(backbone) if cache is not None else ""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    # PNGs are encoded on `writer`'s threads while the next batch samples; a shard is finished (its last PNGs
    # awaited, latents and meta written, moved into place) on `finisher` while the next shard samples
    with ThreadPoolExecutor(max_workers=PNG_WRITERS, thread_name_prefix="dbdpo-png") as writer, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbdpo-shard") as finisher:
        finishing: list[Future] = []
        for k in todo:
            items = [(p, j) for p in shards[k] for j in range(images_per_prompt)]
            tmp = out_dir / f".tmp_{_shard_name(k)}"
            shutil.rmtree(tmp, ignore_errors=True)
            key = _shard_key(fingerprint, settings, shards[k][0], [prompts[p] for p in shards[k]]) if cache else ""
            if cache is not None and (cache / key).is_dir():
                shutil.copytree(cache / key, tmp)
                os.replace(tmp, out_dir / _shard_name(k))
                bar.update(len(items))
                continue
            tmp.mkdir()
            latents, meta, pending = [], [], []
            for b in range(0, len(items), batch_size):
                chunk = items[b : b + batch_size]
                texts = [format_prompt(prompts[p], holder) for p, _ in chunk]
                seeds = [sample_seed(prompts[p], j, seed) for p, j in chunk]
                lat = _generate_batch(backbone, texts, seeds, guidance, steps, eta)
                images = backbone.decode(lat)
                _wait(pending)  # at most one batch of this shard's PNGs in flight: bounded memory
                for (p, j), text, s, img in zip(chunk, texts, seeds, images):
                    name = f"p{p:05d}_{j:03d}.png"
                    pending.append(writer.submit(img.save, tmp / name))
                    meta.append({"prompt": prompts[p], "text": text, "prompt_index": p, "sample_index": j,
                                 "seed": s, "image": name})
                latents.append(lat)
                bar.update(len(chunk))
            _wait(finishing)  # the previous shard is in place (and any failure of it raised) before this one
            finishing.append(finisher.submit(_finish_shard, tmp, out_dir / _shard_name(k), pending, latents, meta,
                                             cache / key if cache is not None else None))
        _wait(finishing)
    bar.close()
    barrier()  # every process's shards are in place
    return load_samples(out_dir)


def _finish_shard(tmp: Path, final: Path, pending: list[Future], latents: list[torch.Tensor], meta: list[dict],
                  cached: Path | None) -> None:
    """Once every PNG of the shard is written: its latents and meta, a copy into the cache, then the shard moves
    into place (a shard directory exists only complete)."""
    _wait(pending)
    save_file({"latents": torch.cat(latents).contiguous()}, str(tmp / "latents.safetensors"))
    write_json(tmp / "meta.json", meta)
    if cached is not None:
        ctmp = cached.with_name(f".tmp_{cached.name}")
        shutil.rmtree(ctmp, ignore_errors=True)
        shutil.copytree(tmp, ctmp)
        if not cached.exists():
            os.replace(ctmp, cached)
        shutil.rmtree(ctmp, ignore_errors=True)
    os.replace(tmp, final)


def _wait(pending: list[Future]) -> None:
    for f in pending:
        f.result()  # re-raises a failed write
    pending.clear()


def check_sampler(backbone, sampler: str) -> None:
    """`sampler` is a diffusers scheduler that can replace the backbone's (one of its `compatibles`)."""
    compatible = sorted(c.__name__ for c in getattr(backbone.pipe.scheduler, "compatibles", []))
    if sampler not in compatible:
        raise DbdpoError(f"generate.sampler={sampler}: the backbone's scheduler "
                         f"({type(backbone.pipe.scheduler).__name__}) cannot be swapped for it; compatible: "
                         f"{', '.join(compatible) or 'none'} (or generate=default)")


@contextlib.contextmanager
def swapped_scheduler(backbone, sampler: str):
    """The backbone's pipeline with `sampler` built from its scheduler's config, restored afterwards."""
    import diffusers

    check_sampler(backbone, sampler)
    old = backbone.pipe.scheduler
    backbone.pipe.scheduler = getattr(diffusers, sampler).from_config(old.config)
    try:
        yield backbone
    finally:
        backbone.pipe.scheduler = old


def load_samples(out_dir: str | os.PathLike) -> SampleSet:
    """Read every finished shard of a generation folder, in prompt order."""
    out_dir = Path(out_dir)
    lat, prompts, texts, pidx, sidx, seeds, images = [], [], [], [], [], [], []
    for shard in sorted(out_dir.glob("shard_*")):
        meta = read_json(shard / "meta.json")
        lat.append(load_file(str(shard / "latents.safetensors"))["latents"])
        for m in meta:
            prompts.append(m["prompt"])
            texts.append(m["text"])
            pidx.append(m["prompt_index"])
            sidx.append(m["sample_index"])
            seeds.append(m["seed"])
            images.append(shard / m["image"])
    if not lat:
        raise DbdpoError(f"no generated samples in {out_dir}.")
    return SampleSet(out_dir, torch.cat(lat), prompts, texts, pidx, sidx, seeds, images)
