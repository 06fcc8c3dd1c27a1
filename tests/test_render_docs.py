"""The README's and the docs' result tables are what benchmarks/render_docs.py renders from the
committed result files: a changed result file without a re-render fails here."""

import render_docs  # noqa: E402


def test_committed_pages_equal_what_the_script_renders(capsys):
    assert render_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_a_changed_result_changes_the_pages(monkeypatch):
    """An evaluation figure moved by 0.01 shows in the README, the pretrained guide and the
    results page, so a stale page cannot pass the check above."""
    original = render_docs._json

    def moved(path):
        data = original(path)
        if path.name == "evaluation.json" and path.parent.name == "mnist-cert-0.3":
            data["interval@0.3"] = round(data["interval@0.3"] - 0.01, 4)
        return data

    before = render_docs.rendered()
    monkeypatch.setattr(render_docs, "_json", moved)
    after = render_docs.rendered()
    changed = {p.relative_to(render_docs.ROOT).as_posix() for p in before if before[p] != after[p]}
    assert changed == {
        "README.md",
        "docs/index.md",
        "docs/guide/pretrained.md",
        "docs/guide/training.md",
        "docs/results.md",
    }
    assert b"0.8806" in after[render_docs.ROOT / "README.md"]


def test_unknown_generated_block_is_refused():
    try:
        render_docs.render_blocks("<!-- generated: nothing -->\n<!-- end generated -->", "page")
    except SystemExit as exc:
        assert "unknown generated block 'nothing'" in str(exc)
    else:
        raise AssertionError("an unknown block rendered")
