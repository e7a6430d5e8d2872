"""What the GPU check can import on the GPU machine's image (issue 20 item 1), checked here without that machine.

The image holds the distributions of bench/gpu_image_packages.txt; scripts/gpu_check.sh adds the carried wheels
(the Makefile's ``GPU_WHEELS``). Every other distribution installed here is made absent
(shared/reference/gpu_without_gpu.md section 3): a site-packages view links every entry of this environment's
site-packages except the files of those distributions (their RECORD), and a fresh interpreter started with ``-S -E``
gets only that view and imports every module the check runs. An optional import inside ``try/except`` (or a
``find_spec`` probe) passes, a hard one fails, and the failure names the missing module and its importer. A
dependency of an image package counts as present (the image's version of that package brings its own).
"""
import gzip
import importlib.metadata
import json
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench import gpu_check_imports as gi
from data import jsonl

REPO = Path(__file__).resolve().parents[2]
IMAGE_LIST = REPO / "bench" / "gpu_image_packages.txt"
PROJECT_DIST = "sambay"  # this checkout: it travels to the GPU machine as a working tree

# Run in the -S interpreter: the site-packages view (its .pth files too), then the imports.
SIMULATE = r"""
import json, site, sys
sitedirs, modules = (json.loads(a) for a in sys.argv[1:3])
for d in sitedirs:
    site.addsitedir(d)
from bench.gpu_check_imports import import_failures
print("RESULT " + json.dumps(import_failures(modules)))
"""


