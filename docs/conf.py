"""Sphinx configuration for the luo documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``.  autodoc imports
``luo_core`` from the environment (``pip install -r requirements.txt`` installs
it editable), so the reference is always the code that is installed.
"""

from importlib import metadata

project = "luo"
author = "luo contributors"
copyright = "luo contributors; GPL-2.0-only"
release = metadata.version("luo-core")
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
default_role = "literal"
highlight_language = "python"
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"luo {release}"
html_theme_options = {
    "description": "Emulate Linux Live Update Orchestrator (LUO) and dev_liveupdate",
    "fixed_sidebar": True,
}
