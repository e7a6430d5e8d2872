"""constraints.txt is a real lock: well-formed pins that cover the declared dependencies, satisfy pyproject's ranges,
are what `make install` installs with, and are what this environment holds."""
import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def locked() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt:{number}: not a name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_lock_pins_torch_without_a_local_build_tag_as_the_makefile_installs_it():
    assert locked()["torch"] == "2.13.0"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^TORCH_SPEC \?= torch==2\.13\.0$", makefile, re.M)


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = locked()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {req}"


def test_make_install_passes_the_lock_to_every_pip_install():
    dry = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    pip_lines = [ln for ln in dry.stdout.splitlines() if "pip install" in ln]
    assert len(pip_lines) == 2 and all("-c constraints.txt" in ln for ln in pip_lines), pip_lines


@pytest.mark.lock
def test_this_environment_holds_exactly_the_locked_versions():
    """Deselected by `make test-latest`, whose environment is unlocked on purpose."""
    wrong = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = (version, "missing")
            continue
        if Version(installed).public != Version(version).public:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from constraints.txt (locked, installed): {wrong}"
