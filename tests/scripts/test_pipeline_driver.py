"""scripts/pipeline.py: override rendering, recipe validation, stage skipping/resume, gates, plan files.

The stage-ordering tests run the driver against a small stand-in entry module (written into tmp_path) so they
exercise the real subprocess, skip and gate logic in seconds; the real stages run in test_readme_commands.py.
"""
import importlib
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scripts import pipeline
from scripts.pipeline_config import PipelineConfig, StageConfig
from train.evals.gates import GateFailed

REPO = Path(__file__).resolve().parents[2]

# A stand-in stage: parses `key=value` arguments, records the call, fails while a `fail_first` token file
# exists (consuming it: an interrupted stage), else writes the done file named by `done=` (an eval stage writes
# the metrics given by `metrics=` JSON).
STAGE_MODULE = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    args = {k: v[1:-1] if v[:1] == v[-1:] == "'" else v for k, v in args.items()}  # Hydra quoting
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    with open(os.environ["CALLS_LOG"], "a") as f:
        f.write(out.name + " " + " ".join(sys.argv[1:]) + "\\n")
    token = out / "fail_first"
    if token.exists():
        token.unlink()
        print("interrupted", flush=True)
        sys.exit(3)
    if "metrics" in args:
        (out / "eval.json").write_text(args["metrics"])
    else:
        (out / args.get("done", "DONE")).write_text("ok")
''')


def make_cfg(tmp_path: Path, gate=None, launcher="python") -> PipelineConfig:
    (tmp_path / "mods").mkdir(exist_ok=True)
    (tmp_path / "mods" / "fake_stage.py").write_text(STAGE_MODULE)
    run = tmp_path / "run"

    def stage(**kw):
        return StageConfig(entry="fake_stage", recipe="", dir_key="out", launcher=launcher, **kw)

    return PipelineConfig(
        name="t",
        run_dir=str(run),
        stages={
            "train": stage(dir=str(run / "train")),
            "eval_train": stage(dir=str(run / "train" / "eval"), done="eval.json", eval_of="train", gate=gate,
                                overrides={"metrics": json.dumps({"accuracy": 0.5})}),
        },
        env={"PYTHONPATH": str(tmp_path / "mods"), "CALLS_LOG": str(tmp_path / "calls.log")},
    )


def calls(cfg: PipelineConfig) -> list[str]:
    log = Path(cfg.env["CALLS_LOG"])
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_hydra_value_and_flatten_overrides():
    assert pipeline.hydra_value(None) == "null"
    assert pipeline.hydra_value(True) == "true"
    assert pipeline.hydra_value(3e-4) == "0.0003"
    assert pipeline.hydra_value("runs/demo/export") == "runs/demo/export"
    assert pipeline.hydra_value("a b") == "'a b'"
    assert pipeline.hydra_value("it's") == "'it\\'s'"
    assert pipeline.hydra_value("null") == "'null'"
    assert pipeline.hydra_value([{"path": "x/y", "weight": 1.0}]) == "[{path:x/y,weight:1.0}]"
    flat = pipeline.flatten_overrides({"trainer": {"max_steps": 5, "seed": 1}, "sft.stages_to_run": ["a", "b"],
                                       "+extra": {"k": 1}, "opt": {}})
    assert flat == ["trainer.max_steps=5", "trainer.seed=1", "sft.stages_to_run=[a,b]", "+extra={k:1}", "opt={}"]


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_pipeline_recipes_compose_and_validate(name):
    pipeline.register_pipeline_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "pipeline"), version_base=None):
        cfg = pipeline.to_config(compose(config_name=name))
    pipeline.validate(cfg)
    assert list(cfg.stages)[:2] == ["prepare", "pretrain"]
    evals = {n: s.eval_of for n, s in cfg.stages.items() if s.eval_of}
    # An evaluation after every training stage.
    trained = [n for n, s in cfg.stages.items() if not s.eval_of and n != "prepare"]
    assert sorted(evals.values()) == sorted(trained)
    assert {"pretrain", "dpo"} <= set(trained) and sum(n.startswith("sft") for n in trained) >= 2
    args = pipeline.stage_args(cfg, "pretrain")
    assert args[:3] == ["train.pretrain", "--config-name=demo", f"run.dir=runs/{name}/pretrain"]


def test_unknown_pipeline_key_is_an_error():
    pipeline.register_pipeline_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "pipeline"), version_base=None):
        with pytest.raises(Exception, match="not_a_key"):
            compose(config_name="demo", overrides=["stages.pretrain.not_a_key=1"])
        with pytest.raises(Exception, match="not_a_key"):
            pipeline.to_config(compose(config_name="demo", overrides=["+stages.pretrain.not_a_key=1"]))


def test_gates_set_from_the_command_line():
    """A gate on a stage that has none (its field is None: OmegaConf could not merge a mapping into a None typed as
    a dict), a bound swapped on one that has, and a gate that is not a mapping, refused naming its key."""
    pipeline.register_pipeline_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "pipeline"), version_base=None):
        cfg = pipeline.to_config(compose(config_name="demo", overrides=[
            "stages.eval_sft_basic.gate={metric:accuracy,min:0.1}", "stages.eval_pretrain.gate.max_metric=null",
            "++stages.eval_pretrain.gate.max=700"]))
        bad = pipeline.to_config(compose(config_name="demo", overrides=["stages.eval_sft_basic.gate=0.1"]))
    pipeline.validate(cfg)
    assert cfg.stages["eval_sft_basic"].gate == {"metric": "accuracy", "min": 0.1}
    assert cfg.stages["eval_pretrain"].gate == {"metric": "perplexity", "max_metric": None, "max": 700}
    with pytest.raises(pipeline.PipelineError, match=r"stages\.eval_sft_basic\.gate: a mapping .*got 0\.1"):
        pipeline.validate(bad)


def test_validate_names_the_bad_key(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.stages["eval_train"].eval_of = "nope"
    with pytest.raises(pipeline.PipelineError, match=r"stages\.eval_train\.eval_of"):
        pipeline.validate(cfg)
    cfg = make_cfg(tmp_path, gate={"metric": "accuracy", "mni": 0.1})
    with pytest.raises(pipeline.PipelineError, match=r"stages\.eval_train\.gate.*mni"):
        pipeline.validate(cfg)
    cfg = make_cfg(tmp_path)
    cfg.stages["train"].launcher = "mpirun"
    with pytest.raises(pipeline.PipelineError, match=r"stages\.train\.launcher"):
        pipeline.validate(cfg)


def test_runs_stages_in_order_then_skips_completed(tmp_path):
    cfg = make_cfg(tmp_path, gate={"metric": "accuracy", "min": 0.25})
    report = pipeline.run_pipeline(cfg)
    assert calls(cfg) == ["train", "eval"]
    assert report == Path(cfg.run_dir) / "report.md" and report.is_file()
    assert (Path(cfg.run_dir) / "report.png").stat().st_size > 0
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert metrics == {"train": {"accuracy": 0.5}}
    assert "passed" in report.read_text()
    assert "$ " in (Path(cfg.run_dir) / "logs" / "train.log").read_text()
    pipeline.run_pipeline(cfg)  # everything complete: nothing runs again
    assert calls(cfg) == ["train", "eval"]


def test_a_stage_that_asks_is_rerun_when_done(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.stages["train"].rerun_when_done = True
    pipeline.run_pipeline(cfg)
    pipeline.run_pipeline(cfg)
    assert calls(cfg) == ["train", "eval", "train"]
    assert [line.split()[0] for line in pipeline.write_plan(cfg)] == ["train"]


def test_interrupted_stage_fails_then_relaunch_resumes(tmp_path):
    cfg = make_cfg(tmp_path)
    token = Path(cfg.run_dir) / "train" / "fail_first"
    token.parent.mkdir(parents=True)
    token.write_text("")
    with pytest.raises(pipeline.PipelineError, match=r"stage 'train' failed with exit status 3; log: .*train\.log"):
        pipeline.run_pipeline(cfg)
    assert "interrupted" in (Path(cfg.run_dir) / "logs" / "train.log").read_text()
    assert not (Path(cfg.run_dir) / "train" / "eval").exists()
    pipeline.run_pipeline(cfg)
    assert calls(cfg) == ["train", "train", "eval"]


def test_stage_that_exits_without_done_file_is_an_error(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.stages["train"].done = "NEVER_WRITTEN"
    with pytest.raises(pipeline.PipelineError, match="did not write .*NEVER_WRITTEN"):
        pipeline.run_pipeline(cfg)


def test_failed_gate_stops_after_writing_the_report(tmp_path):
    cfg = make_cfg(tmp_path, gate={"metric": "accuracy", "min": 0.9})
    with pytest.raises(GateFailed, match=r"accuracy = 0\.5 < min 0\.9; report: .*report\.md"):
        pipeline.run_pipeline(cfg)
    assert "FAILED" in (Path(cfg.run_dir) / "report.md").read_text()
    cfg.fail_on_gate = False
    assert pipeline.run_pipeline(cfg).is_file()


def test_seed_sets_every_training_and_evaluation_seed_and_nothing_else():
    pipeline.register_pipeline_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "pipeline"), version_base=None):
        unseeded = pipeline.to_config(compose(config_name="demo"))
        seeded = pipeline.to_config(compose(config_name="demo", overrides=["seed=7"]))
    for name, stage in seeded.stages.items():
        added = [a for a in pipeline.stage_args(seeded, name) if a not in pipeline.stage_args(unseeded, name)]
        expected = [f"{key}=7" for key in pipeline.SEED_KEYS.get(stage.entry, ())]
        assert added == expected, name
        if stage.entry != "data.prepare":  # the dataset, held-out problems included, is the same for every seed
            assert any(a.endswith("seed=7") for a in added), name
    # The seed overrides come before the stage's overrides, so a seed pinned there (in the pipeline recipe) wins.
    seeded.stages["dpo"].overrides["trainer"] = {"seed": 99}
    args = pipeline.stage_args(seeded, "dpo")
    assert args.index("trainer.seed=7") < args.index("trainer.seed=99")


def test_torchrun_launcher_and_only(tmp_path):
    cfg = make_cfg(tmp_path, launcher="torchrun")
    cfg.only = ["train"]
    assert pipeline.launch_command(cfg, "train")[:5] == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    assert pipeline.run_pipeline(cfg) is None  # no evaluation ran: no report
    assert calls(cfg) == ["train"]


def test_plan_writes_one_args_file_per_pending_stage(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.nproc_per_node = 4
    cfg.stages["train"].launcher = "torchrun"
    lines = pipeline.write_plan(cfg)
    plan = Path(cfg.run_dir) / "plan"
    assert lines == [f"train 4 torchrun {plan / 'train.args'}", f"eval_train 1 python {plan / 'eval_train.args'}"]
    assert (plan / "train.args").read_text().splitlines() == ["fake_stage", f"out={Path(cfg.run_dir) / 'train'}"]
    (Path(cfg.run_dir) / "train").mkdir(parents=True)
    (Path(cfg.run_dir) / "train" / "DONE").write_text("ok")
    assert [line.split()[0] for line in pipeline.write_plan(cfg)] == ["eval_train"]


def test_dry_run_runs_every_stage_dry_and_writes_nothing(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    cfg.stages["train"].entry, cfg.stages["eval_train"].entry = "train.pretrain", "train.evaluate"
    assert pipeline.dry_run_command(cfg, "train")[-1] == "trainer.dry_run=true"
    assert pipeline.dry_run_command(cfg, "eval_train")[-1] == "dry_run=true"
    seen = []
    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd, env, stdout: seen.append(cmd)
                        or subprocess.CompletedProcess(cmd, 0 if seen[1:] else 3))
    with pytest.raises(pipeline.PipelineError, match=r"dry run failed for stage\(s\) \['train'\]"):
        pipeline.dry_run_pipeline(cfg)
    # A failure does not stop the others; eval_train reads train's output, which does not exist yet (train is
    # pending), so it gets the config check only.
    assert seen[0][-1] == "trainer.dry_run=true"
    assert seen[1][-3:] == ["dry_run=true", "--cfg", "job"]
    assert not Path(cfg.run_dir).exists()  # no logs, no report
    seen.clear()
    (Path(cfg.run_dir) / "train").mkdir(parents=True)
    (Path(cfg.run_dir) / "train" / "DONE").write_text("ok")
    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd, env, stdout: seen.append(cmd)
                        or subprocess.CompletedProcess(cmd, 0))
    pipeline.dry_run_pipeline(cfg)
    assert [c[-1] for c in seen] == ["trainer.dry_run=true", "dry_run=true"]  # train done: eval's full dry run
    cfg.stages["train"].entry = "fake_stage"
    with pytest.raises(pipeline.PipelineError, match="stages.train.entry: 'fake_stage' has no known dry run"):
        pipeline.dry_run_command(cfg, "train")


def test_settings_that_would_be_ignored_are_errors(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.stages["eval_train"].nproc = 2  # a python stage runs one process
    with pytest.raises(pipeline.PipelineError, match="stages.eval_train.nproc"):
        pipeline.validate(cfg)
    cfg = make_cfg(tmp_path)
    cfg.plan = cfg.dry_run = True
    with pytest.raises(pipeline.PipelineError, match="plan=true and dry_run=true"):
        pipeline.validate(cfg)


def test_cli_plan_mode_prints_stage_lines(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/pipeline.py", "--config-name=demo", f"run_dir={tmp_path}",
         f"data_dir={tmp_path / 'data'}", "plan=true"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names[:3] == ["prepare", "pretrain", "eval_pretrain"] and names[-1] == "eval_dpo"
    args = (tmp_path / "plan" / "pretrain.args").read_text().splitlines()
    assert f"data.dir={tmp_path / 'data'}" in args  # the pretrain recipe's sources are written under data.dir
    bad = subprocess.run([sys.executable, "scripts/pipeline.py", "nproc_per_nod=2", "plan=true"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nproc_per_nod" in bad.stderr


def test_console_scripts_run_their_modules(tmp_path):
    """The pyproject.toml [project.scripts] shortcuts (installed next to the interpreter by make install)."""
    bin_dir = Path(sys.executable).parent
    out = subprocess.run([str(bin_dir / "sambay-pretrain"), "--config-name=demo", "--cfg", "job",
                          "trainer.max_steps=7"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "max_steps: 7" in out.stdout
    out = subprocess.run([str(bin_dir / "sambay-report"), "--pipeline-dir", str(tmp_path / "missing")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_console_scripts_name_importable_mains():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {f"sambay-{s}" for s in ("prepare", "pretrain", "sft", "dpo", "evaluate", "report",
                                                      "generate", "pipeline")}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
        assert (Path(sys.executable).parent / name).exists(), f"{name}: rerun make install"


@pytest.mark.parametrize("stage", ["prepare", "pretrain", "sft", "dpo", "evaluate", "report"])
def test_removed_stage_shims_name_their_console_script(stage):
    out = subprocess.run([sys.executable, f"scripts/{stage}.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and f"sambay-{stage}" in out.stderr
