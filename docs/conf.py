"""Sphinx configuration: API reference from the numpydoc docstrings, gallery from examples/."""

import re
import sys
from pathlib import Path

import skdeepclust

DOCS = Path(__file__).resolve().parent
EXAMPLES = DOCS.parent / "examples"
# The examples import their shared data/backbone helper (examples/_example_data.py)
# as a sibling module; sphinx-gallery runs them in this process, so put it on the path.
sys.path.insert(0, str(EXAMPLES))

project = "skdeepclust"
author = "skdeepclust developers"
copyright = "skdeepclust developers"
release = skdeepclust.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.codeobj.json"]
html_theme = "alabaster"
html_static_path = []

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
# Class pages list their methods through the autosummary template; numpydoc's own
# member tables would duplicate them (and point at undocumented inherited members).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# No intersphinx: the build must work offline (the test suite runs it without network).

# Shapes in numpydoc type fields name fitted attributes, e.g. ``(n_samples, n_clusters_)``;
# reST would read ``n_clusters_)`` as a link to a target that does not exist.
FIELD_WITH_SHAPE = re.compile(r"^\s*\w[\w, ]* : .*shape \(")
TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=[\s,)+])")


def escape_attribute_names_in_shapes(app, what, name, obj, options, lines):
    for index, line in enumerate(lines):
        if FIELD_WITH_SHAPE.match(line):
            head, shape = line.split("shape (", 1)
            lines[index] = head + "shape (" + TRAILING_UNDERSCORE.sub(r"\\_", shape)


# scikit-learn generates set_{method}_request for every fit/score argument such as
# sample_weight; their docstrings link into scikit-learn's glossary and user guide,
# which are not part of this build (and intersphinx needs the network).
METADATA_REQUEST_METHOD = re.compile(r"\.set_\w+_request$")
SKLEARN_GLOSSARY_TERM = re.compile(r":term:`([^`]*)`")
SKLEARN_GUIDE_LINK = re.compile(r":ref:`([^`<]*?)\s*<[^`>]*>`")


def unlink_sklearn_cross_references(app, what, name, obj, options, lines):
    if not METADATA_REQUEST_METHOD.search(name):
        return
    for index, line in enumerate(lines):
        line = SKLEARN_GLOSSARY_TERM.sub(r"\1", line)
        lines[index] = SKLEARN_GUIDE_LINK.sub(r"\1 of scikit-learn", line)


def setup(app):
    # Before numpydoc (priority 500), which parses the fields.
    app.connect("autodoc-process-docstring", escape_attribute_names_in_shapes, priority=100)
    app.connect("autodoc-process-docstring", unlink_sklearn_cross_references, priority=100)


sphinx_gallery_conf = {
    "examples_dirs": str(EXAMPLES),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    # examples/_*.py are helpers imported by the examples, not examples themselves.
    "ignore_pattern": r"^_|__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    # Backreferences feed the "Examples using ..." lists on the API pages.
    "backreferences_dir": "generated/backreferences",
    "doc_module": ("skdeepclust",),
}
