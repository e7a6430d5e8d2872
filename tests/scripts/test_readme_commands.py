"""The README's quick-start commands are the ones that work: parsed out of README.md, not repeated here.

`make demo` is run for real (with DEMO_ARGS selecting the few-step `smoke` pipeline recipe and a temporary
run directory); `make test` is not run from inside the test suite (it would recurse), so the tests check that
it is exactly what CI runs and that it runs pytest.
"""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.prepare_config import register_prepare_schema
from train.config import register_pretrain_schema, register_sft_schema
from train.alignment.dpo_config import register_dpo_schema
from train.evals.evaluate_config import register_evaluate_schema

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- quickstart -->"


def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert MARKER in text, f"README.md lost its {MARKER} marker"
    block = re.search(r"```[a-z]*\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block, f"README.md: no fenced code block after {MARKER}"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def command_for(target: str) -> str:
    matches = [c for c in quickstart_commands() if shlex.split(c)[:2] == ["make", target]]
    assert len(matches) == 1, f"README quick start should have one `make {target}` command, has {matches}"
    return matches[0]


def test_quickstart_is_exactly_demo_then_test():
    assert quickstart_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    last = lines[-1]
    assert re.fullmatch(r"(exec )?" + re.escape(command_for("test")) + r"( </dev/null)?", last), last
    dry = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "-m pytest" in dry.stdout and "make test" not in dry.stdout


def test_make_demo_runs_the_pipeline_script():
    dry = subprocess.run(["make", "-n", "demo", "DEMO_ARGS=--config-name=smoke"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "scripts/pipeline.py --config-name=smoke" in dry.stdout
    # torch is installed, pinned, before the package: an unpinned torch pulls a CUDA build.
    install = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert install.returncode == 0, install.stderr
    lines = install.stdout.splitlines()
    torch_line = next(i for i, ln in enumerate(lines) if "pip install" in ln and "torch==" in ln)
    pkg_line = next(i for i, ln in enumerate(lines) if "pip install" in ln and "-e " in ln)
    assert torch_line < pkg_line


@pytest.mark.slow
@pytest.mark.xdist_group("demo_data")  # writes artifacts/data/demo, as the Slurm tests do
def test_readme_demo_command_end_to_end(tmp_path):
    """`make demo` as written in the README, shrunk to the smoke recipe, leaves a report and plots."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "DEMO_ARGS": f"--config-name=smoke run_dir={run_dir}"}
    env.pop("MAKEFLAGS", None)
    out = subprocess.run(command_for("demo"), shell=True, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=1800)
    tail = (out.stdout + out.stderr)[-6000:]
    assert out.returncode == 0, tail
    assert f"Report: {run_dir / 'report.md'}" in out.stdout, tail
    assert (run_dir / "report.png").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"pretrain", "sft/basic", "sft/math", "dpo"}, metrics
    for stage, values in metrics.items():
        assert "accuracy" in values, (stage, values)
    for done in ("pretrain/DONE", "sft/basic/DONE", "sft/math/DONE", "dpo/DONE", "dpo/eval/eval.json"):
        assert (run_dir / done).exists(), done
    # Installing again is a no-op (the stamp is up to date), and a relaunch skips every stage.
    assert subprocess.run(["make", "-q", "install"], cwd=REPO, env=env, timeout=60).returncode == 0
    again = subprocess.run(command_for("demo"), shell=True, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage pretrain: complete" in again.stdout and "stage dpo: complete" in again.stdout
    assert "torch.distributed.run" not in again.stdout


# Every stage command the README shows (`-m <entry point> [--config-name=R] overrides...`) composes to its schema:
# a renamed or removed override key fails here, not on a user's cluster.
ENTRY_POINTS = {"train.pretrain": "pretrain", "train.sft": "sft", "train.dpo": "dpo", "train.evaluate": "evaluate",
                "data.prepare": "prepare"}


def readme_stage_commands() -> list[tuple[str, list[str]]]:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            args = shlex.split(line, comments=True)
            if "-m" in args and args[args.index("-m") + 1] in ENTRY_POINTS:
                found.append((args[args.index("-m") + 1], args[args.index("-m") + 2:]))
    return found


def test_readme_shows_every_stage_entry_point():
    assert {module for module, _ in readme_stage_commands()} == set(ENTRY_POINTS)


@pytest.mark.parametrize("module,args", readme_stage_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_readme_stage_command_composes_to_its_schema(module, args):
    for register in (register_pretrain_schema, register_sft_schema, register_dpo_schema, register_evaluate_schema,
                     register_prepare_schema):
        register()
    name = next((a.split("=", 1)[1] for a in args if a.startswith("--config-name")), "demo")
    overrides = [a for a in args if not a.startswith("--")]
    with initialize_config_dir(config_dir=str(REPO / "recipes" / ENTRY_POINTS[module]), version_base=None):
        OmegaConf.to_object(compose(config_name=name, overrides=overrides))