def image_packages() -> dict[str, str]:
    """bench/gpu_image_packages.txt: canonical name -> version ('?' where none was read)."""
    out = {}
    for n, line in enumerate(IMAGE_LIST.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            assert len(fields) == 2, f"{IMAGE_LIST}:{n}: expected 'NAME VERSION', got {line!r}"
            out[canonicalize_name(fields[0])] = fields[1]
    return out


def _dependencies(dist: str) -> set[str]:
    try:
        return {canonicalize_name(r.name) for r in gi.declared_requirements(dist)}
    except importlib.metadata.PackageNotFoundError:
        return set()  # not installed here: its requirements cannot be read, and its modules are not here either


def present_distributions() -> set[str]:
    """The image's distributions and their dependencies (transitively), the carried wheels and this project."""
    present = set(image_packages())
    todo = list(present)
    while todo:
        for dep in _dependencies(todo.pop()) - present:
            present.add(dep)
            todo.append(dep)
    return present | {canonicalize_name(d) for d in gi.makefile_gpu_wheels()} | {PROJECT_DIST}


def site_view(view: Path, present: set[str]) -> Path:
    """``view``: links to every entry of this environment's site-packages except the files of distributions not
    in ``present`` (their modules and their ``.dist-info``: to the import system and to importlib.metadata they
    are not installed). An entry that a present distribution shares (a namespace folder) stays."""
    sitedir = Path(site.getsitepackages()[0])
    keep, drop = set(), set()
    for dist in importlib.metadata.distributions(path=[str(sitedir)]):
        tops = {Path(f).parts[0] for f in dist.files or () if Path(f).parts and Path(f).parts[0] != ".."}
        (keep if canonicalize_name(dist.metadata["Name"]) in present else drop).update(tops)
    view.mkdir(parents=True)
    for entry in sitedir.iterdir():
        if entry.name not in drop - keep:
            (view / entry.name).symlink_to(entry)
    return view


def simulate_imports(modules, view: Path, extra_path: Path | None = None) -> list[dict]:
    """:func:`bench.gpu_check_imports.import_failures` in a fresh ``-S -E`` interpreter (no site-packages, no
    PYTHONPATH) whose only site-packages is ``view``."""
    sitedirs = ([str(extra_path)] if extra_path else []) + [str(view)]
    proc = subprocess.run([sys.executable, "-S", "-E", "-c", SIMULATE, json.dumps(sitedirs), json.dumps(list(modules))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def _describe(failures: list[dict]) -> str:
    return "\n".join(f"{f['module']}: {f['missing'] or f['error']} (imported by {f['importer']})" for f in failures)


def test_every_module_of_the_gpu_check_imports_on_the_gpu_image(tmp_path):
    modules = gi.check_modules()
    assert set(gi.ENTRY_POINTS) < set(modules) and "bench.gpu_check" in modules
    failures = simulate_imports(modules, site_view(tmp_path / "site", present_distributions()))
    assert not failures, ("modules the GPU check runs fail to import with only the GPU image's packages and the "
                          "carried wheels (add the distribution to GPU_WHEELS, or make the import optional):\n"
                          + _describe(failures))


def test_the_simulation_fails_a_hard_import_names_its_importer_and_passes_an_optional_one(tmp_path):
    """The method itself: a planted hard import of an absent distribution's module fails naming the module and
    the importing file and line; the same import inside try/except passes."""
    (tmp_path / "planted_hard.py").write_text("import os\nimport zstandard\n")
    (tmp_path / "planted_optional.py").write_text("try:\n    import zstandard\nexcept ImportError:\n    pass\n")
    (tmp_path / "planted_chain.py").write_text("import planted_hard\n")
    everything_but_zstandard = {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    view = site_view(tmp_path / "site", everything_but_zstandard - {"zstandard"})
    failures = simulate_imports(["planted_optional", "planted_chain"], view, extra_path=tmp_path)
    assert len(failures) == 1, failures
    f = failures[0]
    assert f["module"] == "planted_chain" and f["missing"] == "zstandard", f
    assert f["importer"].startswith("planted_hard (") and f["importer"].endswith("planted_hard.py:2)"), f


def test_zstandard_is_neither_in_the_image_nor_carried():
    """The premise of data.jsonl's optional import: if this changes, the optional import may become a hard one."""
    assert "zstandard" not in present_distributions()


def test_a_zst_file_without_zstandard_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setattr(jsonl, "zstandard", None)
    with pytest.raises(ModuleNotFoundError, match=re.escape(str(path)) + ".*zstandard"):
        jsonl.read_jsonl(path)
    gz = tmp_path / "c.jsonl.gz"  # the other formats do not need it
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    assert jsonl.read_jsonl(gz) == [{"text": "a"}]


def _image_or_carried_version(carried: set[str], image: dict[str, str], present: set[str]):
    """version_of for the static check: a carried wheel's pinned version (installed here from constraints.txt),
    the image's version where one was read, UNKNOWN where the image holds it at an unread version (or brings it
    as a dependency of one of its packages), None where neither has it."""
    def version_of(name: str) -> str | None:
        if name in carried:
            return gi.installed_version(name)
        if image.get(name, "?") != "?":
            return image[name]
        return gi.UNKNOWN if name in present else None
    return version_of


def test_carried_wheels_requirements_hold_against_the_image_versions_known():
    """Each carried wheel's declared requirements against the image's versions where KINDS.md gives one (the
    GPU check's env part repeats this against the real versions there): a known conflict fails here, for free."""
    carried = {canonicalize_name(d) for d in gi.makefile_gpu_wheels()}
    version_of = _image_or_carried_version(carried, image_packages(), present_distributions())
    problems = gi.unmet_requirements(sorted(carried), version_of)
    assert not problems, "carried wheels whose requirements the GPU image does not meet:\n" + "\n".join(problems)


def test_project_requirements_hold_for_the_image_versions_known():
    """pyproject.toml's ranges against the image's known versions and the carried wheels' pins, for every
    distribution the GPU run has (one it lacks matters only if a stage imports it: the import test's question)."""
    carried = {canonicalize_name(d) for d in gi.makefile_gpu_wheels()}
    version_of = _image_or_carried_version(carried, image_packages(), present_distributions())
    reqs = [Requirement(r) for r in tomllib.loads(gi.PYPROJECT.read_text())["project"]["dependencies"]]
    problems = [p for p in gi.unmet("pyproject.toml", reqs, version_of) if not p.endswith("is not installed")]
    assert not problems, "the GPU image's versions fall outside pyproject.toml's ranges:\n" + "\n".join(problems)


def test_the_image_list_is_sorted_unique_and_names_torch_and_triton():
    names = [line.split()[0] for line in IMAGE_LIST.read_text().splitlines() if line and not line.startswith("#")]
    assert names == sorted(set(names)) and {"torch", "triton", "packaging"} <= set(names)
