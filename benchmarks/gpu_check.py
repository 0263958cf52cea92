"""The prepared GPU check: one command that verifies and times everything GPU-only, within a time budget.

GPU time comes in short, rare leases, so everything here was prepared on the CPU and runs as one command that
writes its results, after every step, as `results.md` and `results.json` (plus the full output in `log.txt`)
into the folder given by --out. The steps, in priority order: the checks of code that has never run on a GPU come
first (each takes a minute or less), the long benchmarks last. A step that would not fit in what is left of
--budget-min is recorded as skipped, never cut off silently.

  kernels  build the CUDA kernels (python -m torch_utils.custom_ops --build-only), then `pytest -m cuda`: each
           kernel against its reference path, values and gradients, in float32 and float16 (float16: within 1e-3 of
           a float64 reference on the same rounded inputs, relative, and 1e-3 of the largest value absolute;
           tests/test_ops_cuda.py). The float16 tests are counted apart in the figures.
  guard    a few float32 training steps with the kernels on and off must give the same weights (the difference
           of the two updates, relative to the update), and a float16 run with the kernels must stay finite.
  fp16     every --cfgs trains a few steps with its default mixed precision and the default ops (kernels off, as a
           user's first run): losses, weights and gradients finite, the module summary lists float16 layers, every
           tick line shows gpumem > 0 (the memory statistics), and gen_images.py renders the snapshot on the GPU.
  batch    --batch-gpu=auto on the first --cfgs at the speed step's size: the memory probe's choice and notes, and
           the peak memory of the steps that follow against the probe's limit (training/batch_memory.py).
  speed    for each --cfgs (256x256, --batch=32 --batch-gpu=16 by default): ours with the kernels, then the
           published trainer on the same data (when unpacked under --peer), and the ratio ours/theirs.
  ops      benchmarks/ops.py: each op call of a 256x256 StyleGAN3-T G and its D, kernels against reference.
  profile  benchmarks/step_profile.py: where a step of the first --cfgs goes (the ops with the most GPU time, and
           how busy the host keeps the GPU), with the kernels.

The guard's and the fp16 step's runs are small (--guard-resolution, 8 images a step) and run side by side.

Dry run (--dry-run): a dress rehearsal on the CPU, so that the script itself is known to work before the one
chance to run it on a device. Every step runs as far as a CPU allows, at tiny sizes (16x16, 4 images a step; the
size options are overridden), with no GPU visible to the commands it starts: `kernels` runs `pytest -m cuda`
without building (every test must be collected, and skipped), `guard` and `fp16` train with GANFORGE_CPU_FP16=1
(the float16 blocks in real float16, as on a GPU), `batch` takes the CPU's batch/gpus, `speed` trains ours and
gives the published trainers (when unpacked) the GPU run's options with their `--dry-run`, `ops` is skipped
(it times kernels) and `profile` profiles on the CPU; the result files are written as on the GPU. About 75 s on
two cores with `--cfgs=stylegan2 --guard-cfg=stylegan2` (tests/test_gpu_check.py runs that), 12 minutes with every
configuration, whose StyleGAN3 float16 layers are slow on a CPU (a dry run's --budget-min is 30 by default).

Without a GPU and without --dry-run, `kernels` and `ops` are recorded as skipped and the other steps run on the CPU
at the sizes given. The published trainers are separate programs: they run from their own folder with their own
PYTHONPATH, and their custom ops are compiled in the background while ours build.

Examples:

    # On a lent GPU machine (about 8 minutes): everything, with the published trainers unpacked in .peer/.
    bash ../shared/peer/prepare.sh .peer      # once, on the CPU machine; then carry .peer along
    bash benchmarks/gpu_check.sh --out=$OUT

    # Only the speed of two configurations, after a first call ran out of time.
    bash benchmarks/gpu_check.sh --out=$OUT --steps=speed --cfgs=creps,stylegan3-r

    # The dress rehearsal on the CPU: CI's short one (about 75 s on two cores), then every configuration (12 min).
    bash benchmarks/gpu_check.sh --out=/tmp/rehearsal --dry-run --cfgs=stylegan2 --guard-cfg=stylegan2
    bash benchmarks/gpu_check.sh --out=/tmp/rehearsal --dry-run

    # What would run, without running it.
    python -m benchmarks.gpu_check --out=/tmp/check --plan
"""

import dataclasses
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
import numpy as np
import PIL.Image
import torch

from benchmarks.train_speed import ROOT, SpeedRun, make_dataset, read_ticks, summarize
from dnnlib.util import FiniteFloatRange
from torch_utils import custom_ops
from training.batch_memory import PROBE_MEMORY_FRACTION
from training.checkpoint import load_snapshot
from training.config import PRESETS, TrainingConfig
from training.dataset import ImageFolderDataset
from training.layers import CPU_FP16_ENV
from training.training_loop import build_networks, training_set_kwargs

# Most valuable first: a lease may end before the last step. The checks of never-run code are short; speed is long.
STEPS = ["kernels", "guard", "fp16", "batch", "speed", "ops", "profile"]
CFG_ORDER = ["stylegan3-t", "stylegan2", "creps", "stylegan3-r"]  # Most asked-about first, in case time runs out.
PEER_REPO = {"stylegan2": "stylegan3", "stylegan3-t": "stylegan3", "stylegan3-r": "stylegan3", "creps": "creps"}
PEER_OPS = ("bias_act", "upfirdn2d", "filtered_lrelu")  # The published custom ops, compiled on first use.
MIN_STEP_SEC = 45  # A step (or one training run) is not started with less time than this left.
BUDGET_MIN = 8  # Default --budget-min: what a lease leaves after the machine's start.
DRY_RUN_BUDGET_MIN = 30  # Default --budget-min of a dry run: StyleGAN3 in float16 on two CPU cores takes minutes.

