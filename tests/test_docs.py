"""The documentation a user reads stays true: README.md and docs/*.md link only to files that exist (and to
headings that exist), the README's set-up commands run what they name, CI runs the README's test command, and
docs/architecture.md names every module of the tree."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target) and ![alt](target)
HTML_SOURCE = re.compile(r"""<(?:img|a)\s[^>]*?(?:src|href)=["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside a code block is an example, not a link)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(heading) for heading in HEADING.findall(prose(page.read_text(encoding="utf-8")))}


def relative_links(page: Path) -> list[str]:
    text = prose(page.read_text(encoding="utf-8"))
    targets = LINK.findall(text) + HTML_SOURCE.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, mailto: ...


def first_bash_block(text: str) -> str:
    match = re.search(r"^```bash\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no ```bash block"
    return match.group(1)


def command_lines(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def marker_expression(command: str) -> str | None:
    match = re.search(r"pytest\b.*?\s-m\s+(\"[^\"]*\"|'[^']*'|\S+)", command)
    return None if match is None else match.group(1).strip("\"'")


def test_docs_exist():
    assert DOCS, "docs/*.md is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_stays_short_and_shows_its_pictures():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md should stay a short page: move details into docs/"
    for image, limit_kb in (("docs/images/embedded_grid.png", 200), ("docs/images/workflow_text_to_image.png", 300)):
        if image in text:
            assert (ROOT / image).stat().st_size < limit_kb * 1024, f"{image} is over {limit_kb} KB"
    assert "docs/images/embedded_grid.png" in text


def test_readme_setup_block_names_real_commands():
    """The first block: install + `muse generate ...`, and install the test deps + the test command."""
    lines = command_lines(first_bash_block(README.read_text(encoding="utf-8")))
    generate = next((line for line in lines if "muse generate" in line), None)
    tests = next((line for line in lines if "pytest" in line), None)
    assert generate and tests, f"the first bash block should install and generate, then run the tests: {lines}"
    assert 'pip install -e ".[test]"' in tests

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    scripts = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", pyproject, re.S | re.M)
    assert scripts and re.search(r'^muse\s*=\s*"muse_core\.cli:main"', scripts.group(1), re.M), \
        "the `muse` console script must be declared in pyproject.toml [project.scripts]"

    # the README's `muse generate ...` parses with the real parser (no model is loaded)
    from muse_core.cli import build_parser  # noqa: PLC0415  (imports torch: only this test needs it)

    words = shlex.split(generate.split("&&")[-1])
    assert words[0] == "muse"
    args = build_parser().parse_args(words[1:])
    assert args.command == "generate" and args.prompt

    help_run = subprocess.run([sys.executable, "-m", "muse_core", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr
    assert "generate" in help_run.stdout


def test_readme_test_command_is_what_ci_runs():
    readme_tests = next(line for line in command_lines(first_bash_block(README.read_text(encoding="utf-8")))
                        if "pytest" in line)
    ci_tests = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci_tests, ".ci/run runs no pytest command"
    expected = marker_expression(readme_tests)
    assert expected, f"the README's test command selects no markers: {readme_tests}"
    assert [marker_expression(line) for line in ci_tests] == [expected], \
        f".ci/run should run the README's test selection -m {expected!r}: {ci_tests}"


def test_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(path.relative_to(ROOT).as_posix() for folder in ("muse_core", "nodes", "tools", "tests",
                                                                       "benchmarks")
                     for path in (ROOT / folder).rglob("*.py")
                     if path.name != "__init__.py" or path.parent.name == "muse_core")
    missing = [module for module in modules if f"`{module}`" not in page]
    assert not missing, f"docs/architecture.md does not mention {missing}: add a line for each new module"


def test_readme_lists_every_node_and_workflow():
    text = README.read_text(encoding="utf-8")
    from tools.comfy_offline import load_pack  # noqa: PLC0415  (imports the pack as ComfyUI does)

    names = load_pack().NODE_DISPLAY_NAME_MAPPINGS.values()
    assert not [name for name in names if name not in text], "README.md's node table misses nodes"
    workflows = sorted(path.stem for path in (ROOT / "workflows").glob("*.json"))
    assert workflows and not [name for name in workflows if f"`{name}`" not in text], \
        "README.md's workflow table misses workflows"
