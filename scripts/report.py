"""Rebuild a pipeline's report.md / report.png from its stage directories.

Same as `python -m train.report`, with the same arguments, e.g. `python scripts/report.py --help`.
"""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not pip-installed
    runpy.run_module("train.report", run_name="__main__", alter_sys=True)
