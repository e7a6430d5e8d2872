"""DPO's own parts around TRL's ``DPOTrainer`` (driven by ``train.dpo``): its schema (``dpo_config``), on-policy
pair sampling (``on_policy``) and the held-out preference scorer (``preference_scoring``).

Layer: imports ``train.evals`` (generation, grading), ``train.runtime`` and ``train.config``.
"""
