"""Held-out DPO scoring (``train.alignment.preference_scoring``) runs the reference and the policy under the training precision:
the backbone's linears under bf16 autocast when the run trains in bf16, the head in fp32 vocabulary tiles (no
``[rows, tokens, vocab]`` logits), so the reward margin compares two log-probs computed alike.

GPU condition, emulated: ``deepspeed.precision=auto`` resolves to bf16 on a GPU node but to fp32 on a CPU, which
hides a scorer that ignores the training precision (every forward is fp32 there). The tests take the dtype
``auto`` gives on CUDA (``resolve_precision`` with a CUDA device object; no GPU is touched) or set
``precision=bf16``, and run it with CPU autocast; the assertions are on the dtypes the forward computed in
(forward hooks), not on any config.
"""
import torch

import sambay_model.lm_head_loss
from train.config import DeepSpeedConfig
from train.runtime.distributed import resolve_precision


class _Record:
    """Forward hooks on every ``nn.Linear`` and a shim over the head kernel: the dtypes each part computed in."""

    def __init__(self, model, monkeypatch):
        self.linears, self.head = [], []
        self.head_module = model.get_output_embeddings()
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.register_forward_hook(self._linear)
        real = sambay_model.lm_head_loss.ChunkedLogProbFunction
        record = self.head

        class Shim:
            @staticmethod
            def apply(hidden, weight, *rest):
                out = real.apply(hidden, weight, *rest)
                record.append({"hidden": hidden.dtype, "autocast": torch.is_autocast_enabled("cpu"),
                               "logps": out[0].dtype, "vocab": weight.shape[0]})
                return out

        monkeypatch.setattr(sambay_model.lm_head_loss, "ChunkedLogProbFunction", Shim)

    def _linear(self, mod, args, output):
        self.linears.append({"head": mod is self.head_module, "output": output.dtype, "shape": tuple(output.shape)})


def test_bf16_scoring_runs_the_backbone_in_bf16_and_the_head_in_fp32_tiles(dpo_tiny, monkeypatch):
    from data.tokenizer import load_tokenizer
    from train.alignment.preference_scoring import completion_logps, load_preference_pairs
    from train.runtime.model_build import load_export

    data, export = dpo_tiny
    gpu_dtype = resolve_precision(DeepSpeedConfig(precision="auto"), torch.device("cuda", 0))  # what a GPU node runs
    assert gpu_dtype == torch.bfloat16
    model, tok = load_export(export), load_tokenizer(export)
    pairs = load_preference_pairs(data / "preference" / "heldout.jsonl", limit=4)
    rec = _Record(model, monkeypatch)
    fp32 = completion_logps(model, tok, pairs, 256, 4, compute_dtype=torch.float32)
    assert {r["output"] for r in rec.linears} == {torch.float32}
    rec.linears.clear(), rec.head.clear()
    bf16 = completion_logps(model, tok, pairs, 256, 4, compute_dtype=gpu_dtype)
    body = [r for r in rec.linears if not r["head"]]
    assert body and {r["output"] for r in body} == {torch.bfloat16}  # the training precision
    assert not [r for r in rec.linears if r["head"]]  # the head module never ran: no [rows, tokens, vocab] logits
    assert rec.head and all(h["logps"] == torch.float32 and h["autocast"] is False for h in rec.head)
    assert {h["hidden"] for h in rec.head} == {torch.float32}  # bf16 hidden states upcast before the fp32 head
    # Same model, two precisions: close but not bit-equal (so the bf16 numbers really are another computation).
    for a, b in zip(fp32, bf16):
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.5)
    assert not torch.equal(fp32[0], bf16[0])


