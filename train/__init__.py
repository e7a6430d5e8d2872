"""Training: the DeepSpeed loop shared by pretraining and SFT, TRL DPO, evaluation and reports.

Entry points: ``python -m train.pretrain``, ``train.sft``, ``train.dpo``, ``train.evaluate``.
Submodules are imported lazily by their users; nothing heavy is imported here.
"""
