"""Moved: this shim became the console script `sambay-sft` (pyproject.toml [project.scripts], installed by
`make install`); `python -m train.sft` takes the same arguments."""
import sys

sys.exit("scripts/sft.py was replaced by the console script `sambay-sft` (installed by make install; "
         "arguments unchanged), or run `python -m train.sft` with the same arguments")
