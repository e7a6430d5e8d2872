"""train.generate: one greedy completion equals hand-run greedy decoding (on a sambay export and on a hub-style
snapshot), the chat REPL keeps the conversation, resets it and ends at /exit, end of input and Ctrl-C, and the
settings errors name their keys."""
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import train.generate as gen
from data.tokenizer import load_tokenizer, stop_token_ids
from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from tests.train.builders import REPO, env, greedy_continuation, make_tokenizer
from tests.train.hub_snapshot import build_hub_snapshot
from train.evals.generation import conversation_prompt, load_model
from train.runtime.export import save_export

MAX_NEW = 6


def sambay_export(root: Path) -> Path:
    """A tiny export in the trainers' layout, with untied embeddings: a freshly initialised tied model predicts
    its last input token again (``<|assistant|>``, a special token decoded away), so its greedy text is empty."""
    make_tokenizer(root, 0)
    tok = load_tokenizer(root / "tokenizer")
    cfg = Phi4FlashConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=2, num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_export(Phi4FlashForCausalLM(cfg), root / "tokenizer", root / "export")
    return root / "export"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"sambay": a tiny export as the trainers write it, "hub": a tiny snapshot in the published layout}."""
    root = tmp_path_factory.mktemp("gen")
    return {"sambay": sambay_export(root), "hub": build_hub_snapshot(root / "hub")}


def hand_greedy(model_path, user_text: str, max_new: int = MAX_NEW) -> str:
    """Greedy decoding written out: a full forward pass per token (no cache, no padding), argmax, stop ids."""
    model, tok = load_model(model_path, "cpu")
    stops = stop_token_ids(tok, model.generation_config)
    ids = tok(conversation_prompt(tok, [{"role": "user", "content": user_text}]), add_special_tokens=False)["input_ids"]
    return tok.decode(greedy_continuation(model, ids, stops, max_new), skip_special_tokens=True)


def run_main(monkeypatch, *overrides, stdin: str | None = None) -> None:
    """``python -m train.generate <overrides>`` in this process (stdin from the given text)."""
    monkeypatch.setattr(sys, "argv", ["train.generate", *overrides])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        gen.main()
    finally:
        GlobalHydra.instance().clear()  # an error exit leaves Hydra initialised for the next test


@pytest.mark.parametrize("kind", ["sambay", "hub"])
def test_prompt_prints_the_greedy_completion(exports, kind, monkeypatch, capsys):
    expected = hand_greedy(exports[kind], "what is 3 plus 6?")
    assert expected, "the random model stops at once: pick another prompt so the comparison says something"
    run_main(monkeypatch, f"model_path={exports[kind]}", "prompt=what is 3 plus 6?", f"max_new_tokens={MAX_NEW}",
             "device=cpu")
    assert capsys.readouterr().out == expected + "\n"
    run_main(monkeypatch, f"model_path={exports[kind]}", "prompt=what is 3 plus 6?", f"max_new_tokens={MAX_NEW}",
             "device=cpu")
    assert capsys.readouterr().out == expected + "\n", "temperature 0 must repeat the same text"


def test_sampling_is_repeatable_per_seed(exports):
    model, tok = load_model(exports["hub"], "cpu")

    def sampled(seed):
        cfg = gen.GenerateConfig(model_path="x", temperature=1.5, seed=seed, max_new_tokens=MAX_NEW)
        return gen.ChatSession(model, tok, cfg.sampling()).reply("tell me a story")

    first = sampled(0)
    assert sampled(0) == first
    assert sampled(1) != first, "two seeds at temperature 1.5 gave one text: is sampling on?"


def spy_prompts(monkeypatch) -> list[str]:
    """The prompt of every reply train.generate asks for, in order (generation itself runs as usual)."""
    prompts, real = [], gen.generate

    def spy(model, tokenizer, batch, cfg, **kw):
        prompts.extend(batch)
        return real(model, tokenizer, batch, cfg, **kw)

    monkeypatch.setattr(gen, "generate", spy)
    return prompts


@pytest.mark.parametrize("kind", ["sambay", "hub"])
def test_chat_keeps_the_conversation_resets_and_exits(exports, kind, monkeypatch):
    prompts = spy_prompts(monkeypatch)
    model, tok = load_model(exports[kind], "cpu")
    cfg = gen.GenerateConfig(model_path=str(exports[kind]), max_new_tokens=MAX_NEW)
    session = gen.ChatSession(model, tok, cfg.sampling(), system="be brief")
    lines = ["what is 3 plus 6?", "  ", "and 4 plus 5?", "/reset", "what is 1 plus 1?", "/exit", "never read"]
    replies = []
    gen.chat_repl(session, read=lambda _: lines.pop(0), write=replies.append)
    assert lines == ["never read"], "/exit must end the session"
    assert len(prompts) == len(replies) == 3, "a blank line is no turn; /reset and /exit are commands"
    system = {"role": "system", "content": "be brief"}
    first = [system, {"role": "user", "content": "what is 3 plus 6?"}]
    assert prompts[0] == conversation_prompt(tok, first)
    second = first + [{"role": "assistant", "content": replies[0]}, {"role": "user", "content": "and 4 plus 5?"}]
    assert prompts[1] == conversation_prompt(tok, second)
    assert prompts[1].startswith(prompts[0] + replies[0] + "<|end|>"), "turn 2's prompt holds the first exchange"
    assert prompts[2] == conversation_prompt(tok, [system, {"role": "user", "content": "what is 1 plus 1?"}])


@pytest.mark.parametrize("stop", [EOFError, KeyboardInterrupt])
def test_chat_ends_at_end_of_input_and_ctrl_c(exports, stop, monkeypatch):
    prompts = spy_prompts(monkeypatch)
    model, tok = load_model(exports["sambay"], "cpu")
    session = gen.ChatSession(model, tok, gen.GenerateConfig(model_path="x", max_new_tokens=MAX_NEW).sampling())
    lines = ["hello"]

    def read(_):
        if not lines:
            raise stop
        return lines.pop(0)

    out = []
    gen.chat_repl(session, read=read, write=out.append)
    assert len(prompts) == 1 and out[-1] == "", "one reply, then a newline for the prompt line at the end"


def test_chat_from_stdin_through_main(exports, monkeypatch, capsys):
    """No prompt: the REPL reads stdin, a first turn set by prompt= and chat=true joins the conversation."""
    prompts = spy_prompts(monkeypatch)
    run_main(monkeypatch, f"model_path={exports['hub']}", f"max_new_tokens={MAX_NEW}", "device=cpu",
             "prompt=what is 3 plus 6?", "chat=true", stdin="and then?\n")
    assert len(prompts) == 2 and "what is 3 plus 6?" in prompts[1] and prompts[1].endswith("and then?<|end|><|assistant|>")
    assert capsys.readouterr().out.count(gen.USER_PROMPT) == 2, "two reads: one turn, then end of input"


def test_cli_prints_only_the_completion(exports):
    """The contract command, as a process: stdout is the completion and nothing else."""
    expected = hand_greedy(exports["hub"], "what is 3 plus 6?")
    p = subprocess.run([sys.executable, "-m", "train.generate", f"model_path={exports['hub']}",
                        "prompt=what is 3 plus 6?", f"max_new_tokens={MAX_NEW}"], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout == expected + "\n"


def test_missing_model_path_names_the_key(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(monkeypatch, "prompt=hi")
    assert exc.value.code != 0
    assert "model_path is required" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,key", [
    ({"model_path": None}, "model_path is required"),
    ({"chat": False}, "prompt is required"),
    ({"temperature": -1.0}, "temperature must be"),
    ({"top_p": 0.0}, "top_p must be"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"device": "tpu"}, "device must be"),
    ({"dtype": "float16"}, "dtype must be"),
])
def test_bad_settings_name_their_key(overrides, key):
    with pytest.raises(ValueError, match=key) as exc:
        gen.GenerateConfig(**{"model_path": "x", **overrides})
    assert "sampling." not in str(exc.value), "generate's sampling keys are top-level"


def test_a_missing_export_names_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        load_model(tmp_path / "nothing", "cpu")


def test_chat_mode_follows_the_prompt():
    assert gen.GenerateConfig(model_path="x").chat_mode
    assert not gen.GenerateConfig(model_path="x", prompt="hi").chat_mode
    assert gen.GenerateConfig(model_path="x", prompt="hi", chat=True).chat_mode
