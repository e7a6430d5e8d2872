"""LoRA through peft (train.runtime.lora, the `peft` keys): the default targets are the Linear projections of every
SambaY layer kind, wrapping freezes the base, the optimizer holds the adapters alone, the export is the merged model
in the input's layout with the adapter beside it, and DPO's reference is the base with the adapters disabled."""
import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from sambay_model import Phi4FlashConfig, Phi4FlashForCausalLM
from sambay_model.configuration_phi4flash import LayerRole
from tests.train.builders import dpo_cfg
from tests.train.hub_snapshot import build_hub_snapshot
from train.config import LORA_TARGET_MODULES, OptimConfig, PeftConfig, SFTConfig
from train.runtime import lora

ADAPTER_PARTS = ("lora_A", "lora_B")


def tiny_model(seed: int = 0) -> Phi4FlashForCausalLM:
    """Eight layers: every layer kind (Mamba, SWA, memory Mamba, full attention, GMU, cross-attention)."""
    cfg = Phi4FlashConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                          num_attention_heads=4, num_key_value_heads=2, sliding_window=8)
    torch.manual_seed(seed)
    return Phi4FlashForCausalLM(cfg)


def perturb_adapters(model, seed: int = 1) -> None:
    """lora_B starts at zero (adapted == base); random values make the adapters change the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_every_default_target_is_a_linear_of_the_model_and_every_layer_kind_is_adapted():
    model = tiny_model()
    assert {r for r in (model.config.layer_role(i) for i in range(8))} == set(LayerRole)
    by_name = {}
    for name, module in model.named_modules():
        by_name.setdefault(name.rsplit(".", 1)[-1], []).append(module)
    for target in PeftConfig().target_modules:
        assert by_name.get(target), f"default target {target!r} matches no module"
        assert all(isinstance(m, torch.nn.Linear) for m in by_name[target]), target
    wrapped = lora.wrap(model, PeftConfig())
    adapted = {name.split(".lora_")[0] for name, _ in wrapped.named_parameters() if ".lora_" in name}
    expected = {f"base_model.model.{name}" for name, m in tiny_model().named_modules()
                if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES}
    assert adapted == expected
    roles = {wrapped.get_base_model().model.layers[int(n.split(".layers.")[1].split(".")[0])].role for n in adapted}
    assert roles == set(LayerRole)
    assert not any("dt_proj" in n or "lm_head" in n or "embed" in n for n in adapted)


def test_wrapping_freezes_the_base_and_trains_only_the_adapters():
    wrapped = lora.wrap(tiny_model(), PeftConfig(r=4))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(any(part in n for part in ADAPTER_PARTS) for n in trainable)
    assert all(not p.requires_grad for n, p in wrapped.named_parameters() if ".lora_" not in n)
    a = next(p for n, p in wrapped.named_parameters() if "Wqkv.lora_A" in n)
    assert a.shape[0] == 4
    dotted = lora.wrap(tiny_model(), PeftConfig(target_modules=["mlp.fc1"]))  # a dotted suffix, as peft matches
    assert {n.split(".")[-4] for n, p in dotted.named_parameters() if p.requires_grad} == {"fc1"}


@pytest.mark.parametrize("target, message", [("Wqvk", "did you mean ['Wqkv']"), ("conv1d", "Conv1d"),
                                             ("attn", "Linear projections only")])
def test_a_bad_target_names_the_key(target, message):
    with pytest.raises(ValueError, match="peft.target_modules") as err:
        lora.wrap(tiny_model(), PeftConfig(target_modules=[target]))
    assert message in str(err.value)


def test_the_optimizer_holds_only_the_adapter_params():
    from train.engine.optim import build_optimizer

    wrapped = lora.wrap(tiny_model(), PeftConfig())
    opt = build_optimizer(wrapped, SFTConfig().model, OptimConfig(), 8192)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    adapters = {id(p) for n, p in wrapped.named_parameters() if ".lora_" in n}
    assert held == adapters
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(tiny_model().requires_grad_(False), SFTConfig().model, OptimConfig(), 8192)


def test_merge_gives_the_adapted_logits_and_the_adapter_reloads(tmp_path):
    wrapped = lora.wrap(tiny_model(), PeftConfig(dropout=0.0))
    perturb_adapters(wrapped)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        with wrapped.disable_adapter():
            base = wrapped(input_ids=ids).logits
        merged = lora.merge_for_export(wrapped, tmp_path / "export")
        assert not any(".lora_" in k or "base_layer" in k for k in merged.state_dict())
        assert (adapted - base).abs().max() > 1e-2  # the adapters matter, so the equality below says something
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)
        reloaded = PeftModel.from_pretrained(tiny_model(), str(tmp_path / "adapter"))
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)


def test_a_hub_snapshot_exports_merged_in_its_own_layout_with_the_adapter_beside(tmp_path):
    from train.runtime.export import save_export
    from train.runtime.model_build import load_export

    hub = build_hub_snapshot(tmp_path / "hub")
    wrapped = lora.wrap(load_export(hub), PeftConfig(dropout=0.0))
    perturb_adapters(wrapped)
    save_export(wrapped, hub, tmp_path / "run" / "export")
    index = json.loads((hub / "model.safetensors.index.json").read_text())
    stored = {}
    for file in set(index["weight_map"].values()):
        stored.update(load_file(str(hub / file)))
    written = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    assert {k: (v.dtype, v.shape) for k, v in written.items()} == {k: (v.dtype, v.shape) for k, v in stored.items()}
    assert (tmp_path / "run" / "export" / "config.json").read_bytes() == (hub / "config.json").read_bytes()
    changed = {k for k in written if not torch.equal(written[k], stored[k])}
    assert changed and all(k.rsplit(".", 2)[-2] in LORA_TARGET_MODULES for k in changed)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_dpo_refuses_a_frozen_copy_reference_with_lora():
    from train.alignment.dpo_config import DPORunConfig, DPOSection

    with pytest.raises(ValueError, match="peft.enabled=true with dpo.reference=frozen_copy"):
        DPORunConfig(dpo=DPOSection(init_from="x", reference="frozen_copy"), peft=PeftConfig(enabled=True))


def _completion_logps(model, batch) -> torch.Tensor:
    """Summed log-probs of the completion tokens from plain logits (no fused head), per row."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    logps = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    return (logps * batch["completion_mask"][:, 1:]).sum(1)


