"""README.md stays true: its references are generated from the tables, its commands exist."""

from pathlib import Path

from valqd.docs import render

README = Path(__file__).resolve().parent.parent / "README.md"


def test_references_are_current():
    text = README.read_text()
    assert render(text) == text, "run `python -m valqd.docs` to regenerate README.md"


def test_setup_commands_come_first():
    text = README.read_text()
    start = text.index("## Start here")
    assert text.index("pip install . && valqd") > start
    assert text.index("pip install -e '.[test]' && python -m pytest") > start
    assert text.index("## Start here") < text.index("## Using it")


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pip install -q -e '.[test]'" in ci
    assert ci.strip().endswith("python -m pytest")
