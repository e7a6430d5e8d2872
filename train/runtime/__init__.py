"""The run plumbing every trainer runs inside: process group and collectives (``distributed``), dying with the
launcher (``launcher_death``), stop signals (``stop_signal``, and ``hf_resume`` for the HF Trainer), the run
directory, its name and its lock (``run_dir``, ``run_name``, ``run_lock``), metrics, building, adapting (LoRA,
``lora``) and exporting models (``model_build``, ``export``), eval mode in the middle of training
(``model_mode``), token-loss sums (``token_loss``) and result JSON files (``results_io``).

Layer: imports ``train.config`` and the packages below ``train`` only; every other room builds on it.
"""
