"""The documented commands are the ones that work: parsed out of README.md and docs/*.md, not repeated here.

`make demo` is run for real (with DEMO_ARGS selecting the few-step `smoke` pipeline recipe and a temporary
run directory); `make test` is not run from inside the test suite (it would recurse), so the tests check that
it is exactly what CI runs and that it runs pytest. Every other command in a `bash` block of the README or a docs
page is checked for what it names: a Hydra entry point's overrides compose to its schema, another module of the
project accepts the options given, a make target exists, a script exists and is executable.
"""
import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf


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


# Every command in a ``bash`` block of the README and the docs pages is checked for what it names, so a renamed
# module, override key, recipe, make target or script fails here, not on a user's cluster.
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHONS = {"python", "python3", ".venv/bin/python", "torchrun"}
# Programs that are not this project's, and what a documented command uses them for.
EXTERNAL = {"git": "committing the refreshed lock", ".venv/bin/pip": "installing torch and the CUDA kernels",
            "grep": "dropping torch's pins from the lock", "sbatch": "submitting one stage to Slurm"}
# The stages a reader must find a documented command for.
STAGE_ENTRY_POINTS = {"data.prepare", "train.pretrain", "train.sft", "train.dpo", "train.evaluate",
                      "scripts.pipeline"}


def doc_commands() -> list[tuple[str, list[str]]]:
    """(``page:n``, argv) of every command in the pages' ``bash`` blocks (continuations joined, ``&&`` split)."""
    found = []
    for page in DOC_PAGES:
        blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
        lines = [ln for block in blocks for ln in re.sub(r"\\\n\s*", " ", block).splitlines()]
        commands = [args for ln in lines for part in ln.split("&&") if (args := shlex.split(part, comments=True))]
        found += [(f"{page.relative_to(REPO)}:{i + 1}", args) for i, args in enumerate(commands)]
    return found


def python_target(args: list[str]) -> tuple[str, list[str]]:
    """(module, its arguments) of a ``python``/``torchrun`` command (``-m M`` or a script path) or of ``make demo``
    (the pipeline driver with ``DEMO_ARGS``)."""
    if args[0] == "make":
        demo_args = next((a.split("=", 1)[1] for a in args[2:] if a.startswith("DEMO_ARGS=")), "")
        return "scripts.pipeline", shlex.split(demo_args)
    if "-m" in args:
        i = args.index("-m")
        return args[i + 1], args[i + 2:]
    script = next(a for a in args[1:] if a.endswith(".py"))
    return script[:-3].replace("/", "."), args[args.index(script) + 1:]


def hydra_entry(module: str):
    """(recipe folder, schema registration) of a module whose ``main`` is ``hydra_main(folder, register, task)``,
    read from its source; None for any other module. The registration is imported from the schema module the entry
    point imports it from (light: no trainer), else from the entry point itself."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    call = next((n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "hydra_main"),
                None)
    if call is None:
        return None
    folder, register = call.args[0].value, call.args[1].id
    owner = next((n.module for n in tree.body if isinstance(n, ast.ImportFrom)
                  and any(a.name == register for a in n.names)), module)
    return folder, getattr(importlib.import_module(owner), register)


def split_hydra_args(args: list[str]) -> tuple[str, list[str]]:
    """(recipe name, overrides) of a Hydra command line; ``--config-name R`` and ``--config-name=R`` both work."""
    name, overrides, rest = "demo", [], iter(args)
    for a in rest:
        if a in ("--config-name", "-cn"):
            name = next(rest)
        elif a.startswith("--config-name="):
            name = a.split("=", 1)[1]
        else:
            overrides.append(a)
    return name, overrides


def compose_recipe(folder: str, register, args: list[str]) -> None:
    register()
    name, overrides = split_hydra_args(args)
    with initialize_config_dir(config_dir=str(REPO / "recipes" / folder), version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    # A mandatory value the entry point fills at run time (a default run.name) is not the command's to give.
    for key in OmegaConf.missing_keys(cfg):
        OmegaConf.update(cfg, key, "filled-at-run-time")
    OmegaConf.to_object(cfg)


def check_module_options(module: str, args: list[str]) -> None:
    """A project module without Hydra (argparse): every ``--option`` of the command is in its ``--help``."""
    if not any(a.startswith("--") for a in args):
        return  # nothing to check beyond the module's existence; its --help may cost seconds of imports
    helped = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in helped.stdout]
    assert not unknown, f"python -m {module}: options not in its --help: {unknown}"


def check_python_command(args: list[str]) -> None:
    module, rest = python_target(args)
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    if module.split(".")[0] not in ("sambay_model", "data", "train", "recipes", "scripts", "bench"):
        return  # the standard library's (python3 -m venv)
    entry = hydra_entry(module)
    if entry is not None:
        compose_recipe(*entry, rest)
    else:
        check_module_options(module, rest)


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def check_command(args: list[str]) -> None:
    prog = args[0]
    if prog == "make":
        assert args[1] in make_targets(), f"Makefile has no target {args[1]!r}"
        if args[1] == "demo":
            check_python_command(args)
    elif prog in PYTHONS:
        check_python_command(args)
    elif prog in EXTERNAL:
        return
    else:
        path = REPO / prog
        assert path.is_file() and os.access(path, os.X_OK), (
            f"{prog}: neither a project script nor a program listed in EXTERNAL (say what it is for there)")


def test_the_docs_show_a_command_for_every_stage():
    shown = {python_target(args)[0] for _, args in doc_commands()
             if args[0] in PYTHONS or args[:2] == ["make", "demo"]}
    assert STAGE_ENTRY_POINTS <= shown, f"no documented command runs {sorted(STAGE_ENTRY_POINTS - shown)}"


@pytest.mark.parametrize("where,args", doc_commands(), ids=[where for where, _ in doc_commands()])
def test_documented_command_names_what_exists(where, args):
    check_command(args)


def test_command_check_catches_a_renamed_key_a_missing_recipe_and_an_unknown_program():
    checks = [["python", "-m", "train.pretrain", "trainer.max_stepz=10"],
              ["torchrun", "-m", "train.sft", "--config-name", "no_such_recipe"],
              ["python", "scripts/pipeline.py", "stages.pretrain.recipe_typo=x"],
              ["make", "no-such-target"], ["frobnicate", "--all"]]
    for args in checks:
        with pytest.raises((AssertionError, HydraException)):
            check_command(args)
