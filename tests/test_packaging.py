"""The lowest versions pyproject.toml allows are the ones .ci/minimum-versions.txt pins
(the suite was run with those), so a raised bound cannot go untested unnoticed."""

import re

import pytest
from conftest import REPO_ROOT
from packaging.version import Version  # pytest's own dependency

tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")

LOWER_BOUND = re.compile(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)$")


def _normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def test_minimum_versions_file_pins_every_lower_bound_of_pyproject():
    with open(REPO_ROOT / "pyproject.toml", "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    bounds = {}
    for requirement in dependencies:
        match = LOWER_BOUND.match(requirement)
        assert match, f"{requirement!r} is not of the form 'name>=version'"
        bounds[_normalized(match[1])] = Version(match[2])
    pins = {}
    for line in (REPO_ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_normalized(name)] = Version(version)
    assert pins == bounds


def test_submodules_are_reachable_as_attributes_of_the_package():
    import subprocess
    import sys

    code = ("import skdeepclust\nprint(skdeepclust.datasets.load_image_folder.__module__, "
            "skdeepclust.metrics.__name__, skdeepclust.clustering.TorchKMeans.__name__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["skdeepclust.datasets", "skdeepclust.metrics", "TorchKMeans"]
    import skdeepclust

    with pytest.raises(AttributeError, match="module 'skdeepclust' has no attribute 'nothing'"):
        skdeepclust.nothing
    assert {"clustering", "datasets", "embedding", "metrics", "visualization"} <= set(dir(skdeepclust))


@pytest.mark.parametrize("code", [
    "import skdeepclust",
    "from skdeepclust.cli import main\ntry:\n    main(['cluster', '--help'])\nexcept SystemExit:\n    pass",
])
def test_import_and_help_load_neither_torch_nor_scikit_learn(code):
    # Both imported them, and timm, at once: 3 s before the first line of help.
    import subprocess
    import sys

    check = "\nimport sys\nprint(sorted(name for name in ('torch', 'sklearn', 'timm') if name in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
