"""Long runs: a stage killed after a mid-stage checkpoint continues from it, ends byte-identical to an
uninterrupted stage and does not redo the steps before the checkpoint; W processes (gloo on the CPU) make the
shards, scores and pairs of one process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from dbdpo.checkpointing import ResumableLoader, newest_checkpoint, partial_dir

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


# ---- the loader ---------------------------------------------------------------------------------------------

def _epochs(loader, n_epochs: int, stop_at: tuple[int, int] | None = None):
    """Iterate as Lightning does (len(loader) batches per epoch, never past the end); with `stop_at=(e, b)`,
    return the loader's state after batch b of epoch e instead."""
    seen = []
    for e in range(n_epochs):
        it = iter(loader)
        for b in range(len(loader)):
            seen.append(next(it).tolist())
            if stop_at == (e, b):
                return seen, loader.state_dict()
    return seen, None


@pytest.mark.parametrize("n, bs", [(10, 3), (12, 4)])  # a partial last batch, and none
def test_resumable_loader_keeps_the_plain_order_and_resumes_at_every_batch(n, bs):
    data = torch.arange(n)

    def make(cls):
        return cls(data, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(7))

    plain, _ = _epochs(make(torch.utils.data.DataLoader), 3)
    ours, _ = _epochs(make(ResumableLoader), 3)
    assert ours == plain  # a default run is unchanged by the resumable loader
    per_epoch = len(make(ResumableLoader))
    for e in range(3):
        for b in range(per_epoch):
            head, state = _epochs(make(ResumableLoader), 3, stop_at=(e, b))
            state = torch.load(_roundtrip(state), weights_only=True)  # what a checkpoint holds
            fresh = make(ResumableLoader)
            fresh.load_state_dict(state)
            rest = []
            done_in_epoch = b + 1
            for k in range(e if done_in_epoch < per_epoch else e + 1, 3):
                it = iter(fresh)
                todo = per_epoch - done_in_epoch if k == e else per_epoch
                rest += [next(it).tolist() for _ in range(todo)]
            assert head + rest == plain, (e, b)


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ---- stages in process --------------------------------------------------------------------------------------

TINY = ["backbone=tiny", "concept=default", "prompts.n=4", "generate.images_per_prompt=3", "logger=none",
        "progress=false", "method.max_steps=9", "trainer.checkpoint_every=2", "trainer.checkpoint_keep=2",
        "dpo.epochs=3", "dpo.batch_size=4", "dpo.micro_batch_size=2"]


def _cfg(out: Path, extra: list[str] = ()):
    return compose_config([*TINY, *extra], out)


class Killed(RuntimeError):
    pass


