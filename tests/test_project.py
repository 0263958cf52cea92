"""Project-level checks: the README quick start, CI, dependencies and forbidden imports."""

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner
from helpers import ROOT, readme_quick_start

import train


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    commands = readme_quick_start()
    assert len(commands) == 2, commands
    assert all("\n" not in command for command in commands), "each quick-start command is one line"
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines, "`.ci/run` must run the README's test command verbatim"
    assert "ruff check ." in ci_lines


def test_readme_first_command_trains_what_the_readme_says(tmp_path, demo_shapes):
    """The quick start's train.py options parse as today's CLI reads them (a --dry-run on a small demo:shapes
    zip of the same size), with the settings its paragraph describes."""
    [train_command] = [part for part in readme_quick_start()[0].split(" && ") if "train.py" in part]
    args = shlex.split(train_command)[2:]
    args = [arg for arg in args if not arg.startswith(("--outdir=", "--data="))]
    data = demo_shapes(32)
    result = CliRunner().invoke(train.main, [*args, f"--outdir={tmp_path}", f"--data={data}", "--dry-run"])
    assert result.exit_code == 0, result.output
    for setting in ('"cmax": 32', '"aug": "noaug"', '"gamma": 0.0128', '"total_kimg": 80', '"metrics": []'):
        assert setting in result.output, setting


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
    assert not offenders, "\n".join(offenders)


# Imports run one way: each package may import only the packages before it (issue 15).
LAYERS = ["dnnlib", "torch_utils", "metrics", "training"]


def _imported_modules(path, tree) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, including those inside functions."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # Relative: resolve against the file's package.
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return found


def _package_files():
    """(layer index, path, syntax tree) of every .py file of the packages."""
    for index, layer in enumerate(LAYERS):
        for path in sorted((ROOT / layer).rglob("*.py")):
            yield index, path, ast.parse(path.read_text(), str(path))


def test_imports_run_one_way():
    """dnnlib <- torch_utils <- metrics <- training <- entry scripts: no package imports a later one or a script."""
    scripts = {path.stem for path in ROOT.glob("*.py")}
    offenders = []
    for index, path, tree in _package_files():
        for line, module in _imported_modules(path, tree):
            top = module.split(".")[0]
            if top in scripts or (top in LAYERS and LAYERS.index(top) > index):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_collectives_only_in_distributed_py():
    """Every cross-rank operation goes through torch_utils/distributed.py: no `torch.distributed` elsewhere."""
    files = [(path, tree) for _index, path, tree in _package_files()]
    files += [(path, ast.parse(path.read_text(), str(path))) for path in sorted(ROOT.glob("*.py"))]
    offenders = []
    for path, tree in files:
        if path == ROOT / "torch_utils" / "distributed.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "torch.distributed":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
        offenders += [
            f"{path.relative_to(ROOT)}:{line} imports {module}"
            for line, module in _imported_modules(path, tree)
            if module.startswith("torch.distributed")
        ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("module", ["dnnlib", "torch_utils.ops.upfirdn2d", "training.dataset"])
def test_modules_import_in_a_fresh_interpreter(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)


@pytest.mark.slow
def test_a_regular_install_has_the_commands_and_the_kernel_sources(tmp_path):
    """`pip install .` (not editable): a wheel with the entry scripts as modules and commands, and the CUDA sources."""
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."]
    if importlib.util.find_spec("setuptools"):  # Build with the installed backend; else pip fetches it.
        build.insert(4, "--no-build-isolation")
    subprocess.run(build, cwd=ROOT, check=True, capture_output=True)
    [wheel] = tmp_path.glob("ganforge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"train.py", "gen_images.py", "gen_video.py", "calc_metrics.py", "dataset_tool.py", "visualizer.py"} <= names
    assert {
        f"torch_utils/ops/cuda/{n}" for n in ("filtered_lrelu.cu", "common.h", "device.cuh", "bias_act.cpp")
    } <= names
    assert {f"viewer/static/{n}" for n in ("index.html", "app.js", "app.css")} <= names  # The page, offline.
    assert "ganforge-train = train:main" in entry_points and "ganforge-visualizer = visualizer:cli" in entry_points

    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target))  # Ahead of the editable checkout: the installed copy is used.
    result = subprocess.run(
        [str(target / "bin" / "ganforge-train"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--outdir DIR" in result.stdout, result.stderr
    check = (
        "from torch_utils import custom_ops as c; print(c.__file__);"
        "print(all(p.is_file() for k in c.KERNELS for p in c.source_paths(k)))"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    location, found = result.stdout.split()
    assert location.startswith(str(target)) and found == "True", result.stderr  # The installed copy, complete.