def test_dpo_reference_is_the_base_model_with_adapters_disabled(dpo_tiny, tmp_path):
    from data.tokenizer import load_tokenizer
    from train.dpo import build_trainer, load_inputs
    from train.runtime.distributed import DistInfo
    from train.runtime.model_build import load_export
    from train.runtime.run_dir import RunDir

    cfg = dpo_cfg(*dpo_tiny, tmp_path / "run", per_device_batch_size=2)
    cfg.peft.enabled, cfg.peft.dropout = True, 0.0
    inputs = load_inputs(cfg)
    model, tokenizer = load_export(inputs.init_from), load_tokenizer(inputs.init_from)
    base = copy.deepcopy(model)
    rd = RunDir(tmp_path / "run")
    rd.create()
    training = build_trainer(cfg, "{}", rd, DistInfo(0, 1, 0, torch.device("cpu")), model, tokenizer,
                             inputs.offline[:4])
    trainer = training.trainer
    assert lora.is_peft(trainer.model) and trainer.ref_model is None  # no second model copy
    perturb_adapters(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])  # what a training step gets
    with torch.no_grad():
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
        expected = _completion_logps(base, batch)
        policy = _completion_logps(trainer.model, batch)
    training.logger.close()
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, rtol=1e-4, atol=1e-3)
    assert (policy - expected).abs().max() > 1e-2  # the adapters are on outside TRL's reference context
