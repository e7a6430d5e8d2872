"""Moved: this shim became the console script `sambay-dpo` (pyproject.toml [project.scripts], installed by
`make install`); `python -m train.dpo` takes the same arguments."""
import sys

sys.exit("scripts/dpo.py was replaced by the console script `sambay-dpo` (installed by make install; "
         "arguments unchanged), or run `python -m train.dpo` with the same arguments")
