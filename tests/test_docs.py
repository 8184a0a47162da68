"""The README and docs/ as a reader meets them: short, every relative link resolves, and the quick start's
test command is the one CI runs."""
import re

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "README.md",
         ROOT / "src" / "mriseg" / "shipped" / "MODEL.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_a_guide_not_a_log():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"


def test_files_named_in_backticks_exist():
    """`benchmarks/results/...` and `docs/...` paths quoted in the pages are files of the repository."""
    missing = []
    for page in PAGES:
        for path in re.findall(r"`((?:benchmarks/results|docs|src/mriseg)/[^`*<>\s]+)`", page.read_text()):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, missing


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install and quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_quick_start_test_command_then_the_slow_tier():
    commands = quick_start_commands()
    assert len(commands) == 2 and commands[0] == "pip install -e . && dvc repro"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1], "python -m pytest -q -m slow"]
    assert "python -m pytest -q -m slow" in (ROOT / "README.md").read_text(), "the README says how to run it"


def test_evidence_files_of_the_benchmark_pages_exist():
    """The study files docs/benchmarks.md and the results index name (relative to benchmarks/results/)."""
    results = ROOT / "benchmarks" / "results"
    missing = []
    for page in (ROOT / "docs" / "benchmarks.md", results / "README.md"):
        for name in re.findall(r"`([\w-]+/[\w.*-]+\.(?:md|jsonl|csv|json|txt))`", page.read_text()):
            if not list(results.glob(name)):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, missing


def test_the_distribution_name_is_the_one_the_readme_gives_and_not_the_taken_one():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "mriseg", "PyPI's mriseg is another project"
    assert f"`{project['name']}`" in (ROOT / "README.md").read_text()
    assert project["scripts"] == {"mriseg": "mriseg.cli:main"}