class KillAt(L.Callback):
    """Dies (an exception Lightning does not swallow) when the trainer reaches `step` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise Killed


class Count(L.Callback):
    def __init__(self):
        self.first_step, self.batches = None, 0

    def on_train_batch_start(self, trainer, *args):
        if self.first_step is None:
            self.first_step = trainer.global_step
        self.batches += 1


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.parametrize("method", ["dreambooth", "svdiff"])
def test_killed_personalization_and_dpo_resume_from_their_checkpoints(tmp_path, method):
    from dbdpo import multistep as ms
    from dbdpo.generate import generate
    from dbdpo.pairs import Pairs

    def stages(out: Path, kill_personalize=None, kill_dpo=None, counts: dict | None = None) -> Path:
        def callbacks(stage, kill):
            return [*([KillAt(kill)] if kill else []),
                    *([counts.setdefault(stage, Count())] if counts is not None else [])]

        cfg = _cfg(out, [f"method={method}"])
        ctx = ms.prepare(cfg)
        ck = out / "checkpoints"
        ms.personalize(cfg, ctx.backbone, ctx.concept, [], ck / "personalize", ctx.device,
                       callbacks=callbacks("personalize", kill_personalize))
        samples = generate(ctx.backbone, ["a photo of [V*]", "[V*] on a beach"], ctx.concept.holder,
                           out / "samples", 3, seed=1, progress=False)
        pairs = Pairs.__new__(Pairs)  # 7 pairs: 4 micro-batches of 2 per epoch, 2 optimizer steps, 6 in all
        pairs.winner, pairs.loser = np.array([0, 1, 2, 3, 4, 5, 0]), np.array([1, 2, 0, 4, 5, 3, 2])
        ref = ms.frozen_copy(ctx.backbone) if method == "dreambooth" else None
        ms.dpo_step(cfg, ctx.backbone, ref, samples, pairs, [], ck / "step_1", 1, ctx.device,
                    callbacks=callbacks("dpo", kill_dpo))
        return ck

    whole = stages(tmp_path / "whole")
    killed = tmp_path / "killed"
    ck = killed / "checkpoints"
    with pytest.raises(Killed):  # dies during step 5, after the checkpoint of step 4
        stages(killed, kill_personalize=5)
    assert [p.name for p in sorted(partial_dir(ck / "personalize").glob("*.ckpt"))] == \
        ["step0000002.ckpt", "step0000004.ckpt"]  # the newest two kept
    counts: dict = {}
    with pytest.raises(Killed):  # personalization resumes mid-epoch at step 4; DPO dies during its step 5
        stages(killed, kill_dpo=5, counts=counts)
    assert (counts["personalize"].first_step, counts["personalize"].batches) == (4, 9 - 4)
    assert not partial_dir(ck / "personalize").exists()  # removed once the stage's result is saved
    assert newest_checkpoint(partial_dir(ck / "step_1")).name == "step0000004.ckpt"  # an epoch's end
    counts = {}
    stages(killed, counts=counts)
    assert "personalize" not in counts or counts["personalize"].batches == 0  # finished: skipped
    assert (counts["dpo"].first_step, counts["dpo"].batches) == (4, 2 * 2)  # 2 optimizer steps to go
    assert _digest(ck) == _digest(whole) and len(_digest(whole)) == 2


# ---- train.py: SIGKILL, and two processes ----------------------------------------------------------------------

RUN = ["backbone=tiny", "concept=default", "method.max_steps=12", "method.batch_size=2", "prompts.n=8",
       "generate.images_per_prompt=3", "generate.prompts_per_shard=1", "eval.max_prompts=3", "eval.images_per_prompt=1",
       "logger=none", "progress=false", "steps=1", "dpo.epochs=4", "dpo.batch_size=2", "dpo.micro_batch_size=1",
       "trainer.checkpoint_every=3", "trainer.accelerator=cpu"]


def _train(run_dir: Path, *extra: str) -> subprocess.Popen:
    run_dir.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *RUN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole")
    proc = _train(run_dir)
    assert proc.wait() == 0, proc.stdout.read()[-3000:]
    return run_dir


def _kill_after_checkpoint(run_dir: Path, stage: str, *extra: str, timeout: float = 240) -> None:
    proc = _train(run_dir, *extra)
    folder = partial_dir(run_dir / "checkpoints" / stage)
    t0 = time.time()
    while newest_checkpoint(folder) is None if folder.is_dir() else True:
        assert proc.poll() is None, f"finished before a {stage} checkpoint: {proc.stdout.read()[-2000:]}"
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "checkpoints" / stage / "diffusion_pytorch_model.safetensors").exists()


@pytest.mark.slow
def test_sigkill_inside_personalization_and_inside_dpo_resumes_byte_identical(whole_run, tmp_path):
    killed = tmp_path / "killed"
    _kill_after_checkpoint(killed, "personalize")
    _kill_after_checkpoint(killed, "step_1")
    proc = _train(killed)
    out = proc.communicate()[0]
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from" in out and "step_1.partial" in out
    assert _digest(killed / "checkpoints") == _digest(whole_run / "checkpoints")
    for f in ("step_1/pairs.json", "step_1/eval/eval.json", "metrics.json"):
        assert (killed / f).read_bytes() == (whole_run / f).read_bytes(), f
    assert not list((killed / "checkpoints").glob("*.partial"))


@pytest.mark.slow
def test_two_ddp_processes_give_the_pairs_of_one_also_job_after_job_in_a_multirun(whole_run, tmp_path):
    # a two-job multirun (the same job twice) over 2 processes: each job starts its own processes with its own
    # overrides and folder, and takes them down at its end
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *RUN, "trainer.devices=2",
                           "trainer.strategy=ddp", "seed=0,0", f"hydra.sweep.dir={tmp_path}",
                           "hydra.sweep.subdir=${hydra.job.num}"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("started 1 more processes") == 2
    for two in (tmp_path / "0", tmp_path / "1"):
        a, b = (json.loads((d / "step_1" / "pairs.json").read_text()) for d in (whole_run, two))
        assert a["winner"] == b["winner"] and a["loser"] == b["loser"] and a["winner"]
        np.testing.assert_allclose(a["d_ts"], b["d_ts"], atol=1e-4)
        ma, mb = (json.loads((d / "metrics.json").read_text())["stages"] for d in (whole_run, two))
        for stage in ma:
            for key in ("eval/clip_i", "eval/clip_t"):
                assert mb[stage][key]["mean"] == pytest.approx(ma[stage][key]["mean"], abs=1e-4), (stage, key)
        # the same samples (prompts, seeds): θ0 of 1 and 2 processes differ only by float rounding
        for shard in sorted((whole_run / "step_1" / "samples").glob("shard_*")):
            assert json.loads((shard / "meta.json").read_text()) == \
                json.loads((two / "step_1" / "samples" / shard.name / "meta.json").read_text())
        assert (two / "train_rank1.log").exists()


# ---- generation and scoring across processes ---------------------------------------------------------------------

WORKER = r"""
import os, sys, torch
from pathlib import Path
torch.set_num_threads(1)
if int(os.environ.get("WORLD_SIZE", 1)) > 1:
    torch.distributed.init_process_group("gloo")
