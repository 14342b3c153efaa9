"""`python -m dbdpo.bench_gpu`: every GPU measurement in one script (< 8 minutes on an H100/H200).

Full-size SD2-base (512 px, 50 PNDM steps, CFG 7.5) and SDXL-base (1024 px, 50 Euler steps, CFG 5) built from
their published configs with random weights (speed does not depend on weight values), bf16, SDPA:

- the bf16 matmul rate of this GPU, measured here (a large GEMM): the roofline R in FLOP/s;
- generation through `dbdpo.generate` (latents, VAE decode, PNGs): img/s, beside the original's 2.8 img/s, and
  the fraction of the roofline  f = (UNet FLOPs per image · img/s) / R, UNet FLOPs from torch's flop counter
  (one forward of the CFG batch × the sampler's UNet calls: 51 for 50 PNDM steps); the same with generate=fast
  (DPM-Solver++, 20 steps); the UNet alone, called as generation calls it (what the rest of the loop costs), and
  the host-GPU synchronizations of one batch (torch's sync debug mode); and
  where generation's time goes (text encoding, UNet, VAE decode, PNG writing); each attention kernel alone on
  the UNet's largest self-attention (FLOP/s beside the roofline);
- DPO micro-batches of the full-UNet fine-tune (fp32 masters under bf16 autocast, bf16 reference, gradient
  checkpointing for SDXL) at two sizes, and an AdamW step: pairs/s and its fraction of the roofline (forward +
  backward + reference FLOPs from the flop counter);
- the main setup's time per concept from these rates: 1000 prompts × 10 images, 500 DPO steps of 256 pairs
  (with the backbone's sampler and with generate=fast).

`experiments/bench_gpu.sh` runs every measurement in one call of a lent GPU machine.

Options: `--compile` (torch.compile of the UNet and the VAE's decoder in generation, of the UNets in the DPO step:
`backbone.compile` and `backbone.compile_training`, as training runs them; `--compile-mode`, `--compile-options
NAME=VALUE ...` as `backbone.compile_mode` and `backbone.compile_options`), `--channels-last`, `--sdpa-backend
cudnn` (as `backbone.sdpa_backend`), `--models sd2-base`,
`--batch N` (generation's), `--micros M ...` (the DPO micro-batches), `--generation-only`. `--tiny` runs the same
code on the tiny backbone on the CPU in seconds (the test suite does, so the script cannot rot). Results: a table,
and `results/bench/gpu_<date>_<device>[_compile][_channels-last]....json`, written after each measurement
(`"partial": true` until a model is done: a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

ORIGINAL_IMG_S = 2.8  # the original implementation on one H100 (≈ 2.5 h per concept)
# batch: generation's batch; shards: generation is timed over this many shards of one batch each (a shard's PNGs
# and files are finished while the next one samples, so one shard alone would time what a run overlaps);
# micros: the DPO micro-batches (pairs) timed; the fastest sets the main setup's DPO time
# attention: (heads, tokens, head dim) of the UNet's largest self-attention (SD2: 64×64 latents at 320 channels;
# SDXL: 64×64 at 640), timed alone with each of scaled_dot_product_attention's kernels
SETTINGS = {"sd2-base": {"kind": "sd", "resolution": 512, "steps": 50, "guidance": 7.5, "batch": 16,
                         "shards": 3, "micros": [8, 16], "fast_steps": 20, "attention": [5, 4096, 64]},
            "sdxl-base": {"kind": "sdxl", "resolution": 1024, "steps": 50, "guidance": 5.0, "batch": 8,
                          "shards": 2, "micros": [2, 4], "fast_steps": 20, "attention": [10, 4096, 64]}}
TINY = {"tiny": {"kind": "sd", "resolution": 32, "steps": 5, "guidance": 3.0, "batch": 4,
                 "shards": 2, "micros": [2, 4], "fast_steps": 2, "attention": [2, 256, 16]}}
MAIN_SETUP = {"images": 1000 * 10, "dpo_pairs": 500 * 256}


def timed(fn, device, repeat: int = 3) -> float:
    from .bench import _time

    return _time(fn, repeat, device)


def first_and_best(fn, device, repeat: int = 2) -> tuple[float, float]:
    """Seconds of the first call (with torch.compile: its compilation) and the best of `repeat` calls after it."""
    from .bench import _sync

    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return first, best


def attention_rates(rows: int, heads: int, tokens: int, head_dim: int, device, dtype, rate: float) -> dict:
    """Each of scaled_dot_product_attention's kernels alone (`backbone.sdpa_backend`'s names), forced, on
    self-attention of `rows` × `heads` × `tokens` × `head_dim` laid out as diffusers' processor passes it
    (transposed views): FLOP/s of its 4·B·H·N²·d FLOPs and their fraction of the roofline `rate`; a kernel that
    cannot run here gives the reason."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .backbones import SDPA_BACKENDS

    q, k, v = (torch.randn(rows, tokens, heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
               for _ in range(3))
    flops = 4 * rows * heads * tokens ** 2 * head_dim
    out: dict = {"shape": [rows, heads, tokens, head_dim], "tflop": flops / 1e12}
    for name, member in SDPA_BACKENDS.items():
        try:
            with sdpa_kernel(getattr(SDPBackend, member)), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sec = timed(lambda: F.scaled_dot_product_attention(q, k, v), device, repeat=5)
            out[name] = {"tflop_s": flops / sec / 1e12, "roofline_fraction": flops / sec / rate}
        except RuntimeError as e:
            out[name] = {"unavailable": " ".join(str(e).split())[:160]}
    return out


def count_syncs(fn, device) -> int | None:
    """How many times `fn()` made the host wait for the GPU (torch's CUDA sync debug mode warns once per
    synchronizing operation: `.item()`, a tensor used as a Python bool, a blocking copy); None off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in said)


def backbone_for(model: str, s: dict, device, dtype):
    from .backbones import BACKBONES, build_backbone

    if model == "tiny":
        bb = build_backbone({"name": "tiny", "resolution": s["resolution"], "num_inference_steps": s["steps"],
                             "guidance_scale": s["guidance"]})
        return bb.to(device)
    from .full_size import make_pipeline

    pipe = make_pipeline(model, dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    return BACKBONES[s["kind"]](name=model, kind=s["kind"], pipe=pipe, resolution=s["resolution"],
                                num_inference_steps=s["steps"], guidance_scale=s["guidance"])


def generation_parts(bb, b: int, unet_calls: int, device) -> dict[str, float]:
    """`bench.generation_breakdown` on the batch `generate` uses here, and PNG writing as `generate` does it: on its
    pool of threads, off the GPU's path."""
    import concurrent.futures as cf

    from .bench import _time, generation_breakdown
    from .generate import PNG_WRITERS

    out, images = generation_breakdown(bb, [f"a photo of sks dog number {i}" for i in range(b)], 2, device,
                                       unet_calls)
    with tempfile.TemporaryDirectory() as d, cf.ThreadPoolExecutor(PNG_WRITERS) as ex:
        out[f"PNG writing, {PNG_WRITERS} threads (off the GPU's path in generate)"] = _time(
            lambda: list(ex.map(lambda a: a[1].save(Path(d) / f"{a[0]}.png"), enumerate(images))), 2) / b
    return out


def bench_model(model: str, s: dict, device, dtype, compile_unet: bool, channels_last: bool, rate: float,
                dpo: bool = True, parts: bool = True, micros: list[int] | None = None,
                compile_backend: str = "inductor", compile_mode: str | None = None, save=None,
                generation_only: bool = False, compile_options: dict | None = None,
                sdpa_backend: str | None = None) -> dict:
    """Generation (default sampler and generate=fast) and the DPO step of one model; rates, fractions of the
    roofline `rate`, per-part seconds, and the main setup's minutes per concept from them. `save(out)` is called
    after each measurement with what is known so far (a run cut short by a time limit keeps it)."""
    import copy
    import shutil

    from .bench import count_flops
    from .dpo import DiffusionDPOModule
    from .generate import generate

    out: dict = {"model": model, **s}
    t_start = time.perf_counter()

    def done(what: str) -> None:
        print(f"  {model}: {what} ({time.perf_counter() - t_start:.0f} s)", flush=True)
        if save is not None:
            save(out)

    bb = backbone_for(model, s, device, dtype)
    bb.sdpa_backend = sdpa_backend  # attention's kernel tried first (`backbone.sdpa_backend`)
    unet = bb.unet
    if channels_last:  # as backbone.channels_last=true does
        unet.to(memory_format=torch.channels_last)

    # UNet FLOPs per image: one forward of the CFG batch (2 rows per image) × the sampler's UNet calls
    b = s["batch"]
    texts = [f"a photo of sks dog number {i}" for i in range(b)]
    cond = bb.with_sizes(bb.encode_prompts(texts[:1]))
    x = torch.randn(2, *bb.latent_shape, device=device, dtype=unet.dtype)
    c2 = type(cond).cat([cond, cond]).to(device)
    t = torch.full((2,), 500, device=device)
    with torch.no_grad():
        flops_fwd = count_flops(lambda: unet(x, t, **c2.to(dtype=unet.dtype).unet_kwargs(), return_dict=False))
    sched = bb.pipe.scheduler
    sched.set_timesteps(s["steps"])
    calls = len(sched.timesteps)  # PNDM: 51 UNet calls for 50 steps
    out["unet_calls_per_image"] = calls
    out["unet_tflop_per_image"] = flops_fwd * calls / 1e12  # one image = the 2 CFG rows
    done("built, UNet FLOPs counted")
    out["attention"] = attention_rates(2 * b, *s["attention"], device, dtype, rate)
    done("attention kernels: " + ", ".join(
        f"{k} {v['tflop_s']:.3g} TFLOP/s ({100 * v['roofline_fraction']:.0f} % of R)" if "tflop_s" in v
        else f"{k} unavailable"
        for k, v in out["attention"].items() if isinstance(v, dict)))
    bb.compile = compile_unet  # generation compiles as training does (`backbone.compile`)
    bb.compile_backend, bb.compile_mode, bb.compile_options = compile_backend, compile_mode, compile_options

    n = b * s.get("shards", 1)
    prompts = [f"a photo of [V*] number {i}" for i in range(n)]
    fast_steps = s.get("fast_steps", 20)
    with tempfile.TemporaryDirectory() as d:
        def gen(**kw):
            def go():
                shutil.rmtree(Path(d) / "s", ignore_errors=True)
                generate(bb, prompts, "sks dog", Path(d) / "s", 1, seed=0, batch_size=b, prompts_per_shard=b,
                         progress=False, **kw)
            return go

        first, sec = first_and_best(gen(), device)
        sec = sec / n * b  # seconds per batch
        out["generation_first_call_s"] = first  # with --compile: the sampling UNet's compilation
        out["generation_img_s"] = b / sec
        out["generation_vs_original"] = out["generation_img_s"] / ORIGINAL_IMG_S
        out["generation_roofline_fraction"] = out["unet_tflop_per_image"] * 1e12 * out["generation_img_s"] / rate
        done(f"generation {out['generation_img_s']:.2f} img/s")
        # the UNet alone, called as generation calls it (its compiled graph): what the rest of the loop costs
        from .bench import unet_alone

        unet_s = unet_alone(bb, texts, 3, device, calls)
        out["unet_alone_img_s"] = 1 / unet_s
        out["unet_alone_roofline_fraction"] = out["unet_tflop_per_image"] * 1e12 / unet_s / rate
        done(f"the UNet alone {1 / unet_s:.2f} img/s, {100 * out['unet_alone_roofline_fraction']:.0f} % of R")
        # where the loop makes the host wait for the GPU (each wait leaves the GPU idle until the next launch)
        from .generate import _generate_batch

        try:  # a diagnostic: it must not cost the variant its other measurements
            out["generation_syncs_per_batch"] = count_syncs(lambda: bb.decode(_generate_batch(
                bb, texts, list(range(b)), bb.guidance_scale, bb.num_inference_steps)), device)
        except Exception as e:  # noqa: BLE001
            out["generation_syncs_per_batch"] = None
            out["generation_syncs_error"] = " ".join(str(e).split())[:200]
        if out["generation_syncs_per_batch"] is not None:
            done(f"{out['generation_syncs_per_batch']} host-GPU synchronizations per batch of {b} "
                 f"({calls} UNet calls)")
        if not generation_only:
            sec_fast = timed(gen(sampler="DPMSolverMultistepScheduler", num_inference_steps=fast_steps), device,
                             repeat=2) / n * b
    if generation_only:
        return out
    out["generation_fast_img_s"] = b / sec_fast
    out["generation_fast_steps"] = fast_steps
    out["generation_fast_speedup"] = sec / sec_fast
    out["generation_fast_roofline_fraction"] = (flops_fwd * fast_steps * out["generation_fast_img_s"] / rate)
    done(f"generate=fast {out['generation_fast_img_s']:.2f} img/s")
    if parts:
        out["generation_parts_s_per_image"] = generation_parts(bb, b, calls, device)
        done("generation's parts")
    if not dpo:
        return out
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # DPO: full-UNet fine-tune, fp32 masters under bf16 autocast, reference in bf16
    unet.to(torch.float32).requires_grad_(True)
    if model == "sdxl-base":
        unet.enable_gradient_checkpointing()
    ref = copy.deepcopy(unet).requires_grad_(False).to(dtype)
    module = DiffusionDPOModule(bb, ref_unet=ref, beta=5000.0).to(device)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-8)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(
        device.type, enabled=False)

    last = {}

    def step_of(m: int):
        batch = {"latents_w": torch.randn(m, *bb.latent_shape, device=device),
                 "latents_l": torch.randn(m, *bb.latent_shape, device=device),
                 "prompt": [texts[i % b] for i in range(m)]}

        def micro():
            with autocast, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = module.training_step(batch, 0)
            module.backward(loss)  # as Lightning calls it (with sdpa_backend: checkpointing's recomputation too)
            last["loss"] = loss.detach()
        return micro

    micros = micros or s["micros"]
    flops = {m: count_flops(step_of(m)) for m in micros}  # on the eager modules
    unet.zero_grad(set_to_none=True)
    bb.compile_training = compile_unet  # the DPO step compiles as training does (`backbone.compile_training`)
    out["dpo"] = []
    for m in micros:
        micro = step_of(m)
        # the first call: torch.compile's compilation, when compiling
        first, sec = first_and_best(lambda: (micro(), unet.zero_grad(set_to_none=True)), device)
        # policy = reference (no update yet), so the loss is ln 2 but for the two forwards' rounding (bf16)
        out["dpo"].append({"micro": m, "pairs_s": m / sec, "tflop_per_pair": flops[m] / m / 1e12,
                           "roofline_fraction": flops[m] / sec / rate, "first_call_s": first,
                           "step0_loss_minus_ln2": last["loss"].item() - math.log(2)})
        done(f"DPO micro-batch {m}: {m / sec:.1f} pairs/s, first call {first:.0f} s")
    micro()
    sec_opt = timed(opt.step, device, repeat=2)
    best = max(out["dpo"], key=lambda r: r["pairs_s"])
    out["dpo_micro"] = best["micro"]
    out["dpo_pairs_s"] = best["pairs_s"]
    out["dpo_tflop_per_pair"] = best["tflop_per_pair"]
    out["dpo_roofline_fraction"] = best["roofline_fraction"]
    out["adamw_step_s"] = sec_opt
    if device.type == "cuda":
        out["dpo_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
    steps_per_dpo_step = MAIN_SETUP["dpo_pairs"] // 500
    dpo_min = (MAIN_SETUP["dpo_pairs"] / out["dpo_pairs_s"] + 500 * sec_opt) / 60
    out["main_setup_min"] = MAIN_SETUP["images"] / out["generation_img_s"] / 60 + dpo_min
    out["main_setup_fast_min"] = MAIN_SETUP["images"] / out["generation_fast_img_s"] / 60 + dpo_min
    out["main_setup_note"] = (f"1000 prompts × 10 images + 500 DPO steps × {steps_per_dpo_step} pairs "
                              "(+ 500 AdamW steps), from the rates above (the DPO micro-batch that ran fastest); "
                              "_fast_: the samples with generate=fast; personalization and evaluation not counted")
    return out


def run(models: list[str] | None = None, tiny: bool = False, compile_unet: bool = False,
        channels_last: bool = False, out_dir: str | None = "results/bench", check: bool = False,
        micros: list[int] | None = None, compile_backend: str = "inductor", compile_mode: str | None = None,
        batch: int | None = None, generation_only: bool = False, compile_options: dict | None = None,
        sdpa_backend: str | None = None) -> dict:
    """`check`: the full-size models on the CPU at 64 px, 2 steps, one image (fp32; SDXL without its DPO step,
    which needs ~50 GB): the GPU run's code path, not its speed."""
    from .bench import environment, matmul_rate

    device = torch.device("cpu" if tiny or check else "cuda")
    dtype = torch.float32 if tiny or check else torch.bfloat16
    settings = TINY if tiny else {k: v for k, v in SETTINGS.items() if not models or k in models}
    if check:
        settings = {k: {**v, "resolution": 64, "steps": 2, "batch": 1, "shards": 1, "micros": [1], "fast_steps": 2}
                    for k, v in settings.items()}
    if batch:
        settings = {k: {**v, "batch": batch} for k, v in settings.items()}
    rate = matmul_rate(device, 256 if tiny or check else 8192)
    result = {"environment": environment(device), "matmul_tflop_s": rate / 1e12, "compile": compile_unet,
              "generation_only": generation_only,
              "compile_backend": compile_backend, "compile_mode": compile_mode, "compile_options": compile_options,
              "sdpa_backend": sdpa_backend,
              "channels_last": channels_last, "models": []}
    print(f"{result['environment']}\nmatmul ({dtype}): {rate / 1e12:.1f} TFLOP/s")

    def write(models_so_far: list[dict]) -> Path:
        """The JSON with the models measured so far (a run cut short keeps what it measured)."""
        from .io import write_json

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        name = "tiny_cpu" if tiny else "check_cpu" if check else torch.cuda.get_device_name(device).replace(" ", "_")
        name += ("_compile" * compile_unet + (f"_{compile_mode}" if compile_unet and compile_mode else "")
                 + ("_" + "_".join(f"{k}-{v}" for k, v in compile_options.items())
                    if compile_unet and compile_options else "")
                 + "_channels-last" * channels_last + (f"_sdpa-{sdpa_backend}" if sdpa_backend else "")
                 + (f"_batch{batch}" if batch else "")
                 + "_generation" * generation_only)
        return write_json(Path(out_dir) / f"gpu_{result['environment']['date']}_{name}.json",
                          {**result, "models": models_so_far})
    for model, s in settings.items():
        def save(partial: dict, before: list = list(result["models"])) -> None:  # the models finished before
            if out_dir:
                write(before + [{**partial, "partial": True}])

        r = bench_model(model, s, device, dtype, compile_unet, channels_last, rate,
                        dpo=not (check and model == "sdxl-base"), micros=micros,
                        compile_backend=compile_backend, compile_mode=compile_mode, save=save,
                        generation_only=generation_only, compile_options=compile_options,
                        sdpa_backend=sdpa_backend)
        if device.type == "cuda":  # the next model starts on a free GPU
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        result["models"].append(r)
        line = (f"{model}: generation {r['generation_img_s']:.2f} img/s ({r['generation_vs_original']:.2f}× the "
                f"original's {ORIGINAL_IMG_S}), {100 * r['generation_roofline_fraction']:.0f} % of the roofline "
                f"(the UNet alone: {100 * r['unet_alone_roofline_fraction']:.0f} %)")
        if "generation_fast_img_s" in r:
            line += f"; generate=fast {r['generation_fast_img_s']:.2f} img/s ({r['generation_fast_speedup']:.2f}×)"
        if "dpo_pairs_s" in r:
            line += "; DPO " + ", ".join(f"micro {d['micro']}: {d['pairs_s']:.1f} pairs/s "
                                         f"({100 * d['roofline_fraction']:.0f} % of the roofline, first call "
                                         f"{d['first_call_s']:.0f} s, step-0 loss − ln 2 = "
                                         f"{d['step0_loss_minus_ln2']:.1e})" for d in r["dpo"])
            line += (f"; main setup ≈ {r['main_setup_min']:.0f} min per concept "
                     f"({r['main_setup_fast_min']:.0f} with generate=fast)")
        print(line)
        for part, sec in r.get("generation_parts_s_per_image", {}).items():
            print(f"    {part}: {1000 * sec:.1f} ms per image")
        if out_dir:
            print(f"written: {write(result['models'])}")
    return result


def main(argv: list[str] | None = None) -> None:
    from .backbones import SDPA_BACKENDS

    ap = argparse.ArgumentParser(prog="python -m dbdpo.bench_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", choices=list(SETTINGS), default=None)
    ap.add_argument("--tiny", action="store_true", help="the tiny backbone on the CPU (a smoke run)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (with --compile)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile's mode (with --compile)")
    ap.add_argument("--compile-options", nargs="*", default=[], metavar="NAME=VALUE",
                    help="inductor options over the mode's (with --compile), as backbone.compile_options: "
                         "e.g. coordinate_descent_tuning=true conv_1x1_as_mm=true")
    ap.add_argument("--sdpa-backend", default=None, choices=list(SDPA_BACKENDS),
                    help="attention's kernel tried first, as backbone.sdpa_backend (default: torch's own order)")
    ap.add_argument("--micros", nargs="*", type=int, default=None,
                    help="the DPO micro-batches (pairs) to time, instead of the model's own")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--batch", type=int, default=None, help="generation's batch, instead of the model's own")
    ap.add_argument("--generation-only", action="store_true",
                    help="generation with the model's sampler only (no generate=fast, parts or DPO step)")
    ap.add_argument("--check", action="store_true", help="full-size models on the CPU at 64 px: the code path")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    if not args.tiny and not args.check and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device is visible; python -m dbdpo.bench_gpu --tiny runs on the CPU")
    options = parse_options(args.compile_options, ap)
    if args.compile:
        from .backbones import compile_unavailable

        reason = compile_unavailable(torch.device("cpu" if args.tiny or args.check else "cuda"), args.compile_backend)
        if reason:
            warnings.warn(f"--compile: torch.compile is unavailable here ({reason}); measuring without it")
            args.compile = False
    run(args.models, args.tiny, args.compile, args.channels_last, args.out or None, args.check, args.micros,
        args.compile_backend, args.compile_mode, args.batch, args.generation_only, options, args.sdpa_backend)


def parse_options(items: list[str], ap: argparse.ArgumentParser) -> dict | None:
    """`NAME=VALUE` pairs (values read as YAML: true, 3, 0.5, text) checked as `backbone.compile_options` is."""
    import yaml

    from .backbones import inductor_options

    options = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            ap.error(f"--compile-options: '{item}' is not NAME=VALUE")
        options[name] = yaml.safe_load(value)
    why = inductor_options(options) if options else None
    if why:
        ap.error(f"--compile-options: must be {why}")
    return options or None


if __name__ == "__main__":
    main()
