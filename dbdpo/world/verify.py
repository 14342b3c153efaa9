"""`python -m dbdpo.world verify`: the paper's claims checked on the miniature world.

For each concept × seed (a *unit*): DreamBooth with its UNet saved at `db_checkpoints` steps, each checkpoint
evaluated (the baseline trade-off curve); then DPO-TS / DPO-IS / DPO-MIX for S steps from the last checkpoint,
and S=1 on the same prompts (equal generation and DPO compute), each a `train.py` run (`multistep.run`) whose
personalization is that checkpoint. Everything is judged by the evaluator CLIP and the oracle; `claims.py` turns
the numbers into verdicts. Each run is resumable and skipped when finished; the DreamBooth checkpoints and their
evaluations are shared by all variants of a unit.

Writes `results_dir/verify.json`, `verify.md` and `pareto.png`; runs live in `results_dir/runs/<concept>/seed<k>/`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..io import read_json, write_json

log = logging.getLogger(__name__)

CONF_ROOT = Path(__file__).resolve().parents[2] / "conf"


def compose_train(overrides: list[str], search_path: list[str] | None = None) -> DictConfig:
    """conf/train.yaml composed with `overrides` (inside or outside a running Hydra app)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = [f"hydra.searchpath=[{','.join(search_path)}]"] if search_path else []
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=[*extra, *overrides])
    with initialize_config_dir(config_dir=str(CONF_ROOT), version_base="1.3"):
        return compose("train", overrides=[*extra, *overrides])


def dreambooth_curve(cfg: DictConfig, steps: list[int], unit_dir: Path) -> list[tuple[int, dict]]:
    """Train DreamBooth once (`multistep.personalize` to the last of `steps`), saving the UNet at every step
    (0 = the world model itself), and evaluate each checkpoint; finished checkpoints and evaluations are
    reused."""
    from ..multistep import (SaveAndEvaluate, eval_prompts, load_unet_into, personalize, prepare, run_eval, save_unet,
                             _unet_done)

    steps = sorted(set(int(s) for s in steps))
    ck = {s: unit_dir / "db" / f"step_{s}" / "unet" for s in steps}
    evals = {s: unit_dir / "db" / f"step_{s}" / "eval" for s in steps}
    if all((evals[s] / "judge.json").exists() and (evals[s] / "eval.json").exists() for s in steps) \
            and _unet_done(ck[steps[-1]]):
        return [(s, {**read_json(evals[s] / "eval.json"), **read_json(evals[s] / "judge.json")}) for s in steps]
    from ..adapters import make_adapter

    if make_adapter(cfg.method).kind != "full":
        raise ConfigError("verify's baseline curve is DreamBooth's full fine-tune: drop the method override "
                          "(method=dreambooth) from train_overrides.")
    from .concepts import RenderedConcept

    target = cfg.concept.get("_target_")
    if target != f"{RenderedConcept.__module__}.{RenderedConcept.__qualname__}":
        raise ConfigError(f"verify needs miniature-world concepts (`_target_: dbdpo.world.concepts.RenderedConcept` "
                          f"with a `world:` block); concept {cfg.concept.name} has _target_ {target!r}.")
    u = prepare(cfg)
    if u.judge is None:
        raise ConfigError("verify needs eval.judge=true (the evaluator CLIP and the oracle).")
    bb = u.backbone
    if 0 in ck and not _unet_done(ck[0]):
        save_unet(bb.unet, ck[0])
    # Intermediate UNets are saved on the way; personalize saves the last (a rerun after a kill trains again
    # from the start, deterministically).
    cfg.method.max_steps = steps[-1]
    personalize(cfg, bb, u.concept, [], ck[steps[-1]], u.device,
                callbacks=[SaveAndEvaluate([s for s in steps[:-1] if s > 0], lambda s: save_unet(bb.unet, ck[s]),
                                           lambda s: None)])  # evaluated below, with the judge
    prompts = eval_prompts(cfg, u.concept)
    curve = []
    for s in steps:
        load_unet_into(bb.unet, ck[s])
        bb.unet.to(u.device).eval()
        curve.append((s, run_eval(cfg, bb, u.scorer, u.concept, u.concept_emb, prompts, evals[s],
                                  f"dreambooth step {s}", u.judge)))
    return curve


