"""The reliability table: what the reliability tests tried, and what happened.

A reliability test carries ``@pytest.mark.reliability(category, what)`` (``what`` may
use ``{name}`` fields of the test's parameters; ``summary="..."`` makes the README show
all the cases of a parametrized test as one row) and may take the ``reliability`` fixture
to add measured details (``reliability.note("50 kills, 12 mid-download")``); those go
to the terminal summary, not to the README, so the README only changes when outcomes
change.

When a session runs every test of every ``tests/test_reliability_*.py`` file (nothing
deselected, no early stop), the table between ``<!-- reliability:begin -->`` and
``<!-- reliability:end -->`` in README.md is rewritten (only if it changed). Set
``ROXXEL_RELIABILITY_README=0`` to leave the README alone.

The hooks are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ITERATIONS",
    "Row",
    "iterations",
    "pytest_collection_finish",
    "pytest_configure",
    "pytest_deselected",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "reliability",
]

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN = "<!-- reliability:begin -->"
END = "<!-- reliability:end -->"
ENV_ITERATIONS = "ROXXEL_RELIABILITY_ITERATIONS"
ENV_README = "ROXXEL_RELIABILITY_README"
ITERATIONS = 50
CATEGORIES = {
    "faults": "Injected store faults",
    "crash": "SIGKILL crash loops",
    "processes": "Concurrent processes",
    "hostile": "Hostile inputs",
    "leaks": "Leaks and shutdown",
    "fork": "Fork",
}
_NOTES = pytest.StashKey[list]()
_FILES = "test_reliability_*.py"


def iterations(default: int = ITERATIONS) -> int:
    """Iterations of each crash loop: ``$ROXXEL_RELIABILITY_ITERATIONS`` or ``default``."""
    text = os.environ.get(ENV_ITERATIONS, "").strip()
    if not text:
        return default
    value = int(text)
    if value < 1:
        raise ValueError(f"{ENV_ITERATIONS} must be a positive integer, got {text!r}")
    return value


@dataclass
class Row:
    category: str
    what: str
    nodeid: str
    summary: str | None = None  # README text shared by every case of the test
    outcome: str = "not run"
    reason: str = ""
    notes: list[str] = field(default_factory=list)


class _Notes:
    """The ``reliability`` fixture: measured details of one test, for the summary."""

    def __init__(self, notes: list[str]) -> None:
        self._notes = notes

    def note(self, text: str) -> None:
        self._notes.append(text)


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> _Notes:
    notes: list[str] = []
    request.node.stash[_NOTES] = notes
    return _Notes(notes)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability(category, what, summary=None): a reliability case, listed in the README's table "
        f"(categories: {', '.join(CATEGORIES)})",
    )
    config._reliability_rows = {}  # type: ignore[attr-defined]
    config._reliability_partial = False  # type: ignore[attr-defined]


def _describe(item: pytest.Item) -> tuple[str, str, str, str | None] | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    category, what = marker.args
    if category not in CATEGORIES:
        raise ValueError(f"{item.nodeid}: unknown reliability category {category!r}")
    params = getattr(getattr(item, "callspec", None), "params", {})
    return category, what.format(**params), item.nodeid, marker.kwargs.get("summary")


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("reliability") for item in items):
        items[0].config._reliability_partial = True  # type: ignore[attr-defined]


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    rows: dict[str, Row] = config._reliability_rows  # type: ignore[attr-defined]
    files = set()
    for item in session.items:
        described = _describe(item)
        if described is not None:
            rows[item.nodeid] = Row(*described)
            files.add(Path(str(item.path)).name)
    expected = {p.name for p in (REPO / "tests").glob(_FILES)}
    if not rows or files != expected:
        config._reliability_partial = True  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    rows: dict[str, Row] = getattr(item.config, "_reliability_rows", {})
    row = rows.get(item.nodeid)
    if row is None:
        return
    report = outcome.get_result()
    xfail = getattr(report, "wasxfail", None)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped and xfail is not None:
            row.outcome, row.reason = "open issue", xfail.removeprefix("reason: ")
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            row.outcome, row.reason = "skipped", str(reason).removeprefix("Skipped: ")
        elif report.failed:
            row.outcome = "FAILED"
        elif xfail is not None:
            row.outcome = "FAILED"  # a strict xfail that passed: the issue is fixed, update the test
        else:
            row.outcome = "passed"
        row.notes = list(item.stash.get(_NOTES, []))
    elif report.when == "teardown" and report.failed:
        row.outcome = "FAILED"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _outcome(row: Row) -> str:
    if row.outcome == "open issue":
        return f"open issue: {row.reason}"
    if row.outcome == "skipped" and row.reason:
        return f"skipped: {row.reason}"
    return row.outcome


def _lines(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(category, what, outcome) per README row: the cases of a test with a summary merged."""
    out: list[tuple[str, str, str]] = []
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.summary is None:
            out.append((row.category, row.what, _outcome(row)))
            continue
        key = row.nodeid.split("[", 1)[0]
        if key not in groups:
            groups[key] = []
            out.append((row.category, row.summary, key))  # outcome filled in below
        groups[key].append(row)
    for i, (category, what, key) in enumerate(out):
        cases = groups.get(key)
        if cases is None:
            continue
        bad = [c for c in cases if c.outcome != "passed"]
        if not bad:
            outcome = f"passed ({len(cases)} cases)" if len(cases) > 1 else "passed"
        else:
            shown = "; ".join(dict.fromkeys(f"{c.what}: {_outcome(c)}" for c in bad))
            outcome = f"{len(cases) - len(bad)} of {len(cases)} cases passed; {shown}"
        out[i] = (category, what, outcome)
    return out


