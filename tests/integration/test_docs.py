"""The repository explains itself with what it ships.

Users get this repository and nothing else: no pointer may lead to the design notes or the
paper's text that sit outside it (cite the paper by its title, and point at a section of
docs/design.md), and every file the documentation names must exist here.
"""

from __future__ import annotations

import posixpath
import re
import subprocess

import pytest

from tests.conftest import REPO


TEXT_SUFFIXES = (".py", ".md", ".sh", ".sbatch", ".yaml", ".toml")
DESIGN_DOC = "docs/design.md"
# Backticked paths under these prefixes are checked (links are checked wherever they point).
CHECKED_PREFIXES = ("docs/", "benchmarks/results/")

# Pointers outside the repository. Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([
    r"\bDESIGN" + r"\.md\b",                  # the design notes, which users never get
    r"\bDESIGN" + r"\s+(?:section\s+)?\d",    # the same, followed by a section number
    r"\.\./" + r"shared\b",                    # anything in the folder beside the checkout
    r"\bshared/" + r"paper\b",                 # the paper's text
    r"\bdali-" + r"paper\b",
]))
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")
DESIGN_REF = re.compile(r"docs/design\.md,\s*((?:'[^'\n]+'(?:\s*,\s*|\s+and\s+)?)+)")


def repo_files() -> list[str]:
    """Tracked files plus new ones git does not ignore (so a page linked before its first
    commit counts, while ignored outputs such as runs/ never do)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the list of repository files comes from git ls-files")
    return sorted({p for p in out.decode("utf-8", "replace").split("\0") if p and (REPO / p).is_file()})


def doc_files(files: list[str]) -> list[str]:
    return [f for f in files if f in ("README.md", "BENCHMARKS.md") or re.fullmatch(r"docs/[^/]+\.md", f)]


def without_fences(text: str) -> str:
    """Markdown with fenced code blocks blanked (line numbers kept): paths in commands and
    sample output there are examples, not references."""
    out, fence = [], None
    for line in text.splitlines():
        m = re.match(r"\s{0,3}(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slugs(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a page (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(without_fences(markdown)):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def heading_titles(markdown: str) -> set[str]:
    return {t.strip() for t in HEADING.findall(without_fences(markdown))}


def expand_braces(path: str) -> list[str]:
    """`a_{x,y}.json` -> a_x.json, a_y.json (as the docs abbreviate sibling files)."""
    m = BRACES.search(path)
    if m is None:
        return [path]
    return [q for alt in m.group(1).split(",") for q in expand_braces(path[:m.start()] + alt + path[m.end():])]


class Repo:
    def __init__(self, files: list[str]):
        self.files = set(files)
        self.dirs = {posixpath.dirname(f) for f in files}
        for d in list(self.dirs):
            while d:
                d = posixpath.dirname(d)
                self.dirs.add(d)

    def resolve(self, path: str, *bases: str) -> str | None:
        """The repository path ``path`` names, tried against each base folder in turn."""
        for base in bases:
            full = posixpath.normpath(posixpath.join(base, path))
            if full.startswith("../") or full == "..":
                continue
            full = "" if full == "." else full
            if full in self.files or full in self.dirs:
                return full
        return None


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


@pytest.fixture(scope="module")
def files() -> list[str]:
    return repo_files()


def test_no_pointers_outside_the_repository(files):
    hits = []
    for rel in files:
        if not rel.endswith(TEXT_SUFFIXES):
            continue
        text = (REPO / rel).read_text(encoding="utf-8", errors="replace")
        for m in OUTSIDE.finditer(text):
            line = text.splitlines()[line_of(text, m.start()) - 1].strip()
            hits.append(f"{rel}:{line_of(text, m.start())}: {m.group(0)!r} in: {line[:140]}")
    assert not hits, (f"files outside the repository are named; point at a section of {DESIGN_DOC} "
                      f"(\"{DESIGN_DOC}, 'Heading'\") or cite the paper by its title:\n" + "\n".join(hits))


def test_links_and_named_paths_exist(files):
    repo = Repo(files)
    docs = doc_files(files)
    assert "README.md" in docs and DESIGN_DOC in docs
    problems = []
    for rel in docs:
        raw = (REPO / rel).read_text(encoding="utf-8")
        text = without_fences(raw)
        here = posixpath.dirname(rel)

        targets = [(m.start(), m.group(1)) for m in LINK.finditer(text)]
        lines = text.split("\n")
        for m in REF_DEF.finditer(text):  # a definition starts a paragraph; "[0, 1]: ..." mid-paragraph is text
            n = line_of(text, m.start())
            if n == 1 or not lines[n - 2].strip() or REF_DEF.match(lines[n - 2]):
                targets.append((m.start(), m.group(1)))
        for pos, target in targets:
            if SCHEME.match(target) or target.startswith("//"):
                continue  # a URL: not ours to check offline
            path, _, anchor = target.partition("#")
            path = path.split("?", 1)[0]
            where = f"{rel}:{line_of(text, pos)}: link {target!r}"
            found = repo.resolve(path, here) if path else rel
            if found is None:
                problems.append(f"{where}: no such file in the repository")
            elif anchor and found.endswith(".md") and found in repo.files:
                if anchor not in slugs((REPO / found).read_text(encoding="utf-8")):
                    problems.append(f"{where}: {found} has no heading with anchor #{anchor}")

        for m in CODE_SPAN.finditer(text):
            span = m.group(1).strip()
            if not span.startswith(CHECKED_PREFIXES):
                continue
            path = span.split()[0].split("#", 1)[0].rstrip(".,;:)")
            if any(c in path for c in "<>*?[]") or "..." in path:
                continue  # a pattern or placeholder, not one file
            for p in expand_braces(path):
                if repo.resolve(p, "", here) is None:
                    problems.append(f"{rel}:{line_of(text, m.start())}: `{span}`: {p} is not in the repository")
    assert not problems, "\n".join(problems)


def test_design_sections_named_elsewhere_exist(files):
    """A section of docs/design.md named anywhere in the repository (the file name, a comma,
    the heading in single quotes) is a real heading of that page."""
    titles = heading_titles((REPO / DESIGN_DOC).read_text(encoding="utf-8"))
    problems = []
    for rel in files:
        if not rel.endswith(TEXT_SUFFIXES):
            continue
        text = (REPO / rel).read_text(encoding="utf-8", errors="replace")
        for m in DESIGN_REF.finditer(text):
            for title in re.findall(r"'([^'\n]+)'", m.group(1)):
                if title not in titles:
                    problems.append(f"{rel}:{line_of(text, m.start())}: {DESIGN_DOC} has no section {title!r}")
    assert not problems, "\n".join(problems) + f"\n(its headings: {sorted(titles)})"


def test_the_checks_catch_what_they_should():
    """The patterns themselves: each forbidden pointer is caught, the allowed forms are not."""
    bad = ["see " + "DESIGN" + ".md section 2", "(" + "DESIGN" + " 3b)", "../" + "shared/x",
           "/work/shared/" + "paper/x.txt", "dali-" + "paper.txt"]
    good = ["docs/design.md, 'Metric protocols'", "the design of the loader", "shared memory"]
    assert all(OUTSIDE.search(s) for s in bad)
    assert not any(OUTSIDE.search(s) for s in good)
    md = "# Metric protocols\n\n```\n# not a heading\n```\n\n## Stop and requeue\n## Stop and requeue\n"
    assert slugs(md) == {"metric-protocols", "stop-and-requeue", "stop-and-requeue-1"}
    assert expand_braces("r/t_{a,b}_h.json") == ["r/t_a_h.json", "r/t_b_h.json"]
    repo = Repo(["docs/design.md", "README.md", "benchmarks/results/x.json"])
    assert repo.resolve("../README.md", "docs") == "README.md"
    assert repo.resolve("benchmarks/results/", "") == "benchmarks/results"
    assert repo.resolve("../../etc/passwd", "docs") is None
    assert repo.resolve("docs/missing.md", "", "docs") is None