def run_variant(cfg: DictConfig, start: Path, variant_dir: Path) -> dict:
    """`multistep.run` with the personalization replaced by the DreamBooth checkpoint at `start`."""
    from ..multistep import run

    metrics_file = variant_dir / "metrics.json"
    expected = {"personalize", *(f"step_{s}" for s in range(1, int(cfg.steps) + 1))}
    if metrics_file.exists() and set(read_json(metrics_file).get("stages", {})) >= expected:
        return read_json(metrics_file)
    ckpt = variant_dir / "checkpoints" / "personalize"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(start / "unet", ckpt)
    ev = variant_dir / "personalize" / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    for name in ("eval.json", "judge.json", "grid.png"):
        if (start / "eval" / name).exists() and not (ev / name).exists():
            shutil.copy2(start / "eval" / name, ev / name)
    return run(cfg)


def unit_eval_seed(concept: str, seed: int) -> int:
    """`eval_noise=per_unit`: the unit's evaluation seed, crc32(concept, seed), distinct per unit and fixed."""
    import zlib

    return zlib.crc32(f"{concept}\x1f{seed}".encode())


def unit_overrides(vcfg: DictConfig, concept: str, seed: int) -> list[str]:
    """The train overrides every run of a unit shares. The evaluation noise is seeded by (prompt, sample index,
    `eval.seed`) and world concepts share their evaluation prompts: with `eval_noise=shared` every unit's checks
    draw the same noises, with `per_unit` each unit its own (start and final of a unit always share theirs, so a
    Δ compares the same noises)."""
    base = [f"concept=world/{concept}", f"seed={seed}", *list(vcfg.train_overrides)]
    if str(vcfg.get("eval_noise", "shared")) == "per_unit":
        base.append(f"eval.seed={unit_eval_seed(concept, seed)}")
    return base


def run_unit(vcfg: DictConfig, concept: str, seed: int, search_path: list[str] | None) -> dict:
    base = unit_overrides(vcfg, concept, seed)
    unit_dir = Path(vcfg.results_dir) / "runs" / concept / f"seed{seed}"
    db_cfg = compose_train([*base, f"paths.output_dir={unit_dir / 'db'}"], search_path)
    curve = dreambooth_curve(db_cfg, list(vcfg.db_checkpoints), unit_dir)
    start = unit_dir / "db" / f"step_{max(int(s) for s in vcfg.db_checkpoints)}"
    S = int(vcfg.steps)
    variants: dict[str, Any] = {}
    plan = [(v, S) for v in vcfg.variants] + ([(v, 1) for v in vcfg.variants] if vcfg.equal_compute_s1 else [])
    for v, s in plan:
        name = f"{v}_s{s}"
        vdir = unit_dir / name
        # S=1 gets the same prompt pool as the S-step run, all of it in one step: equal samples, pairs, DPO epochs
        # Variants start from one checkpoint with one prompt pool: their first-step samples are the same images,
        # generated once through the unit's sample cache. Only the last step is evaluated (the claims' figures).
        cfg = compose_train([*base, f"filter={v}", f"steps={s}", f"paths.output_dir={vdir}",
                             f"generate.cache_dir={unit_dir / 'sample_cache'}", "eval.every_step=false"], search_path)
        metrics = run_variant(cfg, start, vdir)
        stages = metrics["stages"]
        variants[name] = {"start": stages["personalize"], "final": stages[f"step_{s}"], "stages": stages}
    return {"concept": concept, "seed": seed, "db": [[s, m] for s, m in curve], "variants": variants}


def _unit_job(vcfg, concept: str, seed: int, search_path: list[str] | None) -> dict:
    """Run one unit and write its `unit.json` (in a worker process `vcfg` arrives as a plain dict)."""
    vcfg = OmegaConf.create(vcfg) if isinstance(vcfg, dict) else vcfg
    unit = run_unit(vcfg, concept, seed, search_path)
    write_json(Path(vcfg.results_dir) / "runs" / concept / f"seed{seed}" / "unit.json", unit)
    return unit


