"""Moved: this shim became the console script `sambay-pretrain` (pyproject.toml [project.scripts], installed by
`make install`); `python -m train.pretrain` takes the same arguments."""
import sys

sys.exit("scripts/pretrain.py was replaced by the console script `sambay-pretrain` (installed by make install; "
         "arguments unchanged), or run `python -m train.pretrain` with the same arguments")
