"""MkDocs hook: serve MathJax with the site, so formulas render without a network.

MathJax comes from the PyPI package ``jupyter-server-mathjax`` (its static files only; installed
with ``--no-deps`` by scripts/setup.sh) and is copied to ``assets/mathjax`` of the built site;
``docs/javascripts/mathjax-config.js`` sets it up for ``pymdownx.arithmatex``'s generic output.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError

TARGET = Path("assets") / "mathjax"


def _mathjax_files() -> Path:
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "the docs need MathJax: pip install --no-deps jupyter-server-mathjax "
            "(scripts/setup.sh installs it)"
        )
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (static / "MathJax.js").is_file():
        raise PluginError(f"no MathJax.js in {static}: reinstall jupyter-server-mathjax")
    return static


def on_config(config):
    _mathjax_files()  # fail before the build, not after it
    return config


def on_post_build(config) -> None:
    shutil.copytree(_mathjax_files(), Path(config["site_dir"]) / TARGET, dirs_exist_ok=True)