def write_report(results: dict, out_dir: Path) -> None:
    claims = results["claims"]
    s1 = " (and S = 1 at equal compute)" if results["settings"].get("equal_compute_s1", True) else ""
    lines = ["# Miniature-world verification of the DreamBoothDPO claims", "",
             *([] if results.get("complete", True) else
               [f"**Partial: {len(results['units'])} of {len(results['concepts']) * len(results['seeds'])} runs "
                "finished; rerun the same command to continue.**", ""]),
             f"{len(results['units'])} runs: concepts {', '.join(results['concepts'])} × seeds "
             f"{results['seeds']}; DreamBooth checkpoints {results['settings']['db_checkpoints']}; DPO S = "
             f"{results['settings']['steps']}{s1}. Judged by the evaluator CLIP (IS / TS) "
             "and the oracle (identity / prompt-following). Figures: mean ± σ over concepts × seeds.", "",
             "| claim | figure (evaluator) | holds | support | figure (oracle) | oracle: holds | support | oracle agrees |",
             "|---|---|---|---|---|---|---|---|"]

    def sup(x):
        return "–" if x is None else f"{x:.2f}"

    for name, c in claims.items():
        o = c.get("oracle")
        lines.append(f"| {name.split('_', 1)[0]}. {c['claim']} | {c['figure']} | {'holds' if c['holds'] else 'does not hold'} "
                     f"| {sup(c.get('support'))} | {o['figure'] if o else '–'} "
                     f"| {('holds' if o['holds'] else 'does not hold') if o else '–'} | {sup(o.get('support')) if o else '–'} "
                     f"| {('yes' if o['holds'] == c['holds'] else 'no') if o else '–'} |")
    lines += ["", "*support*: the fraction of 2,000 cluster-bootstrap resamples (concepts drawn with replacement, each "
              "with all its seeds) in which the claim holds; near 1 the verdict \"holds\" is robust to which concepts "
              "were run, near 0 \"does not hold\" is, in between the data cannot settle it."]
    if str(results["settings"].get("eval_noise", "shared")) == "shared":
        lines[-1] += (" Every run's evaluation draws the same noises (`eval_noise=shared`), so the support does not "
                      "count the evaluation's own sampling noise: `experiments/eval_noise.py` measures it.")
    lines += ["", "## Per run (Δ = final − start checkpoint)", "",
              "| concept | seed | variant | ΔIS (evaluator) | ΔTS (evaluator) | Δidentity (oracle) | Δprompt (oracle) |",
              "|---|---|---|---|---|---|---|"]
    for u in results["units"]:
        for name, v in u["variants"].items():
            d = {k: v["final"][k]["mean"] - v["start"][k]["mean"] for k in
                 ("eval/evaluator_is", "eval/evaluator_ts", "eval/oracle_identity", "eval/oracle_prompt")}
            lines.append(f"| {u['concept']} | {u['seed']} | {name} | {d['eval/evaluator_is']:+.4f} | "
                         f"{d['eval/evaluator_ts']:+.4f} | {d['eval/oracle_identity']:+.4f} | "
                         f"{d['eval/oracle_prompt']:+.4f} |")
    lines += ["", "![Pareto](pareto.png)", ""]
    if results.get("notes"):
        lines += ["## Notes", "", results["notes"], ""]
    (out_dir / "verify.md").write_text("\n".join(lines))


