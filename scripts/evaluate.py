"""Evaluate an exported model; prints the metrics JSON as its last line.

Same as `python -m train.evaluate`, with the same arguments, e.g. `python scripts/evaluate.py --help`.
"""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not pip-installed
    runpy.run_module("train.evaluate", run_name="__main__", alter_sys=True)
