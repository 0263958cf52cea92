"""Project-level checks: the README quick start, CI, dependencies and forbidden imports."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.+?)\n *```", section, re.S)]


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands), "each quick-start command is one line"
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines, "`.ci/run` must run the README's test command verbatim"
    assert "ruff check ." in ci_lines


def test_runtime_dependencies():
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", pyproject, re.S).group(1)
    names = {re.match(r'\s*"([A-Za-z0-9_-]+)', line).group(1).lower() for line in deps.strip().splitlines()}
    assert names == {"torch", "click", "numpy", "scipy", "pillow", "ninja", "psutil", "imageio", "tqdm", "matplotlib"}


def test_no_private_or_deprecated_imports():
    forbidden = re.compile(r"^\s*(from|import)\s+(torch\._C|pkg_resources|distutils)\b|torch\._C\.", re.M)
    offenders = []
    for path in ROOT.rglob("*.py"):
        # Hidden folders (.git, .venv, .peer with the reference trainers) and build outputs are not ours.
        relative = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part == "build" or part.endswith(".egg-info") for part in relative):
            continue
        if path.name == "test_project.py":
            continue
        if forbidden.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("module", ["dnnlib", "torch_utils.ops.upfirdn2d", "training.dataset"])
def test_modules_import_in_a_fresh_interpreter(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
