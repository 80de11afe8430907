"""The documentation's runnable examples run, and say what they print; every link in README.md and
docs/*.md points at a file (and heading) that exists.

A runnable example is the text between `<!-- example: NAME -->` and `<!-- /example -->` in a
docs/*.md or README.md file (the comments do not show on GitHub):

- each ```python block whose first line is `# PATH` (`# app/jobs/x.py`, `# dispatch.py`) is that
  file, written into a fresh copy of the project; `# append to PATH` adds to the project's file;
- the ```console block holds the commands (`$ ...`, run in the copy's directory one after another,
  `python` being this interpreter) followed, after each, by lines it must print. The expected lines
  must appear in that order in the output, each anywhere in a line; `...` stands for anything, and
  times, job ids, pids and durations in milliseconds are ignored on both sides.

The copy runs on a SQLite file of its own (QUEUE_CONNECTION=database, DB_CONNECTION=sqlite) with
every other setting at its default, as a new user's checkout does after `make run`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROJECT = ("main.py", "core", "bootstrap", "config", "app", "routes", ".env.example", "pytest.ini")
START = re.compile(r"^<!-- example: ([\w-]+) -->$")
FENCE = re.compile(r"^```(\w*)")
FILE = re.compile(r"^# (append to )?([\w./-]+\.py)\b")
COMMAND_TIMEOUT = 90


@dataclass
class Example:
    name: str
    page: Path
    files: list[tuple[str, str, bool]] = field(default_factory=list)     # (path, text, append)
    steps: list[tuple[str, list[str]]] = field(default_factory=list)     # (command, expected lines)


def examples() -> list[Example]:
    found: list[Example] = []
    for page in PAGES:
        current: Example | None = None
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            start = START.match(line.strip())
            if start:
                current = Example(start.group(1), page)
                found.append(current)
            elif line.strip() == "<!-- /example -->":
                current = None
            elif current is not None and FENCE.match(line):
                lang = FENCE.match(line).group(1)
                j = i + 1
                while not lines[j].startswith("```"):
                    j += 1
                block = lines[i + 1:j]
                i = j
                if lang == "python" and block and FILE.match(block[0]):
                    m = FILE.match(block[0])
                    current.files.append((m.group(2), "\n".join(block) + "\n", bool(m.group(1))))
                elif lang == "console":
                    for text in block:
                        if text.startswith("$ "):
                            current.steps.append((text[2:], []))
                        elif text.strip() and text.strip() != "...":
                            current.steps[-1][1].append(text)
            i += 1
    return found


NOISE = [(re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z?"), "TIME"),
         (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "ID"),
         (re.compile(r"\bpid \d+"), "pid N"),
         (re.compile(r"\b\d+(\.\d+)?ms\b"), "Nms"),
         (re.compile(r"\s+"), " ")]


def normal(text: str) -> str:
    for pattern, replacement in NOISE:
        text = pattern.sub(replacement, text)
    return text.strip()


def expected_pattern(line: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in normal(line).split("...")))


def check_output(command: str, output: str, expected: list[str]) -> None:
    got = [normal(line) for line in output.splitlines()]
    at = 0
    for want in expected:
        pattern = expected_pattern(want)
        while at < len(got) and not pattern.search(got[at]):
            at += 1
        assert at < len(got), f"`{command}` did not print {want!r} (in this order); it printed:\n{output}"
        at += 1
    if "Traceback" in output:
        assert any("Traceback" in line for line in expected), f"`{command}` failed:\n{output}"


def copy_project(target: Path) -> None:
    target.mkdir(parents=True)
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target / name)
    (target / "storage" / "logs").mkdir(parents=True)


def run_example(example: Example, tmp_path: Path) -> None:
    project = tmp_path / "project"
    copy_project(project)
    for path, text, append in example.files:
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a" if append else "w") as f:
            f.write(("\n" if append else "") + text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')    # a link would lose the venv
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "QUEUE_CONNECTION": "database", "DB_CONNECTION": "sqlite", "DB_DATABASE": "storage/database.sqlite",
           "APP_KEY": "base64:ZG9jcy1leGFtcGxlLWtleS0wMTIzNDU2Nzg5MDEyMzQ1Njc4OQ=="}
    assert example.steps, f"example {example.name} in {example.page.name} has no console block"
    for command, expected in example.steps:
        done = subprocess.run(["bash", "-c", command], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
        check_output(command, done.stdout, expected)


EXAMPLES = examples()


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.page.stem}-{e.name}" for e in EXAMPLES])
def test_example_runs_and_prints_what_the_page_says(example: Example, tmp_path: Path) -> None:
    run_example(example, tmp_path)


def test_every_feature_of_issue_12_has_a_runnable_example() -> None:
    """SPEC 9 and 10, and named connections: each is named in some runnable example's files."""
    text = "\n".join(body for e in EXAMPLES for _, body, _ in e.files)
    features = ["self.release(", "self.delete()", "self.fail(", "max_releases", "retry_until", "Exponential(",
                "max_exceptions", "expires_after", "expires_quietly", "dont_retry", "RateLimited(",
                "WithoutOverlapping(", "ThrottlesExceptions(", "Skip.", "FailOnException(", "def middleware(",
                ".through(", "middleware = [", "@listen(", "CONNECTIONS["]
    assert [f for f in features if f not in text] == []


# -- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*", "", heading.strip().lstrip("#").strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line))
    return found


def test_every_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []
