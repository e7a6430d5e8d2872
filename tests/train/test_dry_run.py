"""``trainer.dry_run=true`` builds and checks everything, prints one JSON line per run and writes nothing; a
missing shard set is an error naming its path (pretraining and SFT)."""
import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from train.config import register_sft_schema
from tests.train.builders import REPO, TINY, base_overrides, env, make_data


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_pretrain_dry_run_writes_nothing_and_missing_data_is_named(tmp_path):
    shards = make_data(tmp_path / "data")
    before = files_under(tmp_path)
    cmd = [sys.executable, "-m", "train.pretrain", "run.name=t", f"run.dir={tmp_path / 'run'}",
           f"data.sources=[{{path:{shards},weight:1.0}}]", *TINY, "trainer.dry_run=true"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith('{"dry_run"'))
    summary = json.loads(line)["dry_run"]
    assert summary["data_manifests"] == 1 and summary["params"] > 0 and summary["run_dir"] == str(tmp_path / "run")
    assert files_under(tmp_path) == before  # no run directory, lock, metrics, nor Hydra output

    missing = tmp_path / "nowhere" / "pretrain"
    p = subprocess.run([*cmd[:5], f"data.sources=[{{path:{shards},weight:1.0}},{{path:{missing},weight:1.0}}]",
                        *cmd[6:]], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert f"data.sources[1].path: {missing} is not a shard set (no manifest.json)" in p.stderr
    assert files_under(tmp_path) == before


def test_sft_dry_run_checks_every_stage_and_writes_nothing(sft_setup, tmp_path, capsys):  # noqa: F811
    from train.sft import run

    run_dir = tmp_path / "r"
    register_sft_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "sft"), version_base=None):
        cfg = compose(config_name="demo", overrides=base_overrides(sft_setup, run_dir) + ["trainer.dry_run=true"])
    assert run(cfg) == 0
    lines = [json.loads(x)["dry_run"] for x in capsys.readouterr().out.splitlines() if x.startswith('{"dry_run"')]
    # Stage two starts from stage one's export, which a dry run never makes: the recipe's model stands in.
    assert [s["run_name"] for s in lines] == ["sft_demo/one", "sft_demo/two"]
    assert all(s["data_manifests"] == 1 for s in lines)
    assert not run_dir.exists()

    missing = tmp_path / "gone"
    cfg.sft.stages[1].sources[0].path = str(missing)  # a DictConfig: run() converts it
    with pytest.raises(FileNotFoundError, match=rf"sft.stages\[two\].sources\[0\].path: {missing} is not a shard set"):
        run(cfg)
    assert not run_dir.exists()