# The targets the speed figures are held to (issue 12): ours/theirs s/kimg, steady memory ours/theirs, and our
# start-up peak over our steady memory.
TARGET_SPEED_RATIO = 0.5
TARGET_MEMORY_RATIO = 1.0
TARGET_STARTUP_RATIO = 1.25

# Quality guard: the float32 updates with the kernels on and off may differ by this much, relative to the update
# (rounding differences only; a wrong kernel gives differences of the order of the update itself).
GUARD_TOLERANCE = 1e-2

# --dry-run's sizes: tiny, so that every step runs on two CPU cores in seconds.
# Three steps: ticks 0 and 1 are the speed step's warm-up, tick 2 its steady state.
DRY_RUN_SIZES = dict(resolution=16, batch=4, batch_gpu=4, kimg=0.012, tick_kimg=0.004, cbase=128, cmax=16, workers=1)
DRY_RUN_IMAGES = 16
# What every command of a dry run sees: no GPU, and one thread each (the small runs go side by side).
DRY_RUN_ENV = dict(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")

TICK_GPUMEM = re.compile(r"^tick \d+ .*\bgpumem (\S+)", re.M)  # A tick line of train.py and its peak GPU memory.
FLOAT16_LAYER = re.compile(r"\sfloat16$", re.M)  # A float16 line of the module summary train.py prints at start.
BATCH_GPU_AUTO = re.compile(r"--batch-gpu=auto: (\d+) per GPU x (\d+) rounds \((.*)\)\.$", re.M)


@dataclasses.dataclass
class Check:
    """Everything the steps share: options, the deadline, the results so far and where they are written."""

    out: Path
    steps: list[str]
    cfgs: list[str]
    run: SpeedRun  # The speed runs' options; run.cfg is replaced per configuration.
    small: SpeedRun  # The guard's and the fp16 step's runs; cfg and fp32 are replaced per run.
    peer: Path
    max_images: int  # Images in the speed step's dataset (also the batch step's).
    deadline: float  # time.time() by which everything must have finished.
    small_images: int = 64  # Images in the guard's and the fp16 step's dataset.
    gpu: bool = False  # Whether the steps use a CUDA GPU (never in a dry run).
    dry_run: bool = False  # The rehearsal on the CPU (see the module docstring).
    published_run: SpeedRun | None = None  # Dry run: the GPU run's speed options, given to the published --dry-run.
    work: Path = Path()  # Scratch space (datasets, run directories), removed at the end.
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: TextIO | None = None
    peer_builds: list[subprocess.Popen] = dataclasses.field(default_factory=list)  # Compiling the published ops.
    datasets: dict[tuple[int, int], Path] = dataclasses.field(default_factory=dict)  # By (resolution, images).

    def seconds_left(self) -> float:
        """Seconds until the deadline."""
        return self.deadline - time.time()

    def env(self, extra_path: Path | None = None, **variables: str) -> dict:
        """The environment of a command: python_env, and in a dry run no GPU and one thread (DRY_RUN_ENV)."""
        return python_env(extra_path, **(DRY_RUN_ENV if self.dry_run else {}), **variables)

    def record(self, step: str, status: str, seconds: float, **figures: Any) -> None:
        """Store one step's outcome and rewrite the result files, so a cut-off run still leaves what it did."""
        self.results.setdefault("steps", {})[step] = dict(status=status, seconds=round(seconds, 1), **figures)
        write_results(self.out, self.results)


# ----------------------------------------------------------------------------
# Running commands.


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a command ended."""

    returncode: int | None  # None: killed at its time limit.
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def wait_or_kill(proc: subprocess.Popen, limit_sec: float) -> int | None:
    """Wait up to `limit_sec` for a process started in its own session, then stop it and its children.

    Returns:
        Its exit status; None when it was stopped at the limit.
    """
    try:
        return proc.wait(timeout=max(limit_sec, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def run_logged(
    check: Check, title: str, cmd: list[str], cwd: Path = ROOT, env: dict | None = None, limit_sec: float = 600
) -> Outcome:
    """Run `cmd`, appending its output to log.txt; kill it and its children after `limit_sec` seconds."""
    log = check.log
    assert log is not None, "run_logged needs the open log"
    log.write(f"\n===== {title}\n$ (cd {cwd} && {' '.join(cmd)})\n")
    log.flush()
    start = time.time()
    # A new session, so that a time-out also stops the DataLoader workers and compiler jobs it started.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    returncode = wait_or_kill(proc, max(limit_sec, 1))
    outcome = Outcome(returncode, time.time() - start)
    status = "timed out" if returncode is None else f"exit {returncode}"
    log.write(f"===== {title}: {status} after {outcome.seconds:.0f} s\n")
    log.flush()
    return outcome


def run_logged_parallel(
    check: Check, commands: dict[str, list[str]], limit_sec: float, envs: dict[str, dict] | None = None
) -> Outcome:
    """Run the commands side by side from the repository root; their outputs go to log.txt one after another.

    Args:
        envs: Each command's environment by title; check.env() for those not given.

    Returns:
        The first failure's outcome (or success), timed from the start to the last one's end.
    """
    assert check.log is not None, "run_logged_parallel needs the open log"
    start = time.time()
    procs, envs = {}, envs or {}
    for title, cmd in commands.items():
        output = tempfile.TemporaryFile("w+")
        env = envs.get(title) or check.env()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        procs[title] = (proc, output, cmd)
    returncodes = []
    for title, (proc, output, cmd) in procs.items():
        returncodes.append(wait_or_kill(proc, max(start + limit_sec - time.time(), 1)))
        output.seek(0)
        check.log.write(f"\n===== {title}\n$ {' '.join(cmd)}\n{output.read()}===== {title}: exit {returncodes[-1]}\n")
        output.close()
    check.log.flush()
    failed = [rc for rc in returncodes if rc != 0]
    return Outcome(failed[0] if failed else 0, time.time() - start)


def python_env(extra_path: Path | None = None, **variables: str) -> dict:
    """This process's environment with PYTHONPATH set to one folder (ours, or a published trainer's)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **variables)
    env["PYTHONPATH"] = str(extra_path or ROOT)
    return env