def plot_pareto(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .claims import pareto_frontier

    concepts = [c for c in results["concepts"] if any(u["concept"] == c for u in results["units"])]
    fig, axes = plt.subplots(1, len(concepts), figsize=(4.2 * len(concepts), 3.8), squeeze=False)
    colours = {"ts": "tab:blue", "is": "tab:red", "mix": "tab:purple"}
    for ax, c in zip(axes[0], concepts):
        units = [u for u in results["units"] if u["concept"] == c]
        pts = np.array([[[m["eval/evaluator_is"]["mean"], m["eval/evaluator_ts"]["mean"]] for _, m in u["db"]]
                        for u in units]).mean(0)
        ax.plot(pts[:, 0], pts[:, 1], "o-", color="grey", label="DreamBooth steps")
        for (s, _), p in zip(units[0]["db"], pts):
            ax.annotate(str(s), p, fontsize=7)
        front = pareto_frontier(pts)
        ax.plot(front[:, 0], front[:, 1], "--", color="black", lw=0.8, label="frontier")
        for name in units[0]["variants"]:
            v, s = name.split("_s")
            p = np.mean([[u["variants"][name]["final"]["eval/evaluator_is"]["mean"],
                          u["variants"][name]["final"]["eval/evaluator_ts"]["mean"]] for u in units], 0)
            ax.scatter(*p, color=colours.get(v, "green"), marker="*" if s != "1" else "x", s=90 if s != "1" else 40,
                       label=f"DPO-{v.upper()} S={s}", zorder=3)
        ax.set_title(c)
        ax.set_xlabel("IS (evaluator)")
        ax.set_ylabel("TS (evaluator)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    from ..io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def verify(vcfg: DictConfig, search_path: list[str] | None = None) -> dict:
    from ..schema import check_verify_config
    from .claims import all_claims
    from .concepts import shipped_concepts

    check_verify_config(vcfg)
    if vcfg.get("threads"):
        torch.set_num_threads(int(vcfg.threads))
    concepts = list(vcfg.concepts) if vcfg.get("concepts") else shipped_concepts()
    seeds = [int(s) for s in vcfg.seeds]
    if not concepts or not seeds:
        raise ConfigError("verify needs at least one concept and one seed.")
    if not list(vcfg.db_checkpoints) or any(int(s) < 0 for s in vcfg.db_checkpoints):
        raise ConfigError("db_checkpoints must list DreamBooth steps ≥ 0.")
    out_dir = Path(vcfg.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    plan = [(c, seed) for seed in seeds for c in concepts]  # seed-major: an interrupted run covers every concept
    unit_file = {(c, seed): out_dir / "runs" / c / f"seed{seed}" / "unit.json" for c, seed in plan}
    done = {key: read_json(f) for key, f in unit_file.items() if f.exists()}
    results: dict[str, Any] = {}

    def report() -> None:  # the report so far ("complete": false until every unit is done)
        nonlocal results
        units = [done[key] for key in plan if key in done]
        results = {"claims": all_claims(units), "complete": len(units) == len(plan), "concepts": concepts,
                   "seeds": seeds, "settings": OmegaConf.to_container(vcfg, resolve=True), "units": units,
                   "notes": notes}
        write_json(out_dir / "verify.json", results)
        plot_pareto(results, out_dir / "pareto.png")
        write_report(results, out_dir)

    # the report's Notes: `notes=...`, else results_dir/notes.md (what was tried, what the settings rest on)
    notes = vcfg.get("notes") or ((out_dir / "notes.md").read_text().strip() if (out_dir / "notes.md").exists()
                                  else None)
    todo = [key for key in plan if key not in done]
    workers = max(1, min(int(vcfg.get("workers") or 1), len(todo)))
    bar = tqdm(total=len(plan), initial=len(done), desc="verify units", disable=not vcfg.progress)
    if not todo:
        report()
    elif workers == 1:
        for c, seed in todo:
            done[c, seed] = _unit_job(vcfg, c, seed, search_path)
            bar.update()
            report()
    else:
        # Units are independent: a pool of processes (spawned, so each starts clean) runs them side by side
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        plain = OmegaConf.to_container(vcfg, resolve=True)
        threads = int(vcfg.threads) if vcfg.get("threads") else 1
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_unit_job, plain, c, seed, search_path): (c, seed) for c, seed in todo}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.update()
                report()
    bar.close()
    for name, c in results["claims"].items():
        print(f"{name}: {c['figure']}  {'holds' if c['holds'] else 'does not hold'}")
    return results
