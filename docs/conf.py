"""Sphinx configuration for the forkthread documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "forkthread"
author = "the forkthread developers"
copyright = "2026, the forkthread developers"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "lab/results.md"]  # lab/results.md is included by lab.md
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
suppress_warnings = ["myst.header"]
