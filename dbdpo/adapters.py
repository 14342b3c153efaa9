"""What personalization and DPO train in the UNet: all of it, SVDiff spectral shifts, or LoRA adapters.

SVDiff (Han et al. 2023): every Conv2d / Linear weight, flattened to W ∈ R^{c_out × c_in·k·k}, is re-written
from its SVD W = U·diag(σ)·Vᵀ as

    W(δ) = U · diag(ReLU(σ + δ)) · Vᵀ,   δ ∈ R^{rank(W)} initialised to 0 (so W(0) = W),

and only δ is trained (plus, in personalization, the 1-D weights — norm gains and biases — at a tiny lr).
LoRA: W + (α/r)·B·A on the attention projections (to_q, to_k, to_v, to_out.0), through peft.

An adapter is attached to a UNet, trained, saved (its own tensors only, safetensors), then *fused* into the
UNet's weights (generation runs on plain weights). The DPO reference of an adapted UNet is the same network with
the adapter disabled, i.e. the weights it was attached to: θ_{s−1} when a fresh adapter is attached per DPO step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError

KINDS = ("full", "svdiff", "lora")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class SpectralShift(nn.Module):
    """The parametrization W(δ) = U·diag(ReLU(σ + δ))·Vᵀ of one weight W = U·diag(σ)·Vᵀ, computed as

        W(δ) = W + U·diag(ReLU(σ + δ) − σ)·Vᵀ

    (the same function): at δ = 0 it is the stored weight exactly, and while disabled (the DPO reference) it *is*
    the stored weight — no rebuild, no reconstruction error between policy and reference.

    Amortized (`amortized = True`, set while training): W(δ) is built once per optimizer step, without autograd,
    as a leaf whose gradient G accumulates over the step's micro-batches; `project_grad()` then gives
    ∂L/∂δ_i = 1[σ_i + δ_i > 0] · u_iᵀ G v_i and drops the leaf, so the next step rebuilds with the new δ."""

    def __init__(self, weight: torch.Tensor, basis: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        if basis is None:
            w = weight.detach().float().reshape(weight.shape[0], -1)
            basis = torch.linalg.svd(w, full_matrices=False)
        u, s, vh = basis
        self.register_buffer("u", u)
        self.register_buffer("s", s)
        self.register_buffer("vh", vh)
        self.delta = nn.Parameter(torch.zeros_like(s))
        self.shape = tuple(weight.shape)
        self.enabled = True
        self.amortized = False
        self.leaf: torch.Tensor | None = None
        self.rebuilds = 0

    def _shifted(self, original: torch.Tensor) -> torch.Tensor:
        self.rebuilds += 1
        shift = F.relu(self.s + self.delta) - self.s
        return original + ((self.u * shift) @ self.vh).reshape(self.shape).to(original.dtype)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return original
        if not (self.amortized and torch.is_grad_enabled()):
            return self._shifted(original)
        if self.leaf is None:
            self.build_leaf(original)
        return self.leaf

    def build_leaf(self, original: torch.Tensor) -> None:
        """While amortized: W(δ) as this optimizer step's leaf, if not built yet."""
        if self.amortized and self.leaf is None:
            with torch.no_grad():
                self.leaf = self._shifted(original).requires_grad_(True)

    def project_grad(self, keep_leaf: bool = False) -> None:
        """Move the accumulated ∂L/∂W onto δ (adding to any gradient δ already has); drop the leaf unless
        `keep_leaf` (after each backward, so that δ holds its gradient before a GradScaler unscales and checks it)."""
        if self.leaf is not None and self.leaf.grad is not None:
            g = self.leaf.grad.reshape(self.shape[0], -1).float()
            grad = ((self.u.T @ g) * self.vh).sum(dim=1) * (self.s + self.delta > 0)
            self.delta.grad = grad.to(self.delta) if self.delta.grad is None else self.delta.grad + grad.to(self.delta)
            self.leaf.grad = None
        if not keep_leaf:
            self.leaf = None