def peer_dir(check: Check, cfg: str) -> Path | None:
    """The unpacked published trainer for `cfg`, or None when it is absent."""
    folder = check.peer / PEER_REPO[cfg]
    return folder if (folder / "train.py").is_file() else None


def start_peer_op_builds(check: Check) -> list[subprocess.Popen]:
    """Compile the published custom ops in the background (they build on first use, about a minute each).

    Each published repository is a separate program with its own PYTHONPATH; its ops are asked to build through
    their own `_init()`, exactly what their training does on its first step.
    """
    procs = []
    for repo in sorted({PEER_REPO[c] for c in check.cfgs}):
        folder = check.peer / repo
        if not (folder / "train.py").is_file():
            continue
        code = "from torch_utils.ops import " + ", ".join(PEER_OPS) + "; " + "; ".join(f"{m}._init()" for m in PEER_OPS)
        log = open(check.out / f"peer-build-{repo}.txt", "w")  # noqa: SIM115 - closed when the process is waited for
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=folder,
                env=check.env(folder),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


# ----------------------------------------------------------------------------
# The steps.


def step_kernels(check: Check) -> None:
    """Build the kernels, then run the GPU tests; a dry run only runs the tests, which must all be skipped."""
    if not check.gpu and not check.dry_run:
        check.record("kernels", "skipped: no CUDA GPU", 0)
        return
    build = Outcome(0, 0.0)
    if check.gpu:
        # One process per kernel: each compiles one large .cu file, so building them side by side saves minutes.
        builds = {
            name: [sys.executable, "-m", "torch_utils.custom_ops", "--build-only", "--quiet", f"--kernel={name}"]
            for name in custom_ops.KERNELS
        }
        build = run_logged_parallel(check, builds, limit_sec=check.seconds_left() - MIN_STEP_SEC)
        if not build.ok:
            check.record("kernels", "failed: the kernels did not build (see log.txt)", build.seconds)
            return
    junit = check.work / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-n0", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    cmd += ["-p", "benchmarks.gpu_check"]  # pytest_collection_modifyitems: the float16 tests marked in the report.
    cmd += [str(p.relative_to(ROOT)) for p in cuda_test_files()]
    tests = run_logged(check, "pytest -m cuda", cmd, env=check.env(), limit_sec=check.seconds_left() - MIN_STEP_SEC)
    counts = junit_counts(junit) if junit.is_file() else {}
    float16 = junit_counts(junit, dtype="torch.float16") if junit.is_file() else {}
    ran = counts.get("tests", 0) - counts.get("skipped", 0)
    clean = tests.ok and counts.get("failures", 1) == 0 and counts.get("errors", 1) == 0
    if check.dry_run:
        rehearsed = clean and ran == 0 and counts["tests"] > 0 and float16["tests"] > 0
        status = (
            f"dry run: {counts['tests']} GPU tests collected, all skipped without a GPU (no build tried)"
            if rehearsed
            else "failed: the GPU tests did not all collect and skip (see log.txt)"
        )
    elif tests.ok and ran == 0:
        status = "failed: every GPU test was skipped (pytest saw no GPU?)"
    elif tests.returncode is None:
        status = "timed out"
    else:
        status = "passed" if clean and ran > 0 else "failed (see log.txt)"
    figures = dict(build_sec=round(build.seconds, 1), tests=counts, float16_tests=float16)
    check.record("kernels", status, build.seconds + tests.seconds, **figures)


def pytest_collection_modifyitems(items: list) -> None:
    """pytest hook, loaded by the kernels step with `-p benchmarks.gpu_check`: each test's `dtype` parameter goes
    into the JUnit report as a property, so that the float16 tests are counted apart (their ids say `dtype1`)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "dtype" in callspec.params:
            item.user_properties.append(("dtype", str(callspec.params["dtype"])))


def cuda_test_files() -> list[Path]:
    """The test files that hold GPU tests (collecting only these keeps an unrelated import from failing the step)."""
    return sorted(p for p in (ROOT / "tests").glob("test_*.py") if "pytest.mark.cuda" in p.read_text())


def junit_counts(path: Path, dtype: str | None = None) -> dict[str, int]:
    """Test, failure, error and skip counts from a pytest JUnit XML report; with `dtype`, of the tests whose `dtype`
    property (see pytest_collection_modifyitems) is that, such as 'torch.float16'."""
    root = ET.parse(path).getroot()
    keys = ("tests", "failures", "errors", "skipped")
    if dtype is None:
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    query = f"properties/property[@name='dtype'][@value='{dtype}']"
    cases = [case for case in root.iter("testcase") if case.find(query) is not None]
    counts = {k: sum(case.find(k.rstrip("s")) is not None for case in cases) for k in keys[1:]}
    return dict(tests=len(cases), **counts)


def step_guard(check: Check) -> None:
    """The quality guard: kernels on vs off in float32 give the same training, and float16 stays finite."""
    start = time.time()
    data = dataset(check, check.small.resolution, check.small_images)
    runs = {"float32-ref": (False, True), "float32-cuda": (True, True), "float16-cuda": (True, False)}
    commands, envs, outdirs = {}, {}, {}
    for name, (kernels, fp32) in runs.items():  # name: (kernels on, --fp32)
        outdirs[name] = check.work / f"guard-{name}"
        run = dataclasses.replace(check.small, fp32=fp32)
        commands[name] = [sys.executable, "train.py", *run.train_args(data, outdirs[name]), "--nobench=1"]
        envs[name] = check.env(GANFORGE_CUDA_OPS="1" if kernels else "0", **{CPU_FP16_ENV: "0" if fp32 else "1"})
    outcome = run_logged_parallel(check, commands, limit_sec=check.seconds_left(), envs=envs)
    snapshots = {name: last_snapshot(outdir) for name, outdir in outdirs.items()}
    missing = [name for name, path in snapshots.items() if path is None]
    if missing or not outcome.ok:
        check.record("guard", f"failed: {', '.join(missing) or 'a'} run did not finish (see log.txt)", outcome.seconds)
        return
    ref, cuda = (network_tensors(load_snapshot(str(snapshots[k]))) for k in ("float32-ref", "float32-cuda"))
    agreement = compare_training(ref, cuda, initial_tensors(snapshots["float32-ref"].parent))
    finite = finite_report(snapshots["float16-cuda"])
    passed = agreement["relative_update_diff"] <= GUARD_TOLERANCE and finite["finite"]
    small = check.small
    figures = dict(cfg=small.cfg, resolution=small.resolution, kimg=small.kimg, float32=agreement, float16=finite)
    check.record("guard", "passed" if passed else "failed", time.time() - start, **figures)


def last_snapshot(outdir: Path) -> Path | None:
    """The newest network-snapshot-*.pkl of the one run directory under `outdir`, or None."""
    found = sorted(outdir.glob("*/network-snapshot-*.pkl"))
    return found[-1] if found else None


def network_tensors(snapshot: dict) -> dict[str, torch.Tensor]:
    """Every floating-point parameter and buffer of G, D and G_ema, by qualified name, in float64 on the CPU."""
    tensors = {}
    for key in ("G", "D", "G_ema"):
        for name, value in snapshot[key].state_dict().items():
            if value.is_floating_point():
                tensors[f"{key}.{name}"] = value.detach().double().cpu()
    return tensors


def initial_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The weights the run started from, rebuilt from its training options (construction is seeded)."""
    c = TrainingConfig.load(str(run_dir))
    dataset = ImageFolderDataset(**training_set_kwargs(c))
    G, D, G_ema = build_networks(c, dataset, torch.device("cpu"))
    return network_tensors(dict(G=G, D=D, G_ema=G_ema))


