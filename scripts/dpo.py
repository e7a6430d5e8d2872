"""DPO with TRL (under torchrun for several ranks).

Same as `python -m train.dpo`, with the same arguments, e.g. `python scripts/dpo.py --help`.
"""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when not pip-installed
    runpy.run_module("train.dpo", run_name="__main__", alter_sys=True)
