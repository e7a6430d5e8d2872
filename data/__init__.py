"""sambay data pipeline: tokenizers, shard sets, the packed loader, SFT/preference/reasoning data.

Entry point: ``python -m data.prepare [--config-name RECIPE] [overrides]``.
"""
