"""The reliability table that the reliability tests write into the README."""

from __future__ import annotations

from tests.reliability_report import BEGIN, END, Row, table, write_readme


def rows() -> list[Row]:
    return [
        Row("hostile", "case a", "t.py::test_x[a]", "Hostile x", outcome="passed"),
        Row("faults", "reader", "t.py::test_r", outcome="passed"),
        Row("hostile", "case b", "t.py::test_x[b]", "Hostile x", outcome="open issue", reason="not yet"),
        Row("hostile", "case c", "t.py::test_x[c]", "Hostile x", outcome="passed"),
        Row("fork", "fork | pipe", "t.py::test_f", outcome="open issue", reason="hangs"),
    ]


def test_cases_with_a_summary_share_one_row_and_categories_keep_their_order():
    lines = table(rows()).splitlines()
    assert lines[:2] == ["| Area | What was tried | Outcome |", "| --- | --- | --- |"]
    assert lines[2] == "| Injected store faults | reader | passed |"
    assert lines[3] == "| Hostile inputs | Hostile x | 2 of 3 cases passed; case b: open issue: not yet |"
    assert lines[4] == "| Fork | fork \\| pipe | open issue: hangs |"
    assert len(lines) == 5


def test_the_readme_changes_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    assert write_readme(rows(), readme)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n" + BEGIN) and text.endswith(END + "\n\nafter\n")
    assert "| Hostile inputs | Hostile x |" in text and "old" not in text
    assert not write_readme(rows(), readme), "unchanged content is not rewritten"
    readme.write_text("no markers")
    assert not write_readme(rows(), readme)
