"""MkDocs hook: serve MathJax from the site itself, so that maths renders with no network.

The MathJax 3 browser build comes from the ``django-static-mathjax`` package (docs extra),
which ships MathJax's ``es5/`` directory as package data and has no dependencies (Django is
only needed to *serve* it through Django, which we do not do). This hook adds the files the
``tex-mml-chtml`` component loads (the component itself, its CommonHTML fonts, the TeX and
MathML extensions it loads on demand, the accessibility and menu code) to the site under
``_static/mathjax/``, with MathJax's Apache-2.0 licence beside them. ``mkdocs.yml`` then lists
``_static/mathjax/tex-mml-chtml.js`` in ``extra_javascript``: a page loads it from the site,
and MathJax finds its fonts and extensions relative to that script.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SITE_DIR = "_static/mathjax"
COMPONENT = "tex-mml-chtml.js"
# top-level folders of es5/ that tex-mml-chtml.js may load from at run time
_RUNTIME_DIRS = ("a11y", "input", "output/chtml", "sre", "ui")


def mathjax_root() -> Path:
    """The ``es5/`` directory of the installed MathJax build (raises PluginError if absent)."""
    spec = importlib.util.find_spec("mathjax")
    origin = spec.origin if spec is not None else None
    root = Path(origin).parent / "static" / "mathjax" / "es5" if origin else None
    if root is None or not (root / COMPONENT).is_file():
        found = f"package 'mathjax' at {origin}" if origin else "no package 'mathjax'"
        raise PluginError(
            f"docs/_hooks/mathjax_local.py: MathJax's browser build was not found ({found} "
            f"without static/mathjax/es5/{COMPONENT}). Install the docs extra: "
            "pip install -e '.[docs]' (it brings django-static-mathjax)."
        )
    return root


def mathjax_files(root: Path) -> list[tuple[str, Path]]:
    """(site path, source file) for every file the site serves, the licence included."""
    chosen = [(f"{SITE_DIR}/{COMPONENT}", root / COMPONENT)]
    for folder in _RUNTIME_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                chosen.append((f"{SITE_DIR}/{path.relative_to(root).as_posix()}", path))
    licence = root.parent / "LICENSE"
    if licence.is_file():
        chosen.append((f"{SITE_DIR}/LICENSE", licence))
    return chosen


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for site_path, source in mathjax_files(mathjax_root()):
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    return files
