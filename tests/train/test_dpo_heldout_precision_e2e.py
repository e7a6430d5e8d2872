"""Held-out DPO scoring (``train.alignment.preference_scoring``) runs the reference and the policy under the training precision:
the backbone's linears under bf16 autocast when the run trains in bf16, the head in fp32 vocabulary tiles (no
``[rows, tokens, vocab]`` logits), so the reward margin compares two log-probs computed alike.

The slow end-to-end tests; the fast ones are in test_dpo_heldout_precision.py."""
import pytest
import torch

from tests.train.builders import dpo_cfg, run_dpo


@pytest.mark.slow
def test_dpo_scores_reference_and_policy_under_the_same_precision(dpo_tiny, tmp_path, monkeypatch):
    """A bf16 DPO run (accelerate's autocast, no DeepSpeed): the held-out reference (init model, before training)
    and the trained policy are both scored with the backbone in bf16."""
    import train.dpo

    data, export = dpo_tiny
    calls = []
    real = train.dpo.completion_logps

    def recording(model, *args, **kwargs):
        dtypes = []
        hooks = [m.register_forward_hook(lambda mod, a, out: dtypes.append(out.dtype))
                 for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            return real(model, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            calls.append({"compute_dtype": kwargs.get("compute_dtype"), "linears": set(dtypes)})

    monkeypatch.setattr(train.dpo, "completion_logps", recording)
    cfg = dpo_cfg(data, export, tmp_path / "run", train_limit=4, heldout_limit=2, per_device_batch_size=2,
               max_length=256)
    cfg.trainer.max_steps, cfg.trainer.save_every = 1, 1
    cfg.deepspeed.precision = "bf16"
    metrics = run_dpo(cfg)
    assert metrics["heldout_pairs"] == 2 and (tmp_path / "run" / "DONE").exists()
    assert calls == [{"compute_dtype": torch.bfloat16, "linears": {torch.bfloat16}}] * 2  # reference, policy
