"""The whole-pipeline driver (``python scripts/pipeline.py``, ``sambay-pipeline``) and its schema; the other files
are notices naming the console scripts (pyproject.toml [project.scripts]) that replaced the stage shims."""
