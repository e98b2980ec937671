"""The documentation site renders maths with no network: MathJax is served from the site.

The build test needs the docs extra (``pip install -e ".[docs]"``); CI installs it before it
runs the slow tests, where the build test lives.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc=\"([^\"]+)\"")


def _extra_javascript() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    block = re.search(r"^extra_javascript:\n((?:[ \t]+-[^\n]*\n)+)", text, re.MULTILINE)
    assert block is not None, "mkdocs.yml has no extra_javascript list"
    return [line.split("-", 1)[1].strip() for line in block.group(1).splitlines()]


def test_mkdocs_config_loads_no_script_from_the_network() -> None:
    scripts = _extra_javascript()
    assert "_static/mathjax/tex-mml-chtml.js" in scripts
    remote = [s for s in scripts if "//" in s]
    assert remote == [], f"scripts loaded from the network: {remote}"
    assert "docs/_hooks/mathjax_local.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_hook_serves_the_component_its_fonts_and_licence() -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mathjax", reason="needs the docs extra (django-static-mathjax)")
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        import mathjax_local
    finally:
        sys.path.remove(str(ROOT / "docs" / "_hooks"))
    served = dict(mathjax_local.mathjax_files(mathjax_local.mathjax_root()))
    assert "_static/mathjax/tex-mml-chtml.js" in served
    assert "_static/mathjax/LICENSE" in served
    assert "_static/mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff" in served
    # the extensions \require and the autoloader fetch at run time
    assert "_static/mathjax/input/tex/extensions/ams.js" in served
    assert all(source.is_file() for source in served.values())


@pytest.mark.slow
def test_built_site_loads_mathjax_from_itself(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mathjax", reason="needs the docs extra (django-static-mathjax)")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    pages_with_maths = [p for p in site.rglob("*.html") if 'class="arithmatex"' in p.read_text()]
    assert len(pages_with_maths) >= 3  # concepts, how-tos and the API reference use maths
    for page in pages_with_maths:
        sources = _SCRIPT_SRC.findall(page.read_text(encoding="utf-8"))
        remote = [s for s in sources if "//" in s]
        assert remote == [], f"{page.relative_to(site)} loads scripts from the network: {remote}"
        mathjax = [s for s in sources if s.endswith("mathjax/tex-mml-chtml.js")]
        assert len(mathjax) == 1, f"{page.relative_to(site)}: MathJax scripts {mathjax}"
        served = (page.parent / mathjax[0].split("?")[0]).resolve()
        assert served.is_file() and served.stat().st_size > 500_000, served
    fonts = site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert (fonts / "MathJax_Main-Regular.woff").is_file()
    assert "Apache License" in (site / "_static" / "mathjax" / "LICENSE").read_text()
