"""What a reader of the documentation site and the public API meets: rendered maths, clean API
pages, a curated top-level namespace, nothing that points outside the repository."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nemon

ROOT = Path(__file__).resolve().parents[1]
ROLES = re.compile(r":(class|func|mod|meth|data|attr|exc|obj):`")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: the one scripts/test.sh built (``$NEMON_SITE_DIR``), else built here."""
    built = os.environ.get("NEMON_SITE_DIR")
    if built and (Path(built) / "index.html").is_file():
        return Path(built)
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        check=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    return out


@pytest.mark.slow
def test_every_page_with_maths_loads_mathjax(site):
    assert (site / "assets" / "mathjax" / "MathJax.js").is_file()
    pages = [p for p in site.rglob("index.html") if 'class="arithmatex"' in p.read_text()]
    assert {p.parent.name for p in pages} >= {"maths", site.name}  # the home page and maths
    for page in pages:
        html = page.read_text()
        assert "mathjax-config.js" in html and "mathjax/MathJax.js" in html, page


@pytest.mark.slow
def test_api_reference_shows_no_roles_private_bases_or_dunder_members(site):
    html = (site / "api" / "index.html").read_text()
    assert not ROLES.search(html)
    assert "Bases:" not in html and "_DenseLayer" not in html
    assert not re.search(r'id="nemon[\w.]*\.__all__"', html)
    for name in ("nemon.fit", "nemon.Recipe", "nemon.certify", "nemon.export_onnx"):
        assert f'id="{name}"' in html, name


def test_docstrings_use_one_style_without_sphinx_roles():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "src").rglob("*.py")
        if ROLES.search(p.read_text())
    ]
    assert offenders == []


def test_nothing_points_outside_the_repository():
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "src").rglob("*.py")]
    for path in texts:
        text = path.read_text()
        assert "../shared" not in text and "MATH.md" not in text, path


def test_docstrings_cite_sections_that_exist():
    anchors = set(re.findall(r"\{#([\w-]+)\}", (ROOT / "docs" / "maths.md").read_text()))
    for path in (ROOT / "src").rglob("*.py"):
        for anchor in re.findall(r"docs/maths\.md#([\w-]+)", path.read_text()):
            assert anchor in anchors, f"{path.name} cites docs/maths.md#{anchor}"


def test_the_public_namespace_is_curated():
    names = set(nemon.__all__)
    assert 25 <= len(names) <= 40
    for name in names:
        assert hasattr(nemon, name), name
    plumbing = {"ImplicitSolve", "implicit_solve", "Equilibrium", "FixedPointSystem", "ADJOINTS"}
    plumbing |= {"norm_inf_plain", "norm_inf_from_input", "perron_frobenius", "mu_1", "mu_2"}
    assert not names & plumbing
    verbs = {
        "fit",
        "certify",
        "pgd",
        "interval_loss",
        "export_onnx",
        "load_pretrained",
        "save",
        "load",
    }
    assert verbs <= names
    assert nemon.export.export_onnx is nemon.export_onnx  # the submodule is an attribute too


def test_the_guarantees_page_states_the_limits_the_code_enforces():
    from nemon.app.arguments import MAX_THREADS
    from nemon.validation import MAX_ITER, MAX_STATES, MIN_TOL

    text = " ".join((ROOT / "docs" / "guide" / "guarantees.md").read_text().split())
    assert f"`tol` from `{MIN_TOL:g}`" in text
    assert f"`max_iter` at most {MAX_ITER:,}".replace(",", " ") in text
    assert f"at most {MAX_STATES:,}".replace(",", " ") in text
    assert f"`--threads` at most {MAX_THREADS}" in text
    assert f"{MAX_STATES**2 * 4 / 2**30:g} GiB" in text