from dbdpo.backbones import build_backbone
from dbdpo.generate import generate
from dbdpo.scores import build_scorer, score_generation
from omegaconf import OmegaConf
out = Path(sys.argv[1])
bb = build_backbone({"name": "tiny", "kind": "sd", "pretrained": None, "resolution": 32, "sampler": "DDIMScheduler",
                     "num_inference_steps": 3, "guidance_scale": 3.0, "dtype": "float32", "seed": 0})
prompts = [f"a photo of [V*] number {i}" for i in range(5)]
s = generate(bb, prompts, "sks toy", out / "samples", 3, seed=11, batch_size=4, prompts_per_shard=1, progress=False)
scorer = build_scorer(OmegaConf.create({"model_name": "dbdpo-tiny-clip", "pretrained": None, "seed": 0}))
ref = scorer.embed_images(s.load_images([0, 1]), reference=True)
sc = score_generation(scorer, s, ref, "sks toy", out_dir=out / "scores", progress=False)
torch.save({k: torch.as_tensor(v) for k, v in sc.items()}, out / f"scores_rank{os.environ.get('RANK', 0)}.pt")
"""


def _workers(out: Path, world: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(out)],
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(r),
                                   "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stdout.read()[-3000:]


def test_two_processes_generate_and_score_exactly_the_shards_of_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["worker", str(tmp_path / "one")])
    exec(compile(WORKER, "worker", "exec"), {"__name__": "worker"})  # one process: this one
    _workers(tmp_path / "two", 2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert set(one) - {Path("scores_rank0.pt")} <= set(two)
    for rel in one:
        if rel.suffix != ".pt":
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert len([r for r in one if r.name == "latents.safetensors"]) == 5
    ref = torch.load(tmp_path / "one" / "scores_rank0.pt", weights_only=True)
    for r in (0, 1):
        got = torch.load(tmp_path / "two" / f"scores_rank{r}.pt", weights_only=True)
        assert all(torch.equal(got[k], ref[k]) for k in ref)  # every process holds every shard's scores


def test_rank_batches_split_the_one_process_batches_and_advance_the_generator_alike():
    from torch.utils.data import DataLoader, RandomSampler

    from dbdpo.distributed import RankBatches

    class Index:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return i

    for n, batch, world, mode in [(10, 3, 2, "round"), (12, 2, 2, "round"), (7, 2, 3, "round"),
                                  (12, 4, 2, "slice"), (9, 1, 3, "round")]:
        g = torch.Generator().manual_seed(5)
        plain = DataLoader(Index(n), batch_size=batch, shuffle=True, generator=g, collate_fn=list)
        ref = [[b for _, b in zip(range(len(plain)), plain)] for _ in range(3)]  # Lightning's len-bounded epochs
        ref_state = g.get_state()
        for r in range(world):
            g = torch.Generator().manual_seed(5)
            sampler = RankBatches(RandomSampler(Index(n), generator=g), batch, mode, r, world)
            loader = DataLoader(Index(n), batch_sampler=sampler, generator=g, collate_fn=list)
            for e in range(3):
                got = [b if min(b) >= 0 else None for _, b in zip(range(len(loader)), loader)]
                if mode == "round":
                    want = [ref[e][i * world + r] if i * world + r < len(ref[e]) else None for i in range(len(got))]
                else:
                    k = batch // world
                    want = [b[r * k: (r + 1) * k] for b in ref[e]]
                assert got == want, (n, batch, world, mode, r, e)
            assert torch.equal(g.get_state(), ref_state)  # the next stage's shuffles start alike


# ---- preflight, bad input, clusters ------------------------------------------------------------------------------

def test_preflight_stops_before_training_when_the_disk_is_too_small(tmp_path, monkeypatch):
    import collections

    from dbdpo import multistep as ms
    from dbdpo.errors import ConfigError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("dbdpo.preflight.shutil.disk_usage", lambda p: usage(10 ** 6, 10 ** 6 - 1000, 1000))
    with pytest.raises(ConfigError, match=r"needs about .* GB .* 0\.00 GB free.*hydra\.run\.dir"):
        ms.run(_cfg(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_preflight_names_an_unwritable_run_directory(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.preflight import check_writable
    from dbdpo.schema import check_group_choices

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not writable.*hydra.run.dir"):
        check_writable(tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="hydra.run.dir=.*cannot be created"):  # before Hydra makes the folder
        check_group_choices([f"hydra.run.dir={tmp_path}/file/run"], ROOT / "conf")
    check_group_choices([f"hydra.run.dir={tmp_path}/new/run"], ROOT / "conf")


@pytest.mark.parametrize("overrides, needles", [
    (["trainer.devices=64", "trainer.accelerator=cpu"], ["trainer.devices=64: 64 CPU processes"]),
    (["trainer.devices=2", "trainer.accelerator=gpu"], ["trainer.accelerator=gpu", "trainer.devices=2: only 0 CUDA"]),
    (["trainer.strategy=nope"], ["trainer.strategy=nope: Lightning knows no such strategy"]),
    (["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn"], ["trainer.strategy=ddp_spawn"]),
    (["trainer.devices=2", "trainer.accelerator=cpu", "method.batch_size=3", "dpo.batch_size=2",
      "dpo.micro_batch_size=2"], ["method.batch_size=3", "dpo.batch_size=2: each of the 2 processes"]),
    (["trainer.checkpoint_every=-1"], ["trainer.checkpoint_every=-1"]),
    (["trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=fsdp", "method=lora"],
     ["trainer.strategy=fsdp shards a full fine-tune", "use trainer.strategy=ddp"]),
    (["trainer.num_nodes=0"], ["trainer.num_nodes=0: must be an integer ≥ 1"]),
])
def test_bad_process_settings_are_one_clear_error(tmp_path, overrides, needles):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    with pytest.raises(ConfigError) as e:
        check_config(_cfg(tmp_path, overrides))
    for needle in needles:
        assert needle in str(e.value)


def test_a_submitit_launcher_without_its_package_is_one_clear_error(monkeypatch):
    from dbdpo import schema
    from dbdpo.errors import ConfigError

    schema.check_group_choices(["hydra/launcher=slurm"], ROOT / "conf")  # installed: fine
    monkeypatch.setattr(schema, "_has_module", lambda name: False)
    with pytest.raises(ConfigError, match="hydra/launcher=submitit_slurm needs the hydra-submitit-launcher package"):
        schema.check_group_choices(["-m", "hydra/launcher=submitit_slurm"], ROOT / "conf")


def test_slurm_launcher_gives_one_task_per_device():
    from omegaconf import OmegaConf

    cfg = compose_config(["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2"], hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["nodes"]) == (4, 4, 2)


@pytest.mark.slow
def test_two_job_multirun_through_submitit_local(tmp_path):
    args = ["-m", "hydra/launcher=submitit_local", "backbone=tiny", "concept=default", "method.max_steps=2",
            "prompts.n=4", "generate.images_per_prompt=2", "eval.max_prompts=2", "eval.images_per_prompt=1",
            "logger=none", "progress=false", "steps=1", "dpo.epochs=1", "dpo.batch_size=2", "dpo.micro_batch_size=2",
            "seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and [j.name[0] for j in jobs] == ["0", "1"]
    seeds = [json.loads((j / "metrics.json").read_text()) and (j / "config.yaml").read_text() for j in jobs]
    assert "seed: 0" in seeds[0] and "seed: 1" in seeds[1]
    assert all((j / "checkpoints" / "step_1" / "diffusion_pytorch_model.safetensors").exists() for j in jobs)
    assert list((tmp_path / ".submitit").iterdir())  # submitit's own job folders