def compare_training(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> dict[str, float]:
    """How far two runs from the same start ended apart: |a - b| over |a - start| (all tensors as one vector)."""
    assert a.keys() == b.keys() == start.keys(), "the two runs trained different networks"
    diff = math.sqrt(sum(float((a[k] - b[k]).square().sum()) for k in a))
    update = math.sqrt(sum(float((a[k] - start[k]).square().sum()) for k in a))
    max_abs = max(float((a[k] - b[k]).abs().max()) for k in a)
    return dict(relative_update_diff=diff / max(update, 1e-30), update_norm=update, max_abs_diff=max_abs)


def finite_report(snapshot_path: Path) -> dict[str, Any]:
    """Whether a run's weights are all finite, and its non-finite gradient values and losses per its stats."""
    tensors = network_tensors(load_snapshot(str(snapshot_path)))
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    ticks = read_ticks(snapshot_path.parent.parent)
    nonfinite = sum(v["mean"] * v["num"] for t in ticks for k, v in t.items() if k.startswith("Progress/nonfinite"))
    losses = [v["mean"] for t in ticks for k, v in t.items() if k.startswith("Loss/")]
    losses_finite = bool(np.isfinite(losses).all())
    return dict(
        finite=not bad and losses_finite,
        nonfinite_tensors=bad[:10],
        nonfinite_grads=nonfinite,
        losses_finite=losses_finite,
    )


def step_fp16(check: Check) -> None:
    """Every configuration a few steps in its default mixed precision, side by side: finite, and it renders."""
    start = time.time()
    data = dataset(check, check.small.resolution, check.small_images)
    commands, outdirs = {}, {}
    for cfg in check.cfgs:
        outdirs[cfg] = check.work / f"fp16-{cfg}"
        run = dataclasses.replace(check.small, cfg=cfg, fp32=False)
        commands[f"fp16 {cfg}"] = [sys.executable, "train.py", *run.train_args(data, outdirs[cfg])]
    # The default ops (the kernels are off unless asked for), as a user's first run; the guard ran them in float16.
    env = check.env(GANFORGE_CUDA_OPS="0", **{CPU_FP16_ENV: "1"})
    run_logged_parallel(check, commands, limit_sec=check.seconds_left(), envs=dict.fromkeys(commands, env))
    snapshots = {cfg: last_snapshot(outdir) for cfg, outdir in outdirs.items()}
    images = {cfg: check.work / f"fp16-{cfg}-images" for cfg, path in snapshots.items() if path is not None}
    render = [sys.executable, "gen_images.py", "--seeds=0-1"]
    renders = {f"render {cfg}": [*render, f"--network={snapshots[cfg]}", f"--outdir={d}"] for cfg, d in images.items()}
    if renders:
        run_logged_parallel(check, renders, limit_sec=check.seconds_left(), envs=dict.fromkeys(renders, env))
    rows = {cfg: fp16_report(check, snapshots[cfg], images.get(cfg)) for cfg in check.cfgs}
    passed = all(row.get("passed") for row in rows.values())
    check.record("fp16", "passed" if passed else "failed", time.time() - start, **rows)


def fp16_report(check: Check, snapshot: Path | None, images: Path | None) -> dict[str, Any]:
    """One float16 run's figures: finite (finite_report), float16 layers, each tick's gpumem, the render."""
    if snapshot is None:
        return dict(passed=False, note="the run did not finish (see log.txt)")
    row = finite_report(snapshot)
    log = (snapshot.parent / "log.txt").read_text()
    row["float16_layers"] = len(FLOAT16_LAYER.findall(log))
    row["gpumem_gb"] = [float(v) for v in TICK_GPUMEM.findall(log)]
    png = images / "seed0000.png" if images is not None else None
    row["image_std"] = float(np.asarray(PIL.Image.open(png)).std()) if png is not None and png.is_file() else None
    # Memory statistics are a CUDA figure: on a GPU every tick line shows a peak above zero, on the CPU zero.
    memory_ok = bool(row["gpumem_gb"]) and all((v > 0) == check.gpu for v in row["gpumem_gb"])
    row["passed"] = row["finite"] and row["float16_layers"] > 0 and memory_ok and (row["image_std"] or 0) > 0
    return row


def step_batch(check: Check) -> None:
    """--batch-gpu=auto at the speed step's size: the probe's choice, and the peak of the steps that follow."""
    data = dataset(check, check.run.resolution, check.max_images)
    run = dataclasses.replace(check.run, cfg=check.cfgs[0], kimg=2 * check.run.batch / 1000)
    run = dataclasses.replace(run, tick_kimg=run.kimg / 2)  # Tick 0 is the first step, tick 1 the second.
    outdir = check.work / "batch-auto"
    args = [a if not a.startswith("--batch-gpu=") else "--batch-gpu=auto" for a in run.train_args(data, outdir)]
    env = check.env(GANFORGE_CUDA_OPS="1")  # As the speed step runs.
    outcome = run_logged(check, "batch auto", [sys.executable, "train.py", *args], ROOT, env, check.seconds_left())
    logs = sorted(outdir.glob("*/log.txt"))
    found = BATCH_GPU_AUTO.search(logs[-1].read_text()) if logs else None
    if not outcome.ok or found is None:
        check.record("batch", "failed (see log.txt)", outcome.seconds)
        return
    figures = batch_figures(found, read_ticks(outdir))
    figures["cfg"] = run.cfg
    if not check.gpu:
        status = "ran; without a GPU --batch-gpu=auto takes batch/gpus (no probe)"
        status = f"dry run: {status}" if check.dry_run else status
    elif not figures["how"].startswith("probe:"):
        status = "failed: no memory probe on the GPU"
    elif figures["peak_share"] is None or figures["peak_share"] > PROBE_MEMORY_FRACTION:
        status = f"failed: the steps' peak exceeds {PROBE_MEMORY_FRACTION:.0%} of the available memory"
    else:
        status = "passed"
    check.record("batch", status, outcome.seconds, **figures)


def batch_figures(found: re.Match, ticks: list[dict]) -> dict[str, Any]:
    """What the --batch-gpu=auto line says (the choice, the rounds, the probe's notes and the memory available),
    and the largest peak of the ticks as a share of that memory (None without it)."""
    batch_gpu, rounds, how = int(found[1]), int(found[2]), found[3]
    available = re.search(r"of ([\d.]+) GiB available", how)
    available_gib = float(available[1]) if available else None
    peaks = [t["Resources/peak_gpu_mem_gb"]["mean"] for t in ticks if "Resources/peak_gpu_mem_gb" in t]
    peak_gib = max(peaks, default=0.0)  # The tick statistic is in units of 2**30 bytes, as the probe's.
    return dict(
        batch_gpu=batch_gpu,
        rounds=rounds,
        how=how,
        available_gib=available_gib,
        peak_gib=peak_gib,
        peak_share=peak_gib / available_gib if available_gib else None,
    )


def step_speed(check: Check) -> None:
    """For each configuration: ours with the kernels, then the published trainer on the same data."""
    start = time.time()
    data = dataset(check, check.run.resolution, check.max_images)
    rows = check.results.setdefault("speed", {})
    for cfg in check.cfgs:
        run = dataclasses.replace(check.run, cfg=cfg)
        rows[cfg] = row = dict(ours=None, theirs=None)
        row["ours"] = time_run(check, f"ours {cfg}", [sys.executable, "train.py"], ROOT, run, data, kernels=True)
        folder = peer_dir(check, cfg)
        if folder is None:
            row["theirs"] = f"absent: no {check.peer / PEER_REPO[cfg]}/train.py (bash ../shared/peer/prepare.sh .peer)"
        elif check.dry_run:
            row["theirs"] = peer_dry_run(check, cfg, folder, data)
        else:
            for proc in check.peer_builds:  # Their first tick must not include a compile we started early.
                wait_or_kill(proc, check.seconds_left() - MIN_STEP_SEC)
            row["theirs"] = time_run(check, f"theirs {cfg}", [sys.executable, "train.py"], folder, run, data)
        row.update(ratios(row["ours"], row["theirs"]))
        check.record("speed", "running", time.time() - start)
    done = all(isinstance(r["ours"], dict) and not str(r["theirs"]).startswith("failed") for r in rows.values())
    check.record("speed", "done" if done else "incomplete (see the table)", time.time() - start)


def peer_dry_run(check: Check, cfg: str, folder: Path, data: Path) -> str:
    """Dry run: the published trainer's own --dry-run, given the options the GPU run would give it."""
    run = dataclasses.replace(check.published_run or check.run, cfg=cfg)
    cmd = [sys.executable, "train.py", *run.train_args(data, check.work / f"theirs-{cfg}"), "--dry-run"]
    outcome = run_logged(check, f"theirs {cfg} --dry-run", cmd, folder, check.env(folder), check.seconds_left())
    return "dry run: options accepted" if outcome.ok else "failed: their --dry-run refused the options (see log.txt)"


def dataset(check: Check, resolution: int, images: int) -> Path:
    """A demo:shapes zip of `images` images at `resolution`, made once per check."""
    key = (resolution, images)
    if key not in check.datasets:
        check.datasets[key] = make_dataset(workdir(check, f"data-{resolution}-{images}"), resolution, images)
    return check.datasets[key]


def workdir(check: Check, name: str) -> Path:
    """A fresh folder under the check's scratch space."""
    folder = check.work / name
    folder.mkdir()
    return folder


def time_run(
    check: Check, title: str, program: list[str], cwd: Path, run: SpeedRun, data: Path, kernels: bool = False
) -> dict | str:
    """Train once and summarize its ticks; a string says why there are no figures."""
    if check.seconds_left() < MIN_STEP_SEC:
        return "skipped: out of time"
    outdir = check.work / title.replace(" ", "-")
    env = check.env(cwd, GANFORGE_CUDA_OPS="1" if kernels else "0")
    outcome = run_logged(check, title, [*program, *run.train_args(data, outdir)], cwd, env, check.seconds_left())
    ticks = read_ticks(outdir)
    if not ticks:
        return "timed out before its first tick" if outcome.returncode is None else "failed (see log.txt)"
    result = dataclasses.asdict(summarize(ticks))
    if not outcome.ok:
        result["note"] = "timed out" if outcome.returncode is None else f"exit {outcome.returncode}"
    return result


def ratios(ours: dict | str | None, theirs: dict | str | None) -> dict[str, float | bool | None]:
    """Ours over theirs for speed and memory, our start-up peak over our steady memory, and the targets met."""
    if not isinstance(ours, dict):
        return {}
    startup = ours["startup_gb"] / ours["steady_gb"] if ours["steady_gb"] > 0 else None
    out: dict[str, float | bool | None] = dict(startup_over_steady=startup)
    if isinstance(theirs, dict) and theirs["sec_per_kimg"] > 0:
        out["speed_ratio"] = ours["sec_per_kimg"] / theirs["sec_per_kimg"]
        out["memory_ratio"] = ours["steady_gb"] / theirs["steady_gb"] if theirs["steady_gb"] > 0 else None
        out["targets_met"] = (
            out["speed_ratio"] <= TARGET_SPEED_RATIO
            and (out["memory_ratio"] or 0) <= TARGET_MEMORY_RATIO
            and (startup or 0) <= TARGET_STARTUP_RATIO
            and ours["steady_ticks"] > 0
            and theirs["steady_ticks"] > 0
        )
    return out


def step_ops(check: Check) -> None:
    """benchmarks/ops.py at the shapes of a 256x256 StyleGAN3-T G and its D."""
    if not check.gpu:
        check.record("ops", "skipped: no CUDA GPU", 0)
        return
    path = check.work / "ops.json"
    cmd = [sys.executable, "-m", "benchmarks.ops", "--batch=16", "--repeats=10", f"--json={path}"]
    outcome = run_logged(check, "ops", cmd, env=check.env(), limit_sec=check.seconds_left())
    if not outcome.ok or not path.is_file():
        check.record("ops", "failed (see log.txt)", outcome.seconds)
        return
    ops = json.loads(path.read_text())
    check.results["ops"] = ops
    check.record("ops", "done", outcome.seconds, total_ref_ms=ops["total_ref_ms"], total_cuda_ms=ops["total_cuda_ms"])


def step_profile(check: Check) -> None:
    """benchmarks/step_profile.py for the first configuration, with the kernels (a dry run: 2 steps on the CPU)."""
    if not check.gpu and not check.dry_run:
        check.record("profile", "skipped: no CUDA GPU", 0)
        return
    path, run = check.work / "profile.json", check.run
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.step_profile",
        f"--cfg={check.cfgs[0]}",
        f"--resolution={run.resolution}",
        f"--batch={run.batch}",
        f"--batch-gpu={run.batch_gpu}",
        f"--cbase={run.cbase}",
        f"--cmax={run.cmax}",
        "--top=15",
        f"--json={path}",
        *(["--warmup=1", "--steps=2"] if check.dry_run else []),
    ]
    env = check.env(GANFORGE_CUDA_OPS="1")
    outcome = run_logged(check, "profile", cmd, env=env, limit_sec=check.seconds_left())
    if not outcome.ok or not path.is_file():
        check.record("profile", "failed (see log.txt)", outcome.seconds)
        return
    check.results["profile"] = figures = json.loads(path.read_text())
    check.record(
        "profile",
        "done",
        outcome.seconds,
        wall_ms_per_step=_round(figures["wall_ms_per_step"]),
        gpu_busy_ms_per_step=_round(figures["device_busy_ms_per_step"]),
    )


