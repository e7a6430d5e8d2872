"""Training: the entry points at the top, their rooms below.

Entry points (``python -m train.<name>``): ``pretrain``, ``sft``, ``dpo``, ``evaluate``, ``report`` and
``lm_harness``; ``config`` is the typed schema of pretraining and SFT and the sections every stage shares.

Rooms, lowest first (each imports only the rooms before it; ``tests/test_codebase.py`` keeps it so):
``runtime/`` (the plumbing every trainer runs inside), ``evals/`` (the evaluation suite), ``engine/`` (the
DeepSpeed loop of pretraining and SFT), ``alignment/`` (DPO's own parts). Nothing heavy is imported here.
"""
