"""Image and text similarity scores with an open_clip model.

Features are L2-normalised, so a cosine is a dot product:

    IS(x) = mean_i cos(E_img(x), E_img(c_i))     over the concept images c_i
    TS(x) = cos(E_img(x), E_txt(t))              t = the prompt with the concept holder removed
                                                 (`text_variant="remove"`) or replaced by the class
                                                 word (`text_variant="class"`)

Texts longer than the text tower's context are truncated (with a warning), never an error.

Preprocessing (`scorer.preprocess`):
- `standard`: open_clip's eval transform on PIL images (PIL bicubic resize of the shorter side with
  antialiasing, centre crop, CLIP mean/std).
- `paper`: the original work's convention. The image becomes a float tensor in [0, 1], its shorter side
  is resized to the model's resolution with `F.interpolate(mode="bicubic", antialias=False)`, then centre
  crop and CLIP mean/std. Reference (concept) images are first resized with PIL (bicubic) to the model's
  resolution, S x S, before that tensor pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ConfigError, DataError, DbdpoError
from .prompts.dreambench import PLACEHOLDER

TINY_CLIP = "dbdpo-tiny-clip"
PREPROCESS_MODES = ("standard", "paper")
TEXT_VARIANTS = ("remove", "class")

_CONFIG_DIR = Path(__file__).parent / "clip_configs"
# Config keys that belong to the scorer group but are not ClipScorer constructor arguments.
_NON_CONSTRUCTOR_KEYS = ("text_variant",)
_CONSTRUCTOR_KEYS = ("model_name", "pretrained", "preprocess", "batch_size", "seed", "device")


def register_clip_configs() -> list[str]:
    """Register every open_clip architecture shipped in `dbdpo/clip_configs/` (idempotent)."""
    import open_clip

    names = sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))
    known = set(open_clip.list_models())
    for name in names:
        if name not in known:
            open_clip.add_model_config(_CONFIG_DIR / f"{name}.json")
    return names


def register_tiny_clip() -> str:
    """Register the `dbdpo-tiny-clip` architecture with open_clip (idempotent); returns its name."""
    register_clip_configs()
    return TINY_CLIP


class _DropRandomInitWarning(logging.Filter):
    # open_clip warns on the root logger when no weights are loaded; with pretrained=None that is intended.
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    if not active:
        yield
        return
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith(".")
        or Path(value).suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class ClipScorer(torch.nn.Module):
    """A frozen open_clip model that maps images and texts to L2-normalised features (N, D)."""

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | os.PathLike | None = "openai",
        preprocess: str = "standard",
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        import open_clip

        register_clip_configs()
        if preprocess not in PREPROCESS_MODES:
            raise ConfigError(
                f"scorer.preprocess={preprocess!r} is unknown; choose one of {list(PREPROCESS_MODES)}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"scorer.batch_size must be a positive integer, got {batch_size!r}")
        has_schema = str(model_name).startswith(("hf-hub:", "local-dir:"))
        if not has_schema and model_name not in open_clip.list_models():
            known = open_clip.list_models()
            close = [m for m in known if str(model_name).lower() in m.lower()][:10]
            hint = f" Similar names: {close}." if close else ""
            raise ConfigError(
                f"scorer.model_name={model_name!r} is not an open_clip architecture "
                f"({len(known)} known, see open_clip.list_models(); e.g. 'ViT-B-32', '{TINY_CLIP}').{hint}"
            )
        if pretrained is not None:
            pretrained = os.fspath(pretrained)
            if _looks_like_path(pretrained) and not os.path.isfile(pretrained):
                raise DbdpoError(
                    f"scorer.pretrained: checkpoint file {pretrained!r} not found; pass a local checkpoint "
                    f"path (.safetensors preferred) or null for random weights"
                )

        try:
            with torch.random.fork_rng(devices=[]), _quiet_random_init(pretrained is None):
                torch.manual_seed(seed)
                model, _, eval_transform = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained or None, device="cpu"
                )
        except Exception as e:  # hub clients raise many types; the user needs one actionable message
            raise DbdpoError(
                f"scorer.pretrained: could not load CLIP weights {pretrained!r} for {model_name!r} "
                f"({_short(e)}). Without network access the hub cannot be reached: pass a local checkpoint "
                f"path (.safetensors preferred) as scorer.pretrained, or null for random weights"
            ) from e

        model.eval().requires_grad_(False)
        self.model = model.to(device)
        self.model_name = model_name
        self.pretrained = pretrained
        self.preprocess_mode = preprocess
        self.batch_size = batch_size
        self.eval_transform = eval_transform
        self.tokenizer = open_clip.get_tokenizer(model_name)

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1), persistent=False)
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or 77)
        self.eval()

    def train(self, mode: bool = True) -> "ClipScorer":
        # The scorer is always frozen and in eval mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- images -----------------------------------------------------------------------------------------

    def _standard(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.eval_transform(im.convert("RGB")) for im in images])

    def _paper(self, batch: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) float in [0,1] -> bicubic (no antialias) shorter side to S, centre crop, mean/std."""
        th, tw = self.image_size
        h, w = batch.shape[-2:]
        short = min(th, tw)
        # shorter side -> `short`, longer side scaled like torchvision's Resize(int)
        if h <= w:
            new_h, new_w = short, int(short * w / h)
        else:
            new_h, new_w = int(short * h / w), short
        new_h, new_w = max(new_h, th), max(new_w, tw)
        if (new_h, new_w) != (h, w):
            batch = F.interpolate(batch, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False)
        top, left = (new_h - th) // 2, (new_w - tw) // 2
        batch = batch[..., top : top + th, left : left + tw]
        return (batch - self.mean.to(batch)) / self.std.to(batch)

    def _pil_to_tensor(self, im: Image.Image, reference: bool) -> torch.Tensor:
        im = im.convert("RGB")
        if reference:
            th, tw = self.image_size
            im = im.resize((tw, th), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    @staticmethod
    def _tensor_to_pils(batch: torch.Tensor) -> list[Image.Image]:
        arr = (batch.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]

    @staticmethod
    def _as_unit_float(batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DataError(f"image tensor batch must be (N, 3, H, W), got shape {tuple(batch.shape)}")
        if batch.dtype == torch.uint8:
            return batch.float() / 255.0
        return batch.float()

    def _prepare(self, chunk: Sequence[Image.Image] | torch.Tensor, reference: bool) -> torch.Tensor:
        if isinstance(chunk, torch.Tensor):
            chunk = self._as_unit_float(chunk)
            if self.preprocess_mode == "standard" or reference:
                # exactly the PIL path (reference images in paper mode are resized with PIL)
                chunk = self._tensor_to_pils(chunk)
            else:
                return self._paper(chunk)
        if self.preprocess_mode == "standard":
            return self._standard(chunk)
        tensors = [self._pil_to_tensor(im, reference) for im in chunk]
        # images may differ in size: resize/crop each, then stack
        return torch.cat([self._paper(t.unsqueeze(0)) for t in tensors])

    def preprocess(self, images: Sequence[Image.Image] | torch.Tensor, reference: bool = False) -> torch.Tensor:
        """The model input (N, 3, S, S) for `images` under this scorer's preprocessing mode."""
        return self._prepare(images, reference)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image] | torch.Tensor, reference: bool = False) -> torch.Tensor:
        """E_img(x) / |E_img(x)| for PIL images or an (N,3,H,W) uint8 / [0,1]-float batch -> (N, D) float32 on CPU."""
        n = len(images)
        if n == 0:
            return torch.zeros(0, self.embed_dim)
        out = []
        for start in range(0, n, self.batch_size):
            x = self._prepare(images[start : start + self.batch_size], reference)
            feats = self.model.encode_image(x.to(self.device, dtype=self._dtype))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out)

    # ---- texts --------------------------------------------------------------------------------------------

    def _n_truncated(self, texts: Sequence[str], tokens: torch.Tensor) -> int:
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode) and getattr(self.tokenizer, "reduction_fn", None) is None:
            try:
                return sum(len(encode(t)) + 2 > tokens.shape[1] for t in texts)  # + start/end tokens
            except Exception:
                pass
        return int((tokens[:, -1] != 0).sum())  # fallback: context completely filled

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """E_txt(t) / |E_txt(t)| -> (N, D) float32 on CPU; texts beyond the context are truncated (warns)."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.embed_dim)
        out, truncated = [], 0
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            tokens = self.tokenizer(chunk)
            truncated += self._n_truncated(chunk, tokens)
            feats = self.model.encode_text(tokens.to(self.device))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} texts exceed the text tower's context of "
                f"{self.context_length} tokens and were truncated",
                stacklevel=2,
            )
        return torch.cat(out)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(getattr(self.model, "embed_dim", 0) or self.model.visual.output_dim)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def build_scorer(cfg: Mapping[str, Any], **overrides: Any) -> ClipScorer:
    """ClipScorer from a `scorer` config group (dict or DictConfig); `text_variant` is not a constructor key."""
    kwargs = {k: cfg[k] for k in cfg if k not in _NON_CONSTRUCTOR_KEYS}
    kwargs.update(overrides)
    unknown = sorted(set(kwargs) - set(_CONSTRUCTOR_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown scorer config keys {['scorer.' + k for k in unknown]}; "
            f"allowed: {['scorer.' + k for k in _CONSTRUCTOR_KEYS + _NON_CONSTRUCTOR_KEYS]}"
        )
    return ClipScorer(**kwargs)


# ---- similarities ---------------------------------------------------------------------------------------


def image_similarity(img_emb: torch.Tensor, concept_emb: torch.Tensor) -> torch.Tensor:
    """IS: (N,D), (C,D) unit vectors -> (N,), mean_i <img_emb, concept_emb_i>."""
    if concept_emb.ndim != 2 or concept_emb.shape[0] == 0:
        raise DataError("image similarity needs at least one concept image embedding (C, D) with C >= 1")
    if img_emb.ndim != 2 or img_emb.shape[1] != concept_emb.shape[1]:
        raise ValueError(f"embedding shapes {tuple(img_emb.shape)} and {tuple(concept_emb.shape)} do not match")
    return (img_emb @ concept_emb.to(img_emb).T).mean(dim=1)


def text_similarity(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
    """TS: (N,D), (N,D) unit vectors -> (N,), row-wise <img_emb_n, txt_emb_n>."""
    if img_emb.shape != txt_emb.shape or img_emb.ndim != 2:
        raise ValueError(f"embedding shapes {tuple(img_emb.shape)} and {tuple(txt_emb.shape)} must be equal (N, D)")
    return (img_emb * txt_emb.to(img_emb)).sum(dim=1)


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:)\]])")
_SPACES = re.compile(r"\s{2,}")


def remove_subject(prompt: str, holder: str, mode: str = "remove", class_name: str | None = None) -> str:
    """The TS text for `prompt`: the placeholder `[V*]` or the holder (e.g. `sks dog`) deleted
    (`mode="remove"`: `a sks dog in the jungle` -> `a in the jungle`) or replaced by the class word
    (`mode="class"`: -> `a dog in the jungle`; class = `class_name`, else the holder minus its first word).
    Spaces are collapsed, a space before punctuation is dropped, leading `,;:` and outer spaces stripped
    (`a photo of [V*].` -> `a photo of.`)."""
    if mode not in TEXT_VARIANTS:
        raise ConfigError(f"scorer.text_variant={mode!r} is unknown; choose one of {list(TEXT_VARIANTS)}")
    if mode == "remove":
        replacement = ""
    else:
        replacement = class_name if class_name else " ".join(holder.split()[1:])
        if not replacement:
            raise ConfigError(
                f"scorer.text_variant='class' needs a class word: holder {holder!r} has none after its "
                f"unique token; pass class_name or use scorer.text_variant=remove"
            )
    targets = [PLACEHOLDER] + ([holder.strip()] if holder and holder.strip() else [])
    pattern = "|".join(rf"(?<!\w){re.escape(t)}(?!\w)" for t in sorted(set(targets), key=len, reverse=True))
    text = re.sub(pattern, lambda _m: f" {replacement} ", prompt)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip().lstrip(",;:").strip()


def load_concept_embeddings(scorer: ClipScorer, images: Sequence[Image.Image]) -> torch.Tensor:
    """E_img(c_i) for the concept images (reference preprocessing) -> (C, D)."""
    if len(images) == 0:
        raise DataError("no concept images to embed; check the concept's image directory")
    return scorer.embed_images(images, reference=True)


def score_images(
    scorer: ClipScorer,
    images: Sequence[Image.Image] | torch.Tensor,
    prompts: Sequence[str],
    holder: str,
    concept_emb: torch.Tensor,
    text_variant: str = "remove",
    class_name: str | None = None,
) -> dict[str, np.ndarray]:
    """{"is": IS(x_n), "ts": TS(x_n)} (float32, one value per image) for images x_n generated from prompts[n]."""
    if len(images) != len(prompts):
        raise DataError(f"{len(images)} images but {len(prompts)} prompts; one prompt per image is needed")
    texts = [remove_subject(p, holder, text_variant, class_name) for p in prompts]
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    img_emb = scorer.embed_images(images)
    if len(images) == 0:
        empty = np.zeros(0, dtype=np.float32)
        return {"is": empty, "ts": empty.copy()}
    txt_emb = scorer.embed_texts(unique)[torch.tensor([index[t] for t in texts])]
    return {
        "is": image_similarity(img_emb, concept_emb).numpy().astype(np.float32),
        "ts": text_similarity(img_emb, txt_emb).numpy().astype(np.float32),
    }


def score_generation(
    scorer: ClipScorer,
    samples,
    concept_emb: torch.Tensor,
    holder: str,
    text_variant: str = "remove",
    class_name: str | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """IS and TS of every sample of a generation (a `generate.SampleSet`), one shard at a time.

    With `out_dir`, each shard's scores are written atomically to `out_dir/<shard>.json` and reused on
    restart.
    """
    from tqdm.auto import tqdm

    from .distributed import barrier, is_main, mine, world_size

    shard_of = [Path(p).parent.name for p in samples.images]
    out = {"is": np.zeros(len(samples), dtype=np.float32), "ts": np.zeros(len(samples), dtype=np.float32)}
    shards = list(dict.fromkeys(shard_of))
    caches = [Path(out_dir) / f"{shard}.json" if out_dir is not None else None for shard in shards]
    args = (scorer, samples, shard_of, concept_emb, holder, text_variant, class_name)
    if world_size() > 1:  # process r scores shards k ≡ r (mod W) into out_dir, then every process reads them all
        if out_dir is None:
            raise DbdpoError("scoring with several processes needs an out_dir for the shards' scores")
        for k in tqdm([k for k in range(len(shards)) if mine(k)], desc="score", unit="shard",
                      disable=not progress or not is_main()):
            _shard_scores(*args, shards[k], caches[k])
        barrier()
    for shard, cache in tqdm(list(zip(shards, caches)), desc="score", unit="shard",
                             disable=not progress or world_size() > 1):
        idx = [i for i, s in enumerate(shard_of) if s == shard]
        got = _shard_scores(*args, shard, cache)
        out["is"][idx] = got["is"]
        out["ts"][idx] = got["ts"]
    return out


def _shard_scores(scorer, samples, shard_of: list[str], concept_emb, holder: str, text_variant: str,
                  class_name: str | None, shard: str, cache: Path | None) -> dict:
    """One shard's IS / TS (and the texts TS compared with): read from `cache` when there, else scored and written
    to it."""
    from .io import read_json, write_json

    if cache is not None and cache.exists():
        return read_json(cache)
    idx = [i for i, s in enumerate(shard_of) if s == shard]
    sc = score_images(scorer, samples.load_images(idx), [samples.prompts[i] for i in idx], holder, concept_emb,
                      text_variant=text_variant, class_name=class_name)
    got = {"is": sc["is"].tolist(), "ts": sc["ts"].tolist(),
           "text": [remove_subject(samples.prompts[i], holder, text_variant, class_name) for i in idx]}
    if cache is not None:
        write_json(cache, got)
    return got
