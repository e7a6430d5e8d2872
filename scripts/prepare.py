"""Prepare the corpus, tokenizer and SFT/DPO/eval data.

Same as `python -m data.prepare`, with the same arguments, e.g. `python scripts/prepare.py --help`.
"""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not pip-installed
    runpy.run_module("data.prepare", run_name="__main__", alter_sys=True)
