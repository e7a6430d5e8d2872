"""Moved: this shim became the console script `sambay-prepare` (pyproject.toml [project.scripts], installed by
`make install`); `python -m data.prepare` takes the same arguments."""
import sys

sys.exit("scripts/prepare.py was replaced by the console script `sambay-prepare` (installed by make install; "
         "arguments unchanged), or run `python -m data.prepare` with the same arguments")