def _round(value: float | None) -> float | None:
    """A figure rounded to 0.1, None (not measured) kept."""
    return None if value is None else round(value, 1)


STEP_FUNCTIONS: dict[str, Callable[[Check], None]] = dict(
    kernels=step_kernels,
    guard=step_guard,
    fp16=step_fp16,
    batch=step_batch,
    speed=step_speed,
    ops=step_ops,
    profile=step_profile,
)


# ----------------------------------------------------------------------------
# The result files.


def write_results(out: Path, results: dict[str, Any]) -> None:
    """Write results.json and results.md into `out`, each replaced whole (a reader never sees half a file)."""
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", results_markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _fmt(value: Any, spec: str = ".2f") -> str:
    """A table cell: numbers formatted, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec) if isinstance(value, float | int) else str(value)


def results_markdown(results: dict[str, Any]) -> str:
    """The results as a markdown page: the machine, each step's status, the speed table, the op totals."""
    env = results.get("environment", {})
    lines = [
        f"# GPU check, {env.get('date', '?')}",
        "",
        f"{env.get('gpu', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
        f"Python {env.get('python', '?')}; command: `{env.get('command', '?')}`",
        "",
        "| step | status | seconds | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for step, r in results.get("steps", {}).items():
        figures = {k: v for k, v in r.items() if k not in ("status", "seconds")}
        lines.append(f"| {step} | {r['status']} | {r['seconds']:.0f} | {json.dumps(figures) if figures else ''} |")
    speed = results.get("speed")
    if speed:
        run = results.get("run", {})
        lines += [
            "",
            f"## Training speed ({run.get('resolution')}x{run.get('resolution')}, --batch={run.get('batch')} "
            f"--batch-gpu={run.get('batch_gpu')}, --kimg={run.get('kimg')} --tick={run.get('tick_kimg')}; "
            f"ticks 0-1 are warm-up)",
            "",
            "Targets: ours/theirs s/kimg <= 0.5, steady memory ours/theirs <= 1, our start-up peak / steady <= 1.25.",
            "",
            "| cfg | ours s/kimg | theirs s/kimg | ours/theirs | ours steady GB | theirs steady GB | "
            "ours start-up GB | theirs start-up GB | start-up/steady | targets met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for cfg, row in speed.items():
            ours, theirs = row.get("ours"), row.get("theirs")

            def cell(result: dict | str | None, key: str) -> str:
                return _fmt(result.get(key)) if isinstance(result, dict) else "-"

            lines.append(
                f"| {cfg} | {cell(ours, 'sec_per_kimg')} | {cell(theirs, 'sec_per_kimg')} | "
                f"{_fmt(row.get('speed_ratio'))} | {cell(ours, 'steady_gb')} | {cell(theirs, 'steady_gb')} | "
                f"{cell(ours, 'startup_gb')} | {cell(theirs, 'startup_gb')} | {_fmt(row.get('startup_over_steady'))} "
                f"| {_fmt(row.get('targets_met'))} |"
            )
            notes = [f"{who}: {r}" for who, r in (("ours", ours), ("theirs", theirs)) if isinstance(r, str)]
            notes += [
                f"{who}: {r['note']}"
                for who, r in (("ours", ours), ("theirs", theirs))
                if isinstance(r, dict) and "note" in r
            ]
            notes += [
                f"{who}: no steady tick (figures are the warm-up's)"
                for who, r in (("ours", ours), ("theirs", theirs))
                if isinstance(r, dict) and r["steady_ticks"] == 0
            ]
            lines += [f"|  | {note} |  |  |  |  |  |  |  |  |" for note in notes]
    ops = results.get("ops")
    if ops:
        lines += [
            "",
            f"## Ops at the shapes of a 256x256 StyleGAN3-T G and its D (batch {ops['batch']}, forward + backward)",
            "",
            "| op | x shape | dtype | calls | ref ms | cuda ms | speed-up | ref MB | cuda MB |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in ops["rows"]:
            lines.append(
                f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['calls']} | {r['ref_ms']:.3f} | {r['cuda_ms']:.3f} "
                f"| {r['ref_ms'] / r['cuda_ms']:.2f}x | {r['ref_mb']:.1f} | {r['cuda_mb']:.1f} |"
            )
        lines.append(f"\nTotal per G+D pass: ref {ops['total_ref_ms']:.1f} ms, cuda {ops['total_cuda_ms']:.1f} ms.")
    profile = results.get("profile")
    if profile:
        lines += [
            "",
            f"## Where a step goes: {profile['cfg']} {profile['resolution']}x{profile['resolution']}, batch "
            f"{profile['batch']} ({profile['batch_gpu']} per pass), {profile['wall_ms_per_step']:.1f} ms per step, "
            f"GPU busy {profile['device_busy_ms_per_step'] or 0:.1f} ms",
            "",
            "| op | self GPU ms/step | calls/step | self CPU ms/step |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {op['name']} | {op['self_ms_per_step']:.2f} | {op['calls_per_step']:.1f} | "
            f"{op['self_cpu_ms_per_step']:.2f} |"
            for op in profile["ops"]
        ]
    return "\n".join(lines) + "\n"


def environment(command: str, gpu_used: bool, dry_run: bool) -> dict[str, str]:
    """The machine and versions the figures belong to."""
    gpu = "no GPU (dry run on the CPU)" if dry_run else "no GPU (CPU smoke test)"
    if gpu_used:
        gpu = torch.cuda.get_device_name()
    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        gpu=gpu,
        torch=torch.__version__,
        cuda=str(torch.version.cuda),
        python=sys.version.split()[0],
        cpus=str(os.cpu_count()),
        command=command,
    )


# ----------------------------------------------------------------------------
# Command line.


def parse_list(value: str, choices: list[str], option: str) -> list[str]:
    """A comma-separated subset of `choices`, in the order of `choices`; refuses unknown names."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(choices))
    if unknown or not names:
        raise click.BadParameter(
            f"{', '.join(unknown) or 'nothing'} given; choose from {', '.join(choices)}", param_hint=option
        )
    return [c for c in choices if c in names]


@click.command(context_settings=dict(max_content_width=120))
@click.option("--out", metavar="DIR", type=click.Path(file_okay=False), required=True, help="Folder for the results.")
@click.option("--steps", metavar="LIST", default=",".join(STEPS), show_default=True, help="Steps to run.")
@click.option("--cfgs", metavar="LIST", default=",".join(CFG_ORDER), show_default=True, help="Speed step: configs.")
@click.option(
    "--budget-min",
    metavar="MIN",
    type=FiniteFloatRange(min=1, max=600),
    help="Time for everything; steps that would not fit are recorded as skipped.  [default: 8; --dry-run: 30]",
)
@click.option(
    "--resolution",
    metavar="INT",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Speed step: image resolution.",
)
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), default=32, show_default=True, help="Total batch.")
@click.option(
    "--batch-gpu",
    metavar="INT",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Batch per forward pass.",
)
@click.option(
    "--kimg",
    metavar="INT",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Speed step: training length (whole kimg: the published trainers take integers).",
)
@click.option(
    "--tick",
    metavar="INT",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Speed step: tick length in kimg; ticks 0-1 are warm-up.",
)
@click.option(
    "--cbase",
    metavar="INT",
    type=click.IntRange(min=1),
    default=32768,
    show_default=True,
    help="Speed step: capacity multiplier.",
)
@click.option(
    "--cmax",
    metavar="INT",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Speed step: max. feature maps.",
)
@click.option(
    "--gamma",
    metavar="FLOAT",
    type=FiniteFloatRange(min=0, max=1e6),
    default=2.0,
    show_default=True,
    help="Speed step: R1 weight.",
)
@click.option(
    "--workers",
    metavar="INT",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="DataLoader workers, both trainers.",
)
@click.option(
    "--max-images",
    metavar="INT",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Speed step: images in the synthetic dataset.",
)
@click.option(
    "--peer",
    metavar="DIR",
    type=click.Path(file_okay=False),
    default=".peer",
    show_default=True,
    help="Where the published trainers are unpacked (absent: only ours run).",
)
@click.option(
    "--guard-cfg",
    metavar="NAME",
    type=click.Choice(list(PRESETS)),
    default="stylegan3-t",
    show_default=True,
    help="Guard: configuration (stylegan3-t uses all three kernels).",
)
@click.option(
    "--guard-resolution",
    metavar="INT",
    type=click.IntRange(min=8),
    default=64,
    show_default=True,
    help="Guard and fp16: image resolution.",
)
@click.option(
    "--guard-kimg",
    metavar="KIMG",
    type=FiniteFloatRange(min=0.001, max=1),
    default=0.032,
    show_default=True,
    help="Guard and fp16: training length (0.032 kimg = 4 steps of 8).",
)
@click.option("--dry-run", is_flag=True, help="Rehearse on the CPU at tiny sizes (overriding the size options).")
@click.option("--plan", is_flag=True, help="Print what would run and exit.")
def main(out: str, steps: str, cfgs: str, budget_min: float | None, dry_run: bool, plan: bool, **opts: Any) -> None:
    """Build, test and time everything GPU-only in one command; results go to OUT/results.md and .json."""
    step_list = parse_list(steps, STEPS, "--steps")
    cfg_list = parse_list(cfgs, CFG_ORDER, "--cfgs")
    peer = (ROOT / opts.pop("peer")).resolve()
    run = SpeedRun(
        cfg=cfg_list[0],
        resolution=opts["resolution"],
        batch=opts["batch"],
        batch_gpu=opts["batch_gpu"],
        gamma=opts["gamma"],
        kimg=opts["kimg"],
        tick_kimg=opts["tick"],
        cbase=opts["cbase"],
        cmax=opts["cmax"],
        workers=opts["workers"],
    )
    if run.batch % run.batch_gpu:
        raise click.BadParameter(f"{run.batch} is not a multiple of --batch-gpu={run.batch_gpu}", param_hint="--batch")
    kimg = opts["guard_kimg"]
    small = SpeedRun(
        cfg=opts["guard_cfg"],
        resolution=opts["guard_resolution"],
        batch=8,
        batch_gpu=8,
        kimg=kimg,
        tick_kimg=kimg,
        cbase=8192,
        cmax=128,
        workers=1,
        fp32=True,
    )
    check = Check(
        out=Path(out).resolve(),
        steps=step_list,
        cfgs=cfg_list,
        run=run,
        small=small,
        peer=peer,
        max_images=opts["max_images"],
        deadline=time.time() + (budget_min or (DRY_RUN_BUDGET_MIN if dry_run else BUDGET_MIN)) * 60,
        gpu=torch.cuda.is_available() and not dry_run,
    )
    if dry_run:
        tiny = dataclasses.replace(run, **DRY_RUN_SIZES)
        check = dataclasses.replace(
            check,
            run=tiny,
            small=dataclasses.replace(small, **DRY_RUN_SIZES, fp32=True),
            max_images=DRY_RUN_IMAGES,
            small_images=DRY_RUN_IMAGES,
            dry_run=True,
            published_run=run,
        )
    if plan:
        print_plan(check)
        return
    check.out.mkdir(parents=True, exist_ok=True)
    check.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    command = "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:])
    check.results.update(environment=environment(command, check.gpu, dry_run), run=dataclasses.asdict(check.run))
    if "speed" in step_list and check.gpu:
        check.peer_builds = start_peer_op_builds(check)  # In parallel with our kernel build (16 cores there).
    with open(check.out / "log.txt", "w") as check.log:
        for step in step_list:
            if check.seconds_left() < MIN_STEP_SEC:
                check.record(step, "skipped: out of time", 0)
                continue
            try:
                STEP_FUNCTIONS[step](check)
            except Exception as err:  # noqa: BLE001 - one broken step must not lose the others' figures
                check.log.write(f"\n===== {step} raised {type(err).__name__}: {err}\n")
                check.record(step, f"error: {type(err).__name__}: {err}", 0)
    for proc in check.peer_builds:
        wait_or_kill(proc, 0)
    shutil.rmtree(check.work, ignore_errors=True)
    print(results_markdown(check.results))
    print(f"Results in {check.out}")


def print_plan(check: Check) -> None:
    """What the check would run, with the published trainers found or not."""
    print(f"Budget: {(check.deadline - time.time()) / 60:.1f} min; steps: {', '.join(check.steps)}")
    gpu = torch.cuda.get_device_name() if check.gpu else "none (dry run on the CPU)" if check.dry_run else "none"
    print(f"GPU: {gpu}" + ("" if check.gpu or check.dry_run else " (CPU smoke test)"))
    placeholders = (Path("DATA.zip"), Path("OUTDIR"))
    if "speed" in check.steps:
        for cfg in check.cfgs:
            run = dataclasses.replace(check.run, cfg=cfg)
            folder = peer_dir(check, cfg)
            print(f"speed {cfg}: ours: train.py {' '.join(run.train_args(*placeholders))}")
            theirs = f"{folder}/train.py (same options)" if folder else "absent"
            if folder and check.dry_run:  # The GPU run's options, with their own --dry-run.
                published = dataclasses.replace(check.published_run or run, cfg=cfg)
                theirs = f"{folder}/train.py {' '.join(published.train_args(*placeholders))} --dry-run"
            print(f"speed {cfg}: theirs: {theirs}")
    print(f"Results would go to {check.out}")


if __name__ == "__main__":
    main()
