"""train.evaluate and its parts on a tiny SambaY export and tiny data built in a temp dir."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.builders import build_eval_data, build_eval_export


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    data = build_eval_data(root / "data")
    return data, build_eval_export(data, root / "export")


def _cfg(data, model, out, **over):
    from train.evals.evaluate_config import EvalConfig
    from train.evals.perplexity import PerplexityConfig
    from train.evals.retrieval import RetrievalConfig

    cfg = EvalConfig(model_path=str(model), data_dir=str(data), output_dir=str(out))
    cfg.math.limit = 4
    cfg.math.sampling.max_new_tokens = 6
    cfg.perplexity = PerplexityConfig(seq_len=64, batch_rows=2, max_batches=2)
    cfg.retrieval = RetrievalConfig(context_lengths=[48], num_queries=2)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_score_file_cli_contract(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"completion": "so \\boxed{12}", "answer": "12"}, {"completion": "#### 7", "answer": "8"},
            {"completion": "no idea", "answer": "3"}, {"completion": "\\boxed{\\frac{1}{2}}", "answer": "0.5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", f"score_file={path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["extracted_fraction"] == pytest.approx(0.75)


def test_score_file_bad_record_names_file(tmp_path):
    from train.evals.math_accuracy import load_samples

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"completion": "1", "answer": "1"}) + "\n" + json.dumps({"text": "x", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: record 2 .*needs 'completion'"):
        load_samples(path)


def test_pass_at_1_averages_over_k_samples():
    from train.evals.math_accuracy import score_samples

    samples = [{"id": "a", "completion": "\\boxed{1}", "answer": "1"},
               {"id": "a", "completion": "\\boxed{2}", "answer": "1"},
               {"id": "b", "completion": "\\boxed{5}", "answer": "4"},
               {"id": "b", "completion": "none", "answer": "4"}]
    metrics, graded = score_samples(samples)
    assert metrics["accuracy"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert metrics["pass_at_k"] == pytest.approx(0.5) and metrics["k"] == 2
    assert metrics["extracted_fraction"] == pytest.approx(0.75)
    assert [g["correct"] for g in graded] == [True, False, False, False]


def test_blind_baseline_is_the_family_modal_answer_rate():
    from train.evals.math_accuracy import blind_baseline_accuracy

    problems = [{"template_id": "a/0", "answer": "3"}, {"template_id": "a/5", "answer": "3"},
                {"template_id": "a/1", "answer": "4"}, {"template_id": "b/0", "answer": "7"}]
    assert blind_baseline_accuracy(problems) == 0.75          # "3" for family a (2 of 3), "7" for b (1 of 1)
    assert blind_baseline_accuracy(problems + [{"answer": "1"}]) is None   # no family to condition on


def test_batched_left_padded_generation_matches_single(tiny):
    from train.evaluate import load_model
    from train.evals.generation import SamplingConfig, chat_prompt, generate

    _, export = tiny
    model, tok = load_model(export)
    prompts = [chat_prompt(tok, q) for q in ["What is 2 + 3?", "Ann has 4 apples and buys 7 more. How many?", "Hi"]]
    cfg = SamplingConfig(max_new_tokens=6, batch_size=3)
    batched = generate(model, tok, prompts, cfg)
    single = [generate(model, tok, [p], cfg)[0] for p in prompts]
    assert batched == single
    sampled = generate(model, tok, prompts, SamplingConfig(max_new_tokens=4, temperature=1.0, num_samples=2))
    assert [len(s) for s in sampled] == [2, 2, 2]


def test_sampling_config_rejects_k_with_greedy():
    from train.evals.generation import SamplingConfig

    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(num_samples=4, temperature=0.0)


def test_perplexity_matches_model_loss(tiny):
    from data.loader import PackedLoader
    from train.evals.perplexity import PerplexityConfig, evaluate_perplexity
    from train.evaluate import load_model

    data, export = tiny
    model, _ = load_model(export)
    cfg = PerplexityConfig(seq_len=64, batch_rows=2, max_batches=1)
    got = evaluate_perplexity(model, str(data / "pretrain"), cfg)
    batch = PackedLoader(sources=[(str(data / "pretrain"), 1.0)], split="val", seq_len=64, global_batch_rows=2).next_batch()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], labels=batch["labels"], doc_ids=batch["doc_ids"]).loss.item()
    assert got["val_loss"] == pytest.approx(ref, rel=1e-5)
    assert got["perplexity"] == pytest.approx(float(torch.tensor(ref).double().exp()), rel=1e-5)


def test_perplexity_of_a_diverged_model_is_inf_and_fails_its_gate(tiny):
    import math

    from train.evals.perplexity import PerplexityConfig, evaluate_perplexity
    from train.runtime.token_loss import perplexity_from_loss
    from train.evaluate import load_model
    from train.evals.gates import GateFailed, check_gate

    data, export = tiny
    model, _ = load_model(export)
    model.config.logits_multiplier = 1e6  # logits in the millions: a token loss far beyond exp's float range
    got = evaluate_perplexity(model, str(data / "pretrain"), PerplexityConfig(seq_len=64, batch_rows=2, max_batches=1))
    assert got["val_loss"] > 1000 and got["perplexity"] == math.inf
    with pytest.raises(GateFailed, match="perplexity = inf > max"):
        check_gate("sft", got, {"metric": "perplexity", "max": 1000.0})
    assert math.isnan(perplexity_from_loss(float("nan"))) and perplexity_from_loss(2.0) == pytest.approx(math.exp(2))


def test_unigram_perplexity_is_add_one_train_frequencies_on_the_scored_tokens(tiny):
    from collections import Counter

    from data.loader import PackedLoader
    from data.shards import open_split
    from train.evals.perplexity import PerplexityConfig, evaluate_perplexity
    from train.evaluate import load_model

    data, export = tiny
    model, _ = load_model(export)
    vocab = model.config.vocab_size
    got = evaluate_perplexity(model, str(data / "pretrain"), PerplexityConfig(seq_len=64, batch_rows=2, max_batches=2))
    # By hand: counts of the train split's tokens, and the targets of the same two val batches the model scored.
    train = Counter(int(t) for shard in open_split(data / "pretrain", "train")[1] for t in shard.tokens)
    total = sum(train.values())
    loader = PackedLoader(sources=[(str(data / "pretrain"), 1.0)], split="val", seq_len=64, global_batch_rows=2,
                          rank=0, world_size=1, seed=0, split_documents=True)
    targets = [int(t) for _ in range(2) for t in loader.next_batch()["labels"][:, 1:].flatten() if t != -100]
    assert len(targets) == got["val_tokens"]
    nll = -sum(math.log((train[t] + 1) / (total + vocab)) for t in targets) / len(targets)
    assert got["unigram_perplexity"] == pytest.approx(math.exp(nll), rel=1e-9)
    assert got["unigram_perplexity"] > 1.0
    off = evaluate_perplexity(model, str(data / "pretrain"),
                              PerplexityConfig(seq_len=64, batch_rows=2, max_batches=2, unigram_split=None))
    assert "unigram_perplexity" not in off and off["perplexity"] == got["perplexity"]
    with pytest.raises(ValueError, match=r"perplexity\.unigram_split: .*no split 'nope'"):
        evaluate_perplexity(model, str(data / "pretrain"), PerplexityConfig(seq_len=64, batch_rows=2, max_batches=1,
                                                                             unigram_split="nope"))


@pytest.mark.parametrize("logits_multiplier", [1.0, 2.5])
def test_preference_logps_equal_full_logits_scoring(tiny, logits_multiplier):
    from data.tokenizer import load_tokenizer
    from train.alignment.preference_scoring import completion_logps, encode_pair_side, load_preference_pairs
    from train.evaluate import load_model

    data, export = tiny
    model, _ = load_model(export)
    model.config.logits_multiplier = logits_multiplier
    tok = load_tokenizer(export)
    pairs = load_preference_pairs(data / "preference" / "heldout.jsonl", limit=3)
    chosen, rejected = completion_logps(model, tok, pairs, max_length=96, batch_size=4)
    expected = []
    with torch.no_grad():
        for p in pairs:
            for side in ("chosen", "rejected"):
                ids, n_prompt = encode_pair_side(tok, p["prompt"], p[side], 96)
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
                logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
                expected.append(logp[n_prompt - 1:].sum())
    expected = torch.stack(expected)
    torch.testing.assert_close(chosen, expected[0::2], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(rejected, expected[1::2], rtol=1e-5, atol=1e-3)


def test_retrieval_example_fits_length(tiny):
    import random

    from data.tokenizer import load_tokenizer
    from train.evals.retrieval import make_example

    data, _ = tiny
    tok = load_tokenizer(data / "tokenizer")
    prompt, answer = make_example(tok, 200, random.Random(0))
    assert 120 <= len(prompt) <= 200
    number = tok.decode(answer).strip()
    assert len(number) == 8 and number[3] == "-" and number in tok.decode(prompt)


def test_run_evaluation_writes_eval_json_and_refuses_overwrite(tiny, tmp_path):
    from data.atomic import OutputExistsError
    from train.evaluate import run_evaluation

    data, export = tiny
    out = tmp_path / "eval"
    metrics = run_evaluation(_cfg(data, export, out))
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("accuracy", "extracted_fraction", "perplexity", "retrieval_accuracy"):
        assert key in saved
    assert saved["num_problems"] == 4
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"completion", "answer", "correct", "extracted"} <= set(samples[0])
    # Every accuracy carries its Wilson interval; the per-problem outcomes the paired tests read sit beside it.
    from train.evals.stats import load_outcomes, wilson_interval

    assert saved["accuracy_ci95"] == pytest.approx(list(wilson_interval(saved["accuracy"] * 4, 4)))
    assert saved["retrieval_queries"] == 2
    assert saved["retrieval_accuracy_ci95"] == pytest.approx(list(wilson_interval(saved["retrieval_accuracy"] * 2, 2)))
    outcomes = load_outcomes(out / "per_problem.jsonl")
    assert list(outcomes) == [s["id"] for s in samples]
    assert outcomes == {s["id"]: float(s["correct"]) for s in samples}
    assert sum(outcomes.values()) / 4 == pytest.approx(saved["accuracy"])
    with pytest.raises(OutputExistsError):
        run_evaluation(_cfg(data, export, out))


def test_tokenizer_mismatch_is_refused_before_writing(tiny, tmp_path):
    from data.tokenizer import TokenizerMismatchError
    from train.evaluate import run_evaluation

    _, export = tiny
    other = build_eval_data(tmp_path / "other", vocab=300, seed=3)
    out = tmp_path / "eval"
    with pytest.raises(TokenizerMismatchError, match="tokenizer mismatch"):
        run_evaluation(_cfg(other, export, out))
    assert not out.exists()


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots for p in sorted(r.rglob("*"))}


def test_dry_run_cli_checks_everything_and_writes_nothing(tiny, tmp_path):
    import os

    data, export = tiny
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _tree(data, export)
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", "--config-name=demo", "dry_run=true",
                           f"model_path={export}", f"data_dir={data}", f"output_dir={out}"],
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])["dry_run"]
    assert report["model_type"] == "phi4flash" and report["num_parameters"] > 0
    assert report["output"] == str(out / "eval.json")
    assert report["evaluations"]["math"]["problems"] == str(data / "reasoning" / "heldout.jsonl")
    assert report["evaluations"]["perplexity"]["shard_dir"] == str(data / "pretrain")
    assert not out.exists() and not any(cwd.iterdir()) and _tree(data, export) == before


def test_dry_run_missing_heldout_fails_naming_it(tiny, tmp_path):
    import shutil

    from train.evaluate import dry_run, run_evaluation

    data, export = tiny
    partial = tmp_path / "data"
    shutil.copytree(data, partial)
    (partial / "reasoning" / "heldout.jsonl").unlink()
    out = tmp_path / "eval"
    for fn in (dry_run, run_evaluation):  # the real run fails the same way, before loading the model
        with pytest.raises(FileNotFoundError, match=r"math\.problems: .*reasoning/heldout\.jsonl does not exist"):
            fn(_cfg(partial, export, out))
    shutil.rmtree(partial / "pretrain")
    cfg = _cfg(partial, export, out)
    cfg.math.enabled = False
    with pytest.raises(FileNotFoundError, match=r"perplexity\.shard_dir: .*pretrain does not exist"):
        dry_run(cfg)
    cfg.perplexity.enabled = False
    assert set(dry_run(cfg)["evaluations"]) == {"retrieval"}
    assert not out.exists()


def test_dry_run_refuses_an_existing_output_like_a_run(tiny, tmp_path):
    from data.atomic import OutputExistsError
    from train.evaluate import dry_run

    data, export = tiny
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="eval.json already exists"):
        dry_run(_cfg(data, export, out))
    assert dry_run(_cfg(data, export, out, overwrite=True))["output"] == str(out / "eval.json")
    assert (out / "eval.json").read_text() == "{}"
    cfg = _cfg(data, export, out, overwrite=True)
    cfg.perplexity.split = "test"
    with pytest.raises(ValueError, match=r"perplexity\.split: .* no split 'test'"):
        dry_run(cfg)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (REPO / "recipes" / "evaluate").glob("*.yaml")))
def test_every_evaluate_recipe_dry_runs(tiny, tmp_path, recipe):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.evals.evaluate_config import register_evaluate_schema
    from train.evaluate import dry_run

    register_evaluate_schema()  # the recipes' `evaluate_schema` default: registered here, not by whichever test ran before
    data, export = tiny
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "evaluate"), version_base=None):
        dcfg = compose(config_name=recipe, overrides=[f"model_path={export}", f"data_dir={data}",
                                                      f"output_dir={tmp_path / 'eval'}", "dry_run=true"])
    report = dry_run(OmegaConf.to_object(dcfg))
    assert set(report["evaluations"]) == {"math", "perplexity", "retrieval"}
    assert not (tmp_path / "eval").exists()


# ---- math.prompt_template and math.answer_formats --------------------------------------------------------------
def test_default_prompt_template_renders_the_sft_prompt():
    from data.reasoning import PROMPT_TEMPLATE, format_prompt, generate_problems
    from train.evals.evaluate_config import MathEvalConfig
    from train.evals.math_accuracy import render_prompt

    assert MathEvalConfig().prompt_template == PROMPT_TEMPLATE
    for p in generate_problems(12, "heldout", seed=1) + [{"question": "Is {x} a {} brace?"}]:
        rendered = render_prompt(PROMPT_TEMPLATE, p["question"])
        assert rendered == format_prompt(p["question"])
        assert rendered == p["question"] + "\nSolve step by step and end with \\boxed{answer}."


def test_custom_prompt_template_renders_question_and_literal_braces():
    from train.evals.math_accuracy import check_prompt_template, render_prompt

    template = check_prompt_template("Q: {question}\nA ({question}) in \\boxed{{}}.", "math.prompt_template")
    assert render_prompt(template, "2+{y}?") == "Q: 2+{y}?\nA (2+{y}?) in \\boxed{}."


@pytest.mark.parametrize("template, match", [
    ("Solve it.", r"math\.prompt_template: 'Solve it\.' has no \{question\} placeholder"),
    ("{problem}", r"math\.prompt_template: unknown placeholder \{problem\}"),
    ("{question} then \\boxed{}", r"math\.prompt_template: unknown placeholder \{\}.*doubled"),
    ("{question!r}", r"math\.prompt_template: unknown placeholder \{question!r\}"),
    ("{question} {", r"math\.prompt_template: Single '\{'.*doubled"),
])
def test_prompt_template_errors_name_the_key(template, match):
    from train.evals.evaluate_config import MathEvalConfig

    with pytest.raises(ValueError, match=match):
        MathEvalConfig(prompt_template=template)


def test_answer_formats_config_validation():
    from train.evals.evaluate_config import MathEvalConfig
    from train.evals.math_grader import AnswerFormat

    assert MathEvalConfig().answer_formats == [AnswerFormat.boxed, AnswerFormat.hash]
    assert MathEvalConfig(answer_formats=["answer_is", "last_number"]).answer_formats == [
        AnswerFormat.answer_is, AnswerFormat.last_number]
    with pytest.raises(ValueError, match=r"math\.answer_formats: unknown answer format 'the_answer'; valid names: "
                                         r"\['boxed', 'hash', 'answer_is', 'last_number'\]"):
        MathEvalConfig(answer_formats=["the_answer"])


def _compose(recipe, overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from train.evals.evaluate_config import register_evaluate_schema

    register_evaluate_schema()
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "evaluate"), version_base=None):
        return OmegaConf.to_object(compose(config_name=recipe, overrides=overrides))


def test_recipe_overrides_of_the_math_keys():
    from hydra.errors import ConfigCompositionException

    from train.evals.math_grader import AnswerFormat

    cfg = _compose("demo", ["math.answer_formats=[answer_is,boxed]", "math.prompt_template='Q: {question} A:'"])
    assert cfg.math.answer_formats == [AnswerFormat.answer_is, AnswerFormat.boxed]
    assert cfg.math.prompt_template == "Q: {question} A:"
    with pytest.raises(ConfigCompositionException) as err:
        _compose("demo", ["math.answer_formats=[boxed,nope]"])
    assert "expected one of [boxed, hash, answer_is, last_number]" in str(err.value.__cause__)
    assert "math.answer_formats[1]" in str(err.value.__cause__)
    with pytest.raises(ValueError, match=r"math\.prompt_template: unknown placeholder \{q\}"):
        _compose("demo", ["math.prompt_template='Q: {q}'"])


def test_score_file_answer_formats(tmp_path):
    from train.evals.evaluate_config import EvalConfig, MathEvalConfig
    from train.evaluate import run_evaluation

    path = tmp_path / "c.jsonl"
    rows = [{"completion": "Let me think. 7 * 8 = 56.\nThe answer is 56.", "answer": "56"},
            {"completion": "The answer is $1,234$.", "answer": "1234"},
            {"completion": "The answer is 5.", "answer": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", f"score_file={path}",
                           "math.answer_formats=[answer_is]"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(2 / 3) and got["extracted_fraction"] == 1.0
    assert got["answer_formats"] == ["answer_is"]
    default = run_evaluation(EvalConfig(score_file=str(path)))
    assert default["accuracy"] == 0.0 and default["extracted_fraction"] == 0.0
    assert default["answer_formats"] == ["boxed", "hash"]
    last = run_evaluation(EvalConfig(score_file=str(path), math=MathEvalConfig(answer_formats=["boxed", "last_number"])))
    assert last["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_math_path_grades_the_answer_is_format(tiny, tmp_path, monkeypatch):
    """train.evaluate on the tiny export with the model's sampling replaced by a fixed answer (a random model
    writes no sentences): the prompt is the configured template in the chat template, and "The answer is 56."
    is right with answer_formats [answer_is] and not extracted with the default."""
    import train.evals.math_accuracy as math_accuracy
    from data.tokenizer import load_tokenizer
    from train.evals.generation import chat_prompt
    from train.evaluate import run_evaluation

    data, export = tiny
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p0", "question": "What is 7 * 8?", "answer": "56"}) + "\n"
                        + json.dumps({"id": "p1", "question": "What is 50 + 6?", "answer": "56"}) + "\n")
    seen = []

    def fixed_generate(model, tokenizer, prompts, sampling, progress=False):
        seen.append((type(model).__name__, prompts))
        return [["Seven eights.\nThe answer is 56."] for _ in prompts]

    monkeypatch.setattr(math_accuracy, "generate", fixed_generate)
    results = {}
    for name, formats in (("default", None), ("answer_is", ["answer_is"])):
        overrides = [f"model_path={export}", f"data_dir={data}", f"output_dir={tmp_path / name}",
                     f"math.problems={problems}", "math.prompt_template='Problem: {question} Reply briefly.'",
                     "perplexity.enabled=false", "retrieval.enabled=false"]
        cfg = _compose("smoke", overrides + ([f"math.answer_formats=[{','.join(formats)}]"] if formats else []))
        results[name] = run_evaluation(cfg)
    assert results["default"]["accuracy"] == 0.0 and results["default"]["extracted_fraction"] == 0.0
    assert results["answer_is"]["accuracy"] == 1.0 and results["answer_is"]["extracted_fraction"] == 1.0
    assert results["answer_is"]["num_problems"] == 2
    samples = [json.loads(line) for line in (tmp_path / "answer_is" / "samples.jsonl").read_text().splitlines()]
    assert [s["extracted"] for s in samples] == ["56", "56"]
    assert seen[0][0] == "Phi4FlashForCausalLM"
    expected = [chat_prompt(load_tokenizer(export), f"Problem: {q} Reply briefly.")
                for q in ("What is 7 * 8?", "What is 50 + 6?")]
    assert seen[0][1] == expected and seen[1][1] == expected


def test_own_problems_without_prepared_data_dry_runs(tiny, tmp_path):
    """docs/evaluation.md's command for a model with no data.prepare directory: only math and retrieval run."""
    from train.evaluate import dry_run

    _, export = tiny
    problems = tmp_path / "mine.jsonl"
    problems.write_text(json.dumps({"question": "What is 7 * 8?", "answer": "56"}) + "\n")
    cfg = _compose("demo", [f"model_path={export}", f"math.problems={problems}", "math.limit=0",
                            "check_tokenizer=false", "perplexity.enabled=false",
                            "math.answer_formats=[boxed,answer_is,last_number]", f"data_dir={tmp_path / 'none'}",
                            f"output_dir={tmp_path / 'eval'}"])
    report = dry_run(cfg)
    assert set(report["evaluations"]) == {"math", "retrieval"}
    assert report["evaluations"]["math"]["num_problems"] == 1
    assert report["evaluations"]["math"]["answer_formats"] == ["boxed", "answer_is", "last_number"]
    assert not (tmp_path / "eval").exists()
