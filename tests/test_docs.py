"""README.md and docs/ stay true to the code: links, make targets, command flags, exit codes."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import import_module
from importlib.metadata import distribution
from pathlib import Path

import click
import pytest

from alexnet_onnx.runtime.errors import COMMON_EXIT_CODES, EXIT_CODES, EXIT_DIVERGED, EXIT_SOME_FAILED
from conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, ROOT / "artifacts" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
# Command-specific exit codes, beside the common ones every command's --help lists.
EXTRA_EXIT_CODES = {"onnx-predict": {EXIT_SOME_FAILED}, "train-alexnet": {EXIT_DIVERGED}, "export-onnx": set(),
                    "onnx-serve": set(), "onnx-bench": set()}

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")  # a span may wrap onto the next line
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w/.-])--[a-z][a-z0-9-]*")
MAKE = re.compile(r"\bmake\s+([a-z][\w-]*)")
ARGPARSE_FLAG = re.compile(r"add_argument\(\s*\"(--[a-z0-9-]+)\"")
ANY_COMMAND = "any command"
# A command line ends at a pipe, a redirection, a `;`, `&&`, a shell comment or the end of the line.
COMMAND_END = re.compile(r"\s(?:\||>|;|&&|#)")


@lru_cache(maxsize=None)
def commands() -> dict[str, click.Command]:
    """The project's console scripts and their click commands, as installed."""
    found = {}
    for entry in distribution("alexnet-onnx").entry_points:
        if entry.group == "console_scripts":
            command = entry.load()
            if not isinstance(command, click.Command):  # a thin wrapper around its module's `main`
                command = import_module(entry.module).main
            found[entry.name] = command
    return found


@lru_cache(maxsize=None)
def module_names() -> dict[str, str]:
    """`-m PACKAGE` spellings (e.g. what torchrun launches) of each command."""
    names = {}
    for entry in distribution("alexnet-onnx").entry_points:
        if entry.group == "console_scripts" and entry.module.endswith(".cli"):  # PACKAGE/__main__ runs PACKAGE.cli
            names[entry.module.removesuffix(".cli")] = entry.name
    return names


def options(name: str) -> set[str]:
    command = commands()[name]
    params = command.get_params(click.Context(command, info_name=name))  # with --help
    return {opt for param in params for opt in (*param.opts, *param.secondary_opts)}


def runnable() -> dict[str, set[str]]:
    """Each way the docs spell a program of this repository -> its option names: the console
    scripts, their `-m PACKAGE` form, and the benchmark scripts (their argparse options)."""
    found = {name: options(name) for name in commands()}
    found.update({f"-m {module}": options(name) for module, name in module_names().items()})
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        found[f"benchmarks/{script.name}"] = set(ARGPARSE_FLAG.findall(script.read_text(encoding="utf-8")))
    return found


def code_texts(text: str) -> list[str]:
    """Fenced blocks (continuation lines joined) and inline code spans (each on one line)."""
    blocks = [m.group(0).replace("\\\n", " ") for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return blocks + [span.replace("\n", " ") for span in INLINE.findall(prose)]


def named_flags(text: str) -> list[tuple[str, str]]:
    """(program, --flag) for every flag written after a program's name in code, up to the end of
    that command; flags in an inline span that names no program go to ANY_COMMAND."""
    programs = runnable()
    found = []
    for code in code_texts(text):
        named = False
        for line in code.splitlines():
            for spelling in programs:
                for match in re.finditer(rf"(?<![\w.-]){re.escape(spelling)}(?![\w.-])", line):
                    named = True
                    rest = line[match.end():]
                    end = COMMAND_END.search(rest)
                    found += [(spelling, flag) for flag in FLAG.findall(rest[: end.start() if end else None])]
        if not named and "\n" not in code:
            found += [(ANY_COMMAND, flag) for flag in FLAG.findall(code)]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_make_targets_exist(page):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, re.M))
    named = {t for code in code_texts(page.read_text(encoding="utf-8")) for t in MAKE.findall(code)}
    assert named - targets == set(), f"{page.name} names make targets the Makefile lacks"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_flags_exist_in_their_command(page):
    programs = runnable()
    programs[ANY_COMMAND] = set().union(*(options(name) for name in commands()))
    flags = named_flags(page.read_text(encoding="utf-8"))
    missing = sorted({f"{program} {flag}" for program, flag in flags if flag not in programs[program]})
    assert not missing, f"{page.name} names flags that --help lacks: {missing}"


def test_flags_are_read_from_code_and_attributed():
    text = ("```bash\ntrain-alexnet --data-dir d \\\n  --epochs 1 | tee log --not-this\n```\n"
            "and `onnx-predict\n--top-k 3`, `--seed 1`, `python benchmarks/camera_photos.py --per-class 2`")
    assert named_flags(text) == [("train-alexnet", "--data-dir"), ("train-alexnet", "--epochs"),
                                 ("onnx-predict", "--top-k"), (ANY_COMMAND, "--seed"),
                                 ("benchmarks/camera_photos.py", "--per-class")]


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_docs_exit_code_table_is_the_code_table():
    text = (ROOT / "docs" / "runtime.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == ["code", "name", "meaning"]
    assert rows[2:] == [[str(e.code), e.name, e.meaning] for e in EXIT_CODES]


@pytest.mark.parametrize("name", sorted(EXTRA_EXIT_CODES))
def test_help_lists_exit_codes_from_the_table(name):
    command = commands()[name]
    text = command.get_help(click.Context(command, info_name=name))
    listed = text.split("Exit codes:", 1)[1]
    rows = [tuple(line.split(None, 1)) for line in listed.strip().splitlines()]
    wanted = set(COMMON_EXIT_CODES) | EXTRA_EXIT_CODES[name]
    assert rows == [(str(e.code), e.meaning) for e in EXIT_CODES if e.code in wanted]
