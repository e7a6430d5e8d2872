"""Moved: this shim became the console script `sambay-report` (pyproject.toml [project.scripts], installed by
`make install`); `python -m train.report` takes the same arguments."""
import sys

sys.exit("scripts/report.py was replaced by the console script `sambay-report` (installed by make install; "
         "arguments unchanged), or run `python -m train.report` with the same arguments")
