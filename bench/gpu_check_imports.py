"""The GPU check's first question (issue 20 item 1): does every module the check runs import in this environment,
and do the carried wheels' declared requirements hold for the versions installed beside them?

The wheels of ``make gpu-wheels`` are installed ``--no-deps`` next to the GPU image's own packages, so nothing but
this check compares what they require with what the image holds. Both checks take seconds and answer with a list
naming each missing module and its importer (``path:line`` of the ``import``), or each distribution whose
requirement is not met. ``tests/scripts/test_gpu_image_imports.py`` runs :func:`import_failures` on CPU against the
image's package list (bench/gpu_image_packages.txt) with every other distribution made absent; only module-level
imports are seen (an import inside a function that a stage reaches later is not).

Stdlib and ``packaging`` only (both in the GPU image), so importing this module cannot itself fail there.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import traceback
from pathlib import Path
from typing import Callable, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

try:  # Python >= 3.11 (the GPU image has 3.12); on 3.10 the project's own requirements are not read
    import tomllib
except ModuleNotFoundError:
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
# The entry points the check's stages launch (issue 20 item 1 names them); bench/gpu_check*.py are added by glob.
ENTRY_POINTS = ("data.prepare", "train.pretrain", "train.sft", "train.dpo", "train.evaluate")
MAKEFILE = REPO / "Makefile"
PYPROJECT = REPO / "pyproject.toml"


def check_modules() -> tuple[str, ...]:
    """Every module the GPU check runs: the entry points and the check's own ``bench/gpu_check*.py``."""
    return ENTRY_POINTS + tuple(f"bench.{p.stem}" for p in sorted((REPO / "bench").glob("gpu_check*.py")))


def root_cause(exc: BaseException) -> BaseException:
    """The deepest ``ModuleNotFoundError`` naming a module in ``exc``'s chain (transformers' lazy modules re-raise
    a missing dependency as a generic message ``from`` the real one), else ``exc``."""
    found, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def importer_of(exc: BaseException) -> str:
    """``module (file:line)`` of the innermost ``import`` statement the exception passed through: the frame
    nearest the failure that is not importlib's machinery."""
    found = "?"
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        name = frame.f_globals.get("__name__", "?")
        if frame.f_code.co_filename.startswith("<frozen") or name.startswith("importlib"):
            continue
        found = f"{name} ({frame.f_code.co_filename}:{lineno})"
    return found


def import_failures(modules: Iterable[str]) -> list[dict]:
    """Import each module; one record per module that fails: the missing module (``ModuleNotFoundError``, found
    through the exception's chain) or the error, and its importer. A module another one already failed on is
    reported again for each module that reaches it."""
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever stops an import (a version check, a missing library)
            cause = root_cause(exc)
            failures.append({"module": module, "missing": getattr(cause, "name", None),
                             "error": f"{type(cause).__name__}: {cause}"[:500], "importer": importer_of(cause)})
    return failures


def makefile_gpu_wheels(makefile: Path = MAKEFILE) -> list[str]:
    """The distributions ``make gpu-wheels`` carries: the Makefile's ``GPU_WHEELS`` (its one source of truth)."""
    text = makefile.read_text().replace("\\\n", " ")
    match = re.search(r"^GPU_WHEELS\s*\?=(.*)$", text, re.M)
    if not match:
        raise ValueError(f"{makefile}: no 'GPU_WHEELS ?=' line")
    return match.group(1).split()


def carried_distributions(site: str | None) -> list[str]:
    """The carried distributions: those installed in ``site`` (scripts/gpu_check.sh's private target) when given,
    else the Makefile's ``GPU_WHEELS`` names (the dry run, or a GPU run without wheels)."""
    if site and Path(site).is_dir():
        return sorted({d.metadata["Name"] for d in importlib.metadata.distributions(path=[site])})
    return makefile_gpu_wheels()


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def declared_requirements(dist: str) -> list[Requirement]:
    """``dist``'s unconditional requirements for this interpreter (no extras; markers evaluated)."""
    out = []
    for line in importlib.metadata.requires(dist) or ():
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


UNKNOWN = "?"  # a version_of() answer: the distribution is there, its version is not known (the image list's '?')


def unmet(requirer: str, reqs: Iterable[Requirement], version_of: Callable[[str], str | None]) -> list[str]:
    """One line per requirement not met: the requirer, the requirement, what is there (``version_of(name)``: a
    version, :data:`UNKNOWN` (present, version not known: not judged) or None (absent))."""
    problems = []
    for req in reqs:
        found = version_of(canonicalize_name(req.name))
        if found is None:
            problems.append(f"{requirer} requires {req}: {req.name} is not installed")
        elif found != UNKNOWN and not req.specifier.contains(found, prereleases=True):
            problems.append(f"{requirer} requires {req}: {req.name} {found} is installed")
    return problems


def unmet_requirements(dists: Iterable[str], version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """:func:`unmet` for the declared requirements of each carried distribution (installed here)."""
    problems = []
    for dist in dists:
        have = installed_version(dist)
        if have is None:
            problems.append(f"{dist}: carried but not installed")
            continue
        problems += unmet(f"{dist} {have}", declared_requirements(dist), version_of)
    return problems


def project_problems(pyproject: Path = PYPROJECT) -> dict:
    """This project's own requirements (``pyproject.toml``; the checkout is not pip-installed on the GPU machine):
    ``unmet``, the installed distributions outside the declared range; ``absent``, those not installed, which
    matters only where a stage imports them (the import check above says whether one does)."""
    if tomllib is None:
        return {"unmet": [], "absent": ["(not read: tomllib needs Python >= 3.11)"]}
    reqs = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    reqs = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    installed = [r for r in reqs if installed_version(r.name) is not None]
    return {"unmet": unmet(f"{pyproject.name}", installed, installed_version),
            "absent": sorted(r.name for r in reqs if installed_version(r.name) is None)}
