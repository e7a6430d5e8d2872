"""A closed schema: an unknown key, with or without ``+``, is refused by every entry point, naming the closest valid
key and never suggesting the ``+``; open places (``dict`` fields, Hydra's own settings, group selections) stay open.

Every entry point is found by its source (a module that builds ``main = hydra_main(...)``) and run in process with
its own recipe folder and schema, but a recording task in place of the stage's work."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from recipes.closed_schema import UnknownKeyError, check_overrides, schema_keys, schema_type
from recipes.entry import EntryPoint, hydra_main
from scripts.pipeline_config import PipelineConfig
from train.config import SFTConfig

ROOT = Path(__file__).resolve().parents[2]
# Quiet and in place: no logging set-up of Hydra's in the test process (the group-path override is Hydra's own).
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


def _entry_modules() -> list[str]:
    found = []
    for path in sorted([*ROOT.glob("data/*.py"), *ROOT.glob("train/*.py"), *ROOT.glob("scripts/*.py")]):
        if "= hydra_main(" in path.read_text():
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


ENTRY_MODULES = _entry_modules()


def entry_point(module: str) -> EntryPoint:
    main = importlib.import_module(module).main
    assert isinstance(main, EntryPoint), module
    return main


def run_main(module: str, argv: list[str], monkeypatch) -> list:
    """Run ``module``'s entry point on ``argv`` with a task that records the composed config (returned)."""
    real, seen = entry_point(module), []
    monkeypatch.setattr(sys, "argv", [module, *argv])
    try:
        hydra_main(real.recipe_folder, real.register_schema, lambda cfg: seen.append(cfg) and 0)()
    finally:
        GlobalHydra.instance().clear()
    return seen


def a_typo_of(schema: type) -> tuple[str, str]:
    """(a key of ``schema`` less its last letter, that key): the longest key whose shortening is no key."""
    keys = schema_keys(schema)
    key = max((k for k in keys if k[:-1] not in keys), key=len)
    return key[:-1], key


def test_every_entry_point_is_built_by_hydra_main():
    assert {"data.prepare", "train.pretrain", "train.sft", "train.dpo", "train.evaluate",
            "scripts.pipeline"} <= set(ENTRY_MODULES)
    for module in ENTRY_MODULES:
        main = entry_point(module)
        main.register_schema()
        assert schema_keys(schema_type(main.schema_name)), module


@pytest.mark.parametrize("module", ENTRY_MODULES)
@pytest.mark.parametrize("prefix", ["", "+", "++"])
def test_an_unknown_key_is_refused_naming_the_closest(module, prefix, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    main = entry_point(module)
    main.register_schema()
    typo, key = a_typo_of(schema_type(main.schema_name))
    with pytest.raises(SystemExit) as e:
        run_main(module, [*QUIET, f"{prefix}{typo}=1"], monkeypatch)
    message = str(e.value.code)
    assert f"unknown config key {typo} " in message and f"did you mean {key}?" in message
    assert "+" not in message, message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["train.sft", "train.pretrain", "train.dpo"])
def test_the_issue_typo_is_refused(module, monkeypatch):
    for override in ("+trainer.max_step=10", "trainer.max_step=10"):
        with pytest.raises(SystemExit, match=r"unknown config key trainer\.max_step .*did you mean trainer\.max_steps"):
            run_main(module, [override], monkeypatch)


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_hydra_settings_and_the_recipe_flag_stay_open(module, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for argv in (["--config-name", "demo"], ["-cn", "demo"], ["--config-name=demo"]):
        seen = run_main(module, [*argv, *QUIET, f"hydra.run.dir={tmp_path}", "hydra.job.name=x"], monkeypatch)
        assert len(seen) == 1, argv
    assert not list(tmp_path.iterdir())


def test_dict_fields_and_group_selections_stay_open(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    [pipe] = run_main("scripts.pipeline", [*QUIET, "++stages.pretrain.overrides.trainer.max_steps=600",
                                           "+stages.pretrain.nproc=1", "+env.OMP_NUM_THREADS=1"], monkeypatch)
    assert pipe.stages.pretrain.overrides.trainer.max_steps == 600 and pipe.stages.pretrain.nproc == 1
    assert pipe.env.OMP_NUM_THREADS == "1"
    [pre] = run_main("train.pretrain", [*QUIET, "model=sambay_125m", "optim=mup", "+deepspeed.extra.a.b=2"],
                     monkeypatch)
    assert pre.optim.mup.enabled and pre.deepspeed.extra.a.b == 2 and pre.model.hidden_size > 64
    with pytest.raises(SystemExit, match=r"stages\.pretrain\.dir_ke .*did you mean stages\.pretrain\.dir_key\?"):
        run_main("scripts.pipeline", ["+stages.pretrain.dir_ke=x"], monkeypatch)  # a dict's values stay typed


def test_keys_below_lists_and_values():
    check_overrides(SFTConfig, ["sft.stages.0.lr=1.0", "~sft.stages_to_run", "sft.stages_to_run=[a,b]"])
    check_overrides(PipelineConfig, ["+stages.new={entry: train.sft}", "+stages.new.recipe=demo"])  # any stage name
    refusals = {"sft.stages.0.lrr=1": "did you mean sft.stages.0.lr?",
                "sft.stages.first.lr=1": "sft.stages is a list: the key after it is an index",
                "trainer.max_steps.x=1": "trainer.max_steps is a value, with no keys below it",
                "~trainer.max_step": "did you mean trainer.max_steps?",
                "trainer.max_steps=3,4": None}
    for override, text in refusals.items():
        if text is None:
            check_overrides(SFTConfig, [override])  # a sweep of a real key
            continue
        with pytest.raises(UnknownKeyError) as e:
            check_overrides(SFTConfig, [override])
        assert text in str(e.value), override
    with pytest.raises(UnknownKeyError, match=r"no key of the schema is close to it\. \(the keys at the top level"):
        check_overrides(PipelineConfig, ["+zzzzzz=1"])


def test_a_missing_schema_is_named():
    with pytest.raises(LookupError, match="no_such_schema"):
        schema_type("no_such_schema")


def test_the_console_refuses_before_any_work(tmp_path):
    """The real command: exit status 1 and the error on stderr, before the stage reads anything."""
    proc = subprocess.run([sys.executable, "-m", "train.sft", "+trainer.max_step=10", f"run.dir={tmp_path / 'r'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "unknown config key trainer.max_step (not in SFTConfig): did you mean trainer.max_steps?" in proc.stderr
    assert not (tmp_path / "r").exists()