def _one_d(unet: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The 1-D weights (norm gains, biases) outside the parametrizations."""
    return ((n, p) for n, p in unet.named_parameters() if p.ndim == 1 and "parametrizations" not in n)


def _shifted(unet: nn.Module) -> Iterator[tuple[str, SpectralShift]]:
    for name, module in unet.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, SpectralShift):
                    yield name, p


class Adapter:
    """Base: the full UNet is trainable; nothing to attach, save apart or fuse."""

    kind = "full"

    def attach(self, unet: nn.Module) -> None:
        unet.requires_grad_(True)
        if unet.dtype != torch.float32:  # the trained weights are fp32 masters whatever dtype the base was loaded in
            unet.to(torch.float32)

    def param_groups(self, unet: nn.Module, lr: float, personalize: bool) -> list[dict]:
        return [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": lr}]

    @contextlib.contextmanager
    def disabled(self, unet: nn.Module):
        raise NotImplementedError("a full fine-tune's reference is a frozen copy of the UNet")
        yield

    def state_dict(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def fuse(self, unet: nn.Module) -> None:
        pass

    def amortize(self, unet: nn.Module, on: bool) -> None:
        """Switch per-optimizer-step weight building on or off while training (SVDiff)."""

    def before_forward(self, unet: nn.Module) -> None:
        """Called before a training forward that torch.compile traces: state built per optimizer step is made
        here, outside the traced region."""

    def after_backward(self, unet: nn.Module) -> None:
        """Called after every backward pass (each micro-batch)."""

    def before_optimizer_step(self, unet: nn.Module) -> None:
        """Called after a step's gradients are accumulated, before clipping and the update."""


class SVDiff(Adapter):
    kind = "svdiff"

    def __init__(self, lr_1d: float = 1e-6):
        self.lr_1d = lr_1d

    def attach(self, unet: nn.Module) -> None:
        """Parametrize every Conv2d / Linear weight. The SVD of a weight that an earlier SVDiff stage fused (and
        nothing changed since) is not recomputed: W + U·diag(σ' − σ)·Vᵀ = U·diag(σ')·Vᵀ with σ' = ReLU(σ + δ)."""
        unet.requires_grad_(False)
        for module in list(unet.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(module, "weight"):
                basis = getattr(module, "_svdiff_basis", None)
                if basis is not None and not (basis[0] is module.weight and basis[1] == module.weight._version):
                    basis = None  # the weight changed since it was fused: decompose again
                dev = module.weight.device
                shift = SpectralShift(module.weight, tuple(b.to(dev) for b in basis[2:]) if basis is not None else None)
                parametrize.register_parametrization(module, "weight", shift, unsafe=True)
                module.parametrizations.weight.original.requires_grad_(False)
        for _, p in _shifted(unet):
            p.delta.requires_grad_(True)

    def amortize(self, unet: nn.Module, on: bool) -> None:
        """Build W(δ) once per optimizer step while training (see `SpectralShift`)."""
        for _, p in _shifted(unet):
            p.amortized, p.leaf = on, None

    def before_forward(self, unet: nn.Module) -> None:
        """This step's W(δ) leaves, built before the forward: created inside a compiled forward they would break
        its graph at every weight (measured: a break per weight and recompiles past dynamo's limit)."""
        for module in unet.modules():
            if parametrize.is_parametrized(module, "weight"):
                for p in module.parametrizations.weight:
                    if isinstance(p, SpectralShift):
                        p.build_leaf(module.parametrizations.weight.original)

    def after_backward(self, unet: nn.Module) -> None:
        for _, p in _shifted(unet):
            p.project_grad(keep_leaf=True)

    def before_optimizer_step(self, unet: nn.Module) -> None:
        for _, p in _shifted(unet):
            p.project_grad()

    def param_groups(self, unet: nn.Module, lr: float, personalize: bool) -> list[dict]:
        groups = [{"params": [p.delta for _, p in _shifted(unet)], "lr": lr}]
        if personalize and self.lr_1d > 0:  # DPO trains δ alone, so that δ = 0 is exactly its reference
            ones = [p for _, p in _one_d(unet)]
            for p in ones:
                p.requires_grad_(True)
            groups.append({"params": ones, "lr": self.lr_1d})
        return groups

    @contextlib.contextmanager
    def disabled(self, unet: nn.Module):
        shifts = [p for _, p in _shifted(unet)]
        for p in shifts:
            p.enabled = False
        try:
            yield
        finally:
            for p in shifts:
                p.enabled = True

    def state_dict(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        state = {f"{name}.delta": p.delta.detach().cpu().contiguous() for name, p in _shifted(unet)}
        state.update({f"one_d.{n}": p.detach().cpu().contiguous() for n, p in _one_d(unet)})
        return state

    def load_state_dict(self, unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
        shifts = dict(_shifted(unet))
        params = dict(unet.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("one_d."):
                    params[key[len("one_d."):]].copy_(value)
                else:
                    shifts[key[: -len(".delta")]].delta.copy_(value)

    def fuse(self, unet: nn.Module) -> None:
        unet.requires_grad_(False)
        for module in list(unet.modules()):
            if parametrize.is_parametrized(module, "weight"):
                shift = next(p for p in module.parametrizations.weight if isinstance(p, SpectralShift))
                with torch.no_grad():
                    s_new = F.relu(shift.s + shift.delta).detach()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
                # the fused weight's SVD is known: the next stage's attach reuses it
                module._svdiff_basis = (module.weight, module.weight._version, shift.u, s_new, shift.vh)


class LoRA(Adapter):
    kind = "lora"

    def __init__(self, rank: int = 4, alpha: float | None = None, targets: list[str] | None = None):
        self.rank, self.alpha, self.targets = int(rank), alpha, list(targets or LORA_TARGETS)

    def attach(self, unet: nn.Module) -> None:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, init_lora_weights="gaussian",
                                    target_modules=self.targets))

    def param_groups(self, unet: nn.Module, lr: float, personalize: bool) -> list[dict]:
        return [{"params": [p for n, p in unet.named_parameters() if "lora_" in n and p.requires_grad], "lr": lr}]

    @contextlib.contextmanager
    def disabled(self, unet: nn.Module):
        unet.disable_adapters()
        try:
            yield
        finally:
            unet.enable_adapters()

    def state_dict(self, unet: nn.Module) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}

    def load_state_dict(self, unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(unet, state)
        if getattr(result, "unexpected_keys", None):
            raise ConfigError(f"LoRA checkpoint does not fit this UNet: unexpected {result.unexpected_keys[:3]}")

    def fuse(self, unet: nn.Module) -> None:
        unet.fuse_lora()
        unet.unload_lora()
        unet.requires_grad_(False)


def make_adapter(cfg) -> Adapter:
    """The adapter a `method` config (or its `adapter` block) names."""
    a = (cfg.get("adapter") if cfg is not None else None) or {}
    kind = a.get("kind", "full")
    if kind == "full":
        return Adapter()
    if kind == "svdiff":
        return SVDiff(lr_1d=float(a.get("lr_1d", 1e-6)))
    if kind == "lora":
        return LoRA(rank=int(a.get("rank", 4)), alpha=a.get("alpha"), targets=a.get("targets"))
    raise ConfigError(f"adapter kind {kind!r} is not one of {KINDS}.")


ADAPTER_FILE = "adapter.safetensors"


def save_adapter(adapter: Adapter, unet: nn.Module, path: Path) -> None:
    """The adapter's tensors as `path/adapter.safetensors`, written to a temporary folder and renamed."""
    import os
    import shutil

    from safetensors.torch import save_file

    tmp = path.with_name(f".tmp_{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(adapter.state_dict(unet), str(tmp / ADAPTER_FILE), metadata={"kind": adapter.kind})
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_adapter_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / ADAPTER_FILE))
