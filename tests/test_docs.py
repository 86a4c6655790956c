"""The documentation builds without a single warning, examples included.

Sphinx runs in a subprocess (so the suite's in-process network block does not
apply); the build is configured to need no network (no intersphinx).
"""

import importlib.util
import subprocess
import sys

import pytest
from conftest import CIFAR10_ARCHIVE, REPO_ROOT, SIMCLR_RESNET18

DOCS_REQUIREMENTS = ["sphinx", "numpydoc", "sphinx_gallery", "matplotlib"]


def missing_requirement():
    """Why the documentation cannot be built here, or None if it can."""
    absent = [name for name in DOCS_REQUIREMENTS if importlib.util.find_spec(name) is None]
    if absent:
        return f"documentation requirements not installed: {', '.join(absent)}"
    for needed in (CIFAR10_ARCHIVE, SIMCLR_RESNET18):
        if not needed.is_file():
            return f"the examples need {needed} (../shared is absent)"
    return None


@pytest.mark.slow
def test_documentation_builds_without_warnings(tmp_path):
    reason = missing_requirement()
    if reason:
        print(f"skipping the documentation build: {reason}")
        pytest.skip(reason)
    # Build from a copy-free source tree but into tmp_path: -d keeps the doctrees
    # out of docs/_build so that a developer's incremental build is not disturbed.
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(REPO_ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]
    html = tmp_path / "html"
    for page in ["index.html", "user_guide.html", "api.html",
                 "generated/skdeepclust.ImageEmbedder.html",
                 "auto_examples/plot_quickstart.html"]:
        assert (html / page).is_file(), f"{page} was not built"
    assert "accuracy" in (html / "auto_examples" / "plot_quickstart.html").read_text()
