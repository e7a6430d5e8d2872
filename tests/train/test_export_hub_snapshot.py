"""A hub snapshot in, a hub snapshot out (issue 21 item 4): the published layout is read for training (model, tokenizer,
fingerprint) and a model trained from it is exported with the input's config.json, tensor names, shapes and dtypes,
tokenizer files and generation config; a run from a sambay export keeps sambay's layout."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.train.builders import REPO
from tests.train.hub_snapshot import build_hub_snapshot

# The keys of the published config.json (/work/shared/reference/hub_snapshot.md).
PUBLISHED_KEYS = {
    "architectures", "attention_dropout", "auto_map", "pad_token_id", "bos_token_id", "embd_pdrop", "eos_token_id",
    "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "layer_norm_eps",
    "max_position_embeddings", "_attn_implementation", "mb_per_layer", "model_type", "num_attention_heads",
    "num_hidden_layers", "num_key_value_heads", "resid_pdrop", "sliding_window", "torch_dtype", "tie_word_embeddings",
    "transformers_version", "use_cache", "mlp_bias", "lm_head_bias", "vocab_size",
}
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json")
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2 plus 5?"},
        {"role": "assistant", "content": "The answer is 7."}]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return build_hub_snapshot(tmp_path_factory.mktemp("hub") / "snapshot")


def stored_tensors(directory):
    """Every stored tensor of a snapshot (all its safetensors files)."""
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def official_sliding_window(value, num_layers):
    """What the published remote ``Phi4FlashConfig.__init__`` does with ``sliding_window`` (hub_snapshot.md)."""
    return [value if i < num_layers // 2 and i % 2 == 1 else None for i in range(num_layers)]


def trained_from(hub):
    """The snapshot loaded for training (fp32) and moved off its init, as a run would leave it."""
    from train.runtime.model_build import ModelBuilder

    model = ModelBuilder.from_export(hub)("cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.config.use_cache = False  # TRL's DPO does this while training
    return model


def test_snapshot_has_the_published_layout_and_loads(hub):
    import sambay_model  # noqa: F401  (registers phi4flash)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((hub / "config.json").read_text())
    assert set(config) == PUBLISHED_KEYS
    assert isinstance(config["sliding_window"], int) and config["torch_dtype"] == "bfloat16" and config["use_cache"]
    assert not (hub / "tokenizer.json").exists() and (hub / "model.safetensors.index.json").is_file()
    assert {t.dtype for t in stored_tensors(hub).values()} == {torch.bfloat16}
    assert "lm_head.weight" not in stored_tensors(hub)
    model = AutoModelForCausalLM.from_pretrained(str(hub))
    assert type(model).__name__ == "Phi4FlashForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(hub))
    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|system|>be brief<|end|><|user|>what is 2 plus 5?<|end|><|assistant|>The answer is 7.<|end|><|endoftext|>")
    assert tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True).endswith("<|end|><|assistant|>")
    assert len(tok) <= config["vocab_size"]


def test_tokenizer_without_tokenizer_json_loads_without_a_prompt_and_fingerprints(hub, tmp_path):
    # A fresh interpreter without sambay_model: the snapshot's auto_map must not make transformers ask about remote code.
    code = (f"from data.tokenizer import load_tokenizer; t = load_tokenizer({str(hub)!r}); "
            "print(type(t).__name__, t.eos_token)")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert "GPT2Tokenizer <|endoftext|>" in p.stdout and "custom code" not in p.stdout + p.stderr
    from data.tokenizer import fingerprint, load_tokenizer

    fp = fingerprint(hub)
    load_tokenizer(hub).save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "tokenizer.json").is_file() and fingerprint(tmp_path / "resaved") == fp
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in TOKENIZER_FILES:
        (edited / name).write_bytes((hub / name).read_bytes())
    cfg = json.loads((edited / "tokenizer_config.json").read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("<|end|>", "<|end|>\n")
    (edited / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert fingerprint(edited) != fp


def test_model_build_loads_the_sharded_bf16_snapshot_in_fp32(hub):
    from train.runtime.model_build import ModelBuilder

    builder = ModelBuilder.from_export(hub)
    assert builder.config.sliding_window == official_sliding_window(8, builder.config.num_hidden_layers)
    model = builder("cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    state = model.state_dict()
    stored = stored_tensors(hub)
    assert all(torch.equal(state[k], v.float()) for k, v in stored.items())
    assert torch.equal(state["lm_head.weight"], stored["model.embed_tokens.weight"].float())  # tied


def test_export_of_a_hub_run_is_the_input_layout(hub, tmp_path):
    import sambay_model  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.runtime.export import ExportTemplate, save_export

    model = trained_from(hub)
    out = tmp_path / "export"
    save_export(model, hub, out, max_shard_size=20_000)  # the tiny model's ~100 KB: several shards
    assert (out / "config.json").read_bytes() == (hub / "config.json").read_bytes()
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        assert (out / name).read_bytes() == (hub / name).read_bytes(), name
    assert not (out / "tokenizer.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    written, stored = stored_tensors(out), stored_tensors(hub)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    assert {k: (t.dtype, t.shape) for k, t in written.items()} == {k: (t.dtype, t.shape) for k, t in stored.items()}
    trained = model.state_dict()
    assert all(torch.equal(written[k], trained[k].to(torch.bfloat16)) for k in written)
    assert not all(torch.equal(written[k], stored[k]) for k in written)  # the trained weights, not the input's
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert reloaded.config.use_cache and reloaded.config.sliding_window == model.config.sliding_window
    assert AutoTokenizer.from_pretrained(str(out)).apply_chat_template(CHAT, tokenize=False).endswith("<|endoftext|>")
    assert ExportTemplate.read(out) is not None  # DPO from this SFT export exports a hub snapshot again


def test_export_below_the_shard_size_is_one_file(hub, tmp_path):
    from train.runtime.distributed import DistInfo
    from train.runtime.export import EXPORT_MAX_SHARD_SIZE, export_model

    assert EXPORT_MAX_SHARD_SIZE == "5GB"  # transformers' default, which split the published snapshot in two
    # The trainer's call: the engine's module, the init dir as the tokenizer dir, one process, ZeRO off.
    engine = SimpleNamespace(module=trained_from(hub))
    export_model(engine, hub, tmp_path / "export", DistInfo(0, 1, 0, torch.device("cpu")), zero_stage=0)
    assert sorted(p.name for p in (tmp_path / "export").glob("model*")) == ["model.safetensors"]
    assert {t.dtype for t in stored_tensors(tmp_path / "export").values()} == {torch.bfloat16}


def test_export_refuses_a_model_the_input_config_does_not_describe(hub, tmp_path):
    from train.runtime.export import save_export

    model = trained_from(hub)
    model.config.sliding_window = official_sliding_window(16, model.config.num_hidden_layers)
    with pytest.raises(ValueError, match="sliding_window"):
        save_export(model, hub, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_official_remote_config_reads_the_export_as_published(hub, tmp_path):
    """The published remote class turns an int window into the per-layer list sambay uses; given sambay's own list
    it would nest it, which is why a hub-style export must keep the int."""
    from tests.train.builders import make_init_export
    from data.tokenizer import load_tokenizer
    from train.runtime.export import save_export

    save_export(trained_from(hub), hub, tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    layers = exported["num_hidden_layers"]
    assert official_sliding_window(exported["sliding_window"], layers) == trained_from(hub).config.sliding_window
    load_tokenizer(hub).save_pretrained(tmp_path / "tokenizer")
    sambay = json.loads((make_init_export(tmp_path) / "config.json").read_text())
    assert isinstance(sambay["sliding_window"], list)
    nested = official_sliding_window(sambay["sliding_window"], sambay["num_hidden_layers"])
    assert nested[1] == sambay["sliding_window"]  # a list of lists: not publishable


def test_export_of_a_sambay_run_keeps_the_sambay_layout(tmp_path):
    from data.tokenizer import train_bpe_tokenizer
    from tests.train.builders import make_init_export
    from train.runtime.export import ExportTemplate, save_export
    from train.runtime.model_build import ModelBuilder

    train_bpe_tokenizer([f"a line {i} of words" for i in range(40)], 300, tmp_path / "tokenizer")
    init = make_init_export(tmp_path)
    assert ExportTemplate.read(init) is None
    save_export(ModelBuilder.from_export(init)("cpu"), init, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config == json.loads((init / "config.json").read_text())
    assert "auto_map" not in config and "lm_head_precision" in config and isinstance(config["sliding_window"], list)
    assert (tmp_path / "export" / "tokenizer.json").is_file() and (tmp_path / "export" / "model.safetensors").is_file()