def table(rows: list[Row]) -> str:
    """The markdown table of ``rows``, grouped by category in CATEGORIES order."""
    order = list(CATEGORIES)
    lines = [
        "| Area | What was tried | Outcome |",
        "| --- | --- | --- |",
    ]
    for category, what, outcome in sorted(_lines(rows), key=lambda line: order.index(line[0])):
        lines.append(f"| {CATEGORIES[category]} | {_escape(what)} | {_escape(outcome)} |")
    return "\n".join(lines)


def _summary(rows: list[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    parts = [f"{n} {name}" for name, n in sorted(counts.items())]
    return f"{len(rows)} cases: " + ", ".join(parts) + "."


def write_readme(rows: list[Row], path: Path = README) -> bool:
    """Put the table between the markers in ``path``; True if the file changed."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return False
    body = (
        f"{BEGIN}\n"
        f"<!-- written by the test suite (tests/reliability_report.py); do not edit by hand -->\n"
        f"{table(rows)}\n\n{_summary(rows)}\n{END}"
    )
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: body, text, count=1, flags=re.S)
    if new == text:
        return False
    path.write_text(new)
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    rows: dict[str, Row] = getattr(config, "_reliability_rows", {})
    if not rows or config._reliability_partial or session.shouldstop:  # type: ignore[attr-defined]
        return
    if any(row.outcome == "not run" for row in rows.values()):
        return
    if os.environ.get(ENV_README, "1") == "0":
        return
    config._reliability_written = write_readme(list(rows.values()))  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows: dict[str, Row] = getattr(config, "_reliability_rows", {})
    ran = [row for row in rows.values() if row.outcome != "not run"]
    if not ran:
        return
    terminalreporter.section("reliability")
    for row in ran:
        notes = f" [{'; '.join(row.notes)}]" if row.notes else ""
        reason = f" ({row.reason})" if row.reason else ""
        terminalreporter.write_line(f"{row.outcome:>10}  {row.what}{reason}{notes}")
    if getattr(config, "_reliability_written", False):
        terminalreporter.write_line(f"README.md reliability table updated ({_summary(ran)})")
    elif config._reliability_partial or any(r.outcome == "not run" for r in rows.values()):  # type: ignore[attr-defined]
        terminalreporter.write_line("README.md not updated: not every reliability test ran")
