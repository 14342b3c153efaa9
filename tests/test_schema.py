"""One typed schema: every setting is checked before any work, each problem one line naming key and value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["backbone=tiny", "concept=default", "logger=none", "progress=false"]


def compose(overrides: list[str], out: Path, base: list[str] = TINY):
    return compose_config([*base, *overrides], out)


# (override, the key the message must name): type errors, out-of-range numbers, NaN / inf, zero sizes, names
BAD = [
    ("seed=abc", "seed"), ("steps=0", "steps"), ("steps=1.5", "steps"), ("progress=maybe", "progress"),
    ("device=tpu9", "device"),
    ("backbone.resolution=0", "backbone.resolution"), ("backbone.resolution=100", "backbone.resolution"),
    ("backbone.sampler=FastScheduler", "backbone.sampler"), ("backbone.num_inference_steps=0",
                                                              "backbone.num_inference_steps"),
    ("backbone.guidance_scale=inf", "backbone.guidance_scale"), ("backbone.dtype=float8", "backbone.dtype"),
    ("backbone.kind=sd3", "backbone.kind"), ("backbone.compile=perhaps", "backbone.compile"),
    ("backbone.compile_training=perhaps", "backbone.compile_training"),
    ("backbone.channels_last=perhaps", "backbone.channels_last"),
    ("backbone.compile_mode=fastest", "backbone.compile_mode"), ("backbone.sdpa_backend=fa3", "backbone.sdpa_backend"),
    ("backbone.compile_options=fast", "backbone.compile_options"),
    ("backbone.compile_backend=turbo", "backbone.compile_backend"), ("backbone.pretrained=/no/such/folder", "backbone.pretrained"),
    ("method.lr=-1", "method.lr"), ("method.lr=nan", "method.lr"), ("method.batch_size=0", "method.batch_size"),
    ("method.max_steps=ten", "method.max_steps"), ("method.prompt='a photo'", "method.prompt"),
    ("method.adapter.kind=dora", "method.adapter.kind"), ("method.weight_decay=-0.1", "method.weight_decay"),
    ("prompts.n=0", "prompts.n"), ("prompts.coco_fraction=1.5", "prompts.coco_fraction"),
    ("prompts.coco_prompts=/no/such/file.txt", "prompts.coco_prompts"),
    ("generate.batch_size=0", "generate.batch_size"), ("generate.images_per_prompt=1", "generate.images_per_prompt"),
    ("generate.prompts_per_shard=0", "generate.prompts_per_shard"),
    ("generate.guidance_scale=-1", "generate.guidance_scale"),
    ("scorer.batch_size=0", "scorer.batch_size"), ("scorer.preprocess=fancy", "scorer.preprocess"),
    ("scorer.text_variant=keep", "scorer.text_variant"),
    ("scorer.pretrained=/no/such/clip.safetensors", "scorer.pretrained"),
    ("filter.c1=nan", "filter.c1"), ("filter.c1=100", "filter.c1"), ("filter.kind=cosine", "filter.kind"),
    ("dpo.lr=-1", "dpo.lr"), ("dpo.lr=nan", "dpo.lr"), ("dpo.lr=inf", "dpo.lr"), ("dpo.beta=0", "dpo.beta"),
    ("dpo.batch_size=0", "dpo.batch_size"), ("dpo.micro_batch_size=0", "dpo.micro_batch_size"),
    ("dpo.micro_batch_size=3", "dpo.batch_size"), ("dpo.epochs=0", "dpo.epochs"), ("dpo.max_steps=0", "dpo.max_steps"),
    ("dpo.reference=best", "dpo.reference"), ("dpo.warmup_steps=-1", "dpo.warmup_steps"),
    ("eval.images_per_prompt=0", "eval.images_per_prompt"), ("eval.prompt_set=test", "eval.prompt_set"),
    ("eval.max_prompts=0", "eval.max_prompts"), ("eval.judge=sometimes", "eval.judge"),
    ("trainer.precision=bf17", "trainer.precision"), ("+trainer.max_stepz=3", "trainer.max_stepz"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
    ("+dpo.lrr=1", "dpo.lrr"), ("+paths.extra=1", "paths.extra"), ("+nonsense=1", "nonsense"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_clear_error_before_any_work(override, key, tmp_path, capsys):
    from dbdpo.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(compose([override], tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    line = next(ln for ln in err.splitlines() if key in ln)
    assert override.split("=", 1)[1].strip("'").split()[0] in line or "not an argument" in line \
        or "unknown setting" in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written: not even the config


def test_several_bad_values_are_reported_together(tmp_path, capsys):
    from dbdpo.cli import run_main

    bad = ["dpo.lr=-1", "dpo.beta=0", "generate.batch_size=0", "eval.images_per_prompt=0", "method.lr=abc"]
    with pytest.raises(SystemExit):
        run_main(compose(bad, tmp_path))
    err = capsys.readouterr().err
    assert err.startswith("error: 5 invalid settings:")
    for b in bad:
        assert sum(ln.strip().startswith(b.split("=")[0] + "=") for ln in err.splitlines()) == 1, b


def test_the_schema_converts_like_omegaconf_and_names_what_is_allowed(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    check_config(compose(["dpo.lr=1e-4", "dpo.batch_size=8", "dpo.micro_batch_size=4", "eval.judge=false"], tmp_path))
    with pytest.raises(ConfigError) as e:
        check_config(compose(["dpo.batch_size=2.5", "dpo.micro_batch_size=8"], tmp_path))
    assert "dpo.batch_size=2.5: must be an integer" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_config(compose(["dpo.max_steps=x"], tmp_path))
    assert "dpo.max_steps='x': must be null or an integer" in str(e.value)


def test_compile_options_are_inductor_options_named_and_typed(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_config

    ok = "backbone.compile_options={coordinate_descent_tuning:true,conv_1x1_as_mm:true,epilogue_fusion:false}"
    check_config(compose([ok, "backbone.compile_mode=max-autotune-no-cudagraphs"], tmp_path))
    with pytest.raises(ConfigError) as e:
        check_config(compose(["backbone.compile_options={coordinate_descent_tunin:true}"], tmp_path))
    assert "'coordinate_descent_tunin' is not one (close: coordinate_descent_tuning" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_config(compose(["backbone.compile_options={conv_1x1_as_mm:3}"], tmp_path))
    assert "conv_1x1_as_mm takes a bool, not 3" in str(e.value)
    with pytest.raises(ConfigError) as e:  # options are inductor's: another backend would get them as arguments
        check_config(compose([ok, "backbone.compile_backend=aot_eager"], tmp_path))
    assert "backbone.compile_options: inductor's options; backbone.compile_backend is aot_eager" in str(e.value)


CONFIGS = sorted(
    [[f"experiment={p.stem}"] for p in (ROOT / "conf" / "experiment").glob("*.yaml")]
    + [[f"backbone={p.stem}"] for p in (ROOT / "conf" / "backbone").glob("*.yaml")]
    + [[f"method={p.stem}"] for p in (ROOT / "conf" / "method").glob("*.yaml")]
    + [[f"filter={p.stem}"] for p in (ROOT / "conf" / "filter").glob("*.yaml")]
    + [[f"scorer={p.stem}"] for p in (ROOT / "conf" / "scorer").glob("*.yaml")]
    + [[f"logger={p.stem}"] for p in (ROOT / "conf" / "logger").glob("*.yaml")]
    + [[f"generate={p.stem}"] for p in (ROOT / "conf" / "generate").glob("*.yaml")]
    + [[f"concept={p.relative_to(ROOT / 'conf' / 'concept').with_suffix('').as_posix()}"]
       for p in (ROOT / "conf" / "concept").rglob("*.yaml")])


@pytest.mark.parametrize("overrides", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_shipped_config_validates(overrides, tmp_path):
    from dbdpo.schema import check_config

    check_config(compose(overrides, tmp_path, base=[]))  # on the default run's settings (the world)


def test_unknown_group_choices_list_every_option_with_subfolders(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "concept=world/nope"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "concept=world/nope" in proc.stderr
    assert "dreambench/dog6" in proc.stderr and "world/zigzag_star" in proc.stderr and "default" in proc.stderr


def test_group_choices_see_search_path_folders(tmp_path):
    from dbdpo.errors import ConfigError
    from dbdpo.schema import check_group_choices

    (tmp_path / "concept" / "mine").mkdir(parents=True)
    (tmp_path / "concept" / "mine" / "blob.yaml").write_text("name: blob\n")
    conf = ROOT / "conf"
    check_group_choices(["concept=mine/blob", f"hydra.searchpath=[file://{tmp_path}]"], conf)
    check_group_choices(["-m", "filter=ts,is,mix", "method=lora", "dpo.lr=1"], conf)
    with pytest.raises(ConfigError, match="concept=mine/blob.*available: default"):
        check_group_choices(["concept=mine/blob"], conf)
    with pytest.raises(ConfigError, match=r"filter=tss.*is, mix, threshold, ts, weighted"):
        check_group_choices(["-m", "filter=ts,tss"], conf)


def test_schemas_are_registered_in_hydras_config_store():
    from hydra.core.config_store import ConfigStore

    from dbdpo.schema import register_schemas

    register_schemas()
    repo = ConfigStore.instance().repo
    assert "train_schema.yaml" in repo
    for group in ("backbone", "method", "prompts", "generate", "scorer", "filter", "dpo", "eval", "paths"):
        assert "schema.yaml" in repo[group], group
