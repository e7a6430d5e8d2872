"""Thin stage entry points and the whole-pipeline driver (``python scripts/pipeline.py``)."""
