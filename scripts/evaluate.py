"""Moved: this shim became the console script `sambay-evaluate` (pyproject.toml [project.scripts], installed by
`make install`); `python -m train.evaluate` takes the same arguments."""
import sys

sys.exit("scripts/evaluate.py was replaced by the console script `sambay-evaluate` (installed by make install; "
         "arguments unchanged), or run `python -m train.evaluate` with the same arguments")
