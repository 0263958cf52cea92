"""Tests for the CPU-runnable parts of the prepared GPU check (benchmarks/gpu_check.py): option handling, the
warm-up and ratio arithmetic, the result files, the path where the published trainers are absent, the figures of
the fp16 and batch steps on a GPU (from stand-in run directories), and the whole dry run on the CPU."""

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from benchmarks import gpu_check
from benchmarks.train_speed import SpeedRun, summarize


def _tick(sec_per_kimg: float, peak_gb: float) -> dict:
    """One stats.jsonl line with the two figures the speed step reads."""
    return {
        "Timing/sec_per_kimg": {"num": 1, "mean": sec_per_kimg, "std": 0.0},
        "Resources/peak_gpu_mem_gb": {"num": 1, "mean": peak_gb, "std": 0.0},
        "timestamp": 0.0,
    }


def test_summarize_leaves_out_the_warm_up_ticks():
    r = summarize([_tick(3000, 9.0), _tick(40, 6.0), _tick(10, 4.0), _tick(12, 4.5)])
    assert r.sec_per_kimg == pytest.approx(11.0)
    assert (r.steady_gb, r.startup_gb, r.steady_ticks) == (4.5, 9.0, 2)


def test_summarize_without_a_steady_tick_says_so():
    r = summarize([_tick(3000, 9.0), _tick(40, 6.0)])
    assert (r.sec_per_kimg, r.steady_gb, r.steady_ticks) == (40, 6.0, 0)
    with pytest.raises(ValueError, match="no tick"):
        summarize([])


def test_ratios_hold_each_figure_to_its_target():
    ours = dict(sec_per_kimg=10.0, steady_gb=4.0, startup_gb=4.4, steady_ticks=1)
    theirs = dict(sec_per_kimg=25.0, steady_gb=5.0, startup_gb=30.0, steady_ticks=1)
    r = gpu_check.ratios(ours, theirs)
    assert r["speed_ratio"] == pytest.approx(0.4)
    assert r["memory_ratio"] == pytest.approx(0.8)
    assert r["startup_over_steady"] == pytest.approx(1.1)
    assert r["targets_met"] is True
    assert gpu_check.ratios(dict(ours, startup_gb=6.0), theirs)["targets_met"] is False  # 1.5x start-up peak
    assert gpu_check.ratios(dict(ours, sec_per_kimg=13.0), theirs)["targets_met"] is False  # 0.52x
    assert gpu_check.ratios(dict(ours, steady_gb=5.5, startup_gb=5.5), theirs)["targets_met"] is False  # memory
    assert gpu_check.ratios(ours, "absent: ...") == dict(startup_over_steady=pytest.approx(1.1))
    assert gpu_check.ratios("failed", theirs) == {}


def test_compare_training_measures_the_update_difference():
    gen = torch.Generator().manual_seed(0)
    start = {k: torch.randn(shape, generator=gen, dtype=torch.float64) for k, shape in (("a", [3, 4]), ("b", [5]))}
    a = {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in start.items()}
    same = gpu_check.compare_training(a, {k: v.clone() for k, v in a.items()}, start)
    assert same["relative_update_diff"] == 0 and same["max_abs_diff"] == 0

    delta = torch.zeros(5, dtype=torch.float64)
    delta[2] = 3e-4
    b = dict(a, b=a["b"] + delta)
    update = math.sqrt(sum(float((a[k] - start[k]).square().sum()) for k in a))
    r = gpu_check.compare_training(a, b, start)
    assert r["relative_update_diff"] == pytest.approx(3e-4 / update)
    assert r["max_abs_diff"] == pytest.approx(3e-4)
    assert r["update_norm"] == pytest.approx(update)


def test_the_profile_table_lists_the_ops():
    profile = dict(
        cfg="stylegan3-t",
        resolution=256,
        batch=32,
        batch_gpu=16,
        wall_ms_per_step=500.0,
        device_busy_ms_per_step=400.0,
        ops=[dict(name="aten::conv", self_ms_per_step=120.5, calls_per_step=30.0, self_cpu_ms_per_step=2.25)],
    )
    page = gpu_check.results_markdown(dict(profile=profile))
    assert "500.0 ms per step, GPU busy 400.0 ms" in page and "| aten::conv | 120.50 | 30.0 | 2.25 |" in page


def test_junit_counts_sum_every_suite(tmp_path):
    path = tmp_path / "report.xml"
    path.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/>'
        '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>'
    )
    assert gpu_check.junit_counts(path) == dict(tests=8, failures=1, errors=1, skipped=2)


def test_junit_counts_the_float16_tests_by_their_dtype_property(tmp_path):
    path = tmp_path / "report.xml"

    def case(dtype, outcome=""):
        prop = f'<properties><property name="dtype" value="{dtype}"/></properties>' if dtype else ""
        return f'<testcase name="t[{dtype}]">{prop}{outcome}</testcase>'

    cases = [case("torch.float16"), case("torch.float16", "<failure/>"), case("torch.float32"), case(None)]
    path.write_text(f'<testsuites><testsuite tests="4">{"".join(cases)}{case("torch.float16", "<skipped/>")}'
                    "</testsuite></testsuites>")  # fmt: skip
    assert gpu_check.junit_counts(path, dtype="torch.float16") == dict(tests=3, failures=1, errors=0, skipped=1)


def test_the_gpu_tests_are_found():
    names = [p.name for p in gpu_check.cuda_test_files()]
    assert "test_ops_cuda.py" in names and "test_gpu_check.py" not in names


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps=kernels,bogus"], ["--steps", "bogus", "choose from"]),
        (["--cfgs=stylegan4"], ["--cfgs", "stylegan4", "stylegan3-t"]),
        (["--cfgs=,"], ["--cfgs", "nothing"]),
        (["--batch=30", "--batch-gpu=16"], ["--batch", "multiple of --batch-gpu=16"]),
        (["--budget-min=0"], ["--budget-min"]),
        (["--gamma=nan"], ["--gamma", "not a finite number"]),
    ],
)
def test_bad_options_are_refused_before_anything_runs(tmp_path, args, words):
    out = tmp_path / "out"
    result = CliRunner().invoke(gpu_check.main, [f"--out={out}", *args])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert not out.exists()


def test_plan_names_what_runs_and_the_absent_peer(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(gpu_check.main, [f"--out={out}", "--plan", f"--peer={tmp_path / 'none'}"])
    assert result.exit_code == 0, result.output
    assert "speed creps: theirs: absent" in result.output
    assert "--cfg=stylegan3-r" in result.output and "--batch=32 --batch-gpu=16" in result.output
    assert not out.exists()


def test_the_dry_run_plan_gives_ours_tiny_sizes_and_theirs_the_gpu_options(tmp_path):
    peer = tmp_path / "peer"
    (peer / "creps").mkdir(parents=True)
    (peer / "creps" / "train.py").write_text("")
    result = CliRunner().invoke(gpu_check.main, [f"--out={tmp_path}", "--plan", "--dry-run", f"--peer={peer}"])
    assert result.exit_code == 0, result.output
    assert "Budget: 30.0 min" in result.output and "GPU: none (dry run on the CPU)" in result.output
    [ours] = [line for line in result.output.splitlines() if line.startswith("speed creps: ours:")]
    [theirs] = [line for line in result.output.splitlines() if line.startswith("speed creps: theirs:")]
    assert "--batch=4 --batch-gpu=4 --gamma=2 --kimg=0.012" in ours
    assert "--batch=32 --batch-gpu=16 --gamma=2 --kimg=2" in theirs and theirs.endswith("--dry-run")


def test_speed_step_writes_the_table_with_and_without_the_peer(tmp_path, monkeypatch):
    """Trainers replaced by writers of known stats: ours 10 s/kimg, theirs 25 s/kimg; CREPS's peer is absent."""
    peer = tmp_path / "peer"
    (peer / "stylegan3").mkdir(parents=True)
    (peer / "stylegan3" / "train.py").write_text("")
    commands = []

    def fake_run(check, title, cmd, cwd=None, env=None, limit_sec=600):
        commands.append((title, cmd, cwd, env))
        outdir = Path(next(a for a in cmd if a.startswith("--outdir="))[len("--outdir=") :])
        theirs = cwd == peer / "stylegan3"
        ticks = [_tick(900, 12.0), _tick(40, 9.0)] + [_tick(25, 8.0) if theirs else _tick(10, 6.0)] * 2
        (outdir / "00000-run").mkdir(parents=True)
        (outdir / "00000-run" / "stats.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
        return gpu_check.Outcome(0, 1.0)

    monkeypatch.setattr(gpu_check, "run_logged", fake_run)
    monkeypatch.setattr(gpu_check, "make_dataset", lambda folder, resolution, count: folder / "data.zip")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    args = [f"--out={out}", "--steps=kernels,speed,ops,profile", "--cfgs=creps,stylegan2", f"--peer={peer}"]
    result = CliRunner().invoke(gpu_check.main, args)
    assert result.exit_code == 0, result.output

    # Ours from the repository with the kernels on, theirs from their folder with their own PYTHONPATH.
    assert [t for t, *_ in commands] == ["ours stylegan2", "theirs stylegan2", "ours creps"]
    (_, ours_cmd, _, ours_env), (_, their_cmd, _, their_env) = commands[:2]
    assert ours_env["GANFORGE_CUDA_OPS"] == "1" and their_env["PYTHONPATH"] == str(peer / "stylegan3")
    expected = SpeedRun(cfg="stylegan2", gamma=2.0).train_args(Path("DATA"), Path("OUT"))
    assert "--batch=32" in expected and "--batch-gpu=16" in expected and "--kimg=2" in expected
    for cmd in (ours_cmd, their_cmd):  # The same options, bar the folders.
        assert [a for a in cmd if not a.startswith(("--outdir=", "--data="))][2:] == expected[1:2] + expected[3:]

    results = json.loads((out / "results.json").read_text())
    assert results["steps"]["kernels"]["status"] == "skipped: no CUDA GPU"
    assert results["steps"]["ops"]["status"] == results["steps"]["profile"]["status"] == "skipped: no CUDA GPU"
    assert results["steps"]["speed"]["status"] == "done"
    row = results["speed"]["stylegan2"]
    assert row["speed_ratio"] == pytest.approx(0.4) and row["memory_ratio"] == pytest.approx(0.75)
    assert row["startup_over_steady"] == pytest.approx(2.0) and row["targets_met"] is False
    assert results["speed"]["creps"]["theirs"].startswith(f"absent: no {peer / 'creps'}/train.py")
    assert "speed_ratio" not in results["speed"]["creps"]

    page = (out / "results.md").read_text()
    assert "| stylegan2 | 10.00 | 25.00 | 0.40 | 6.00 | 8.00 | 12.00 | 12.00 | 2.00 | no |" in page
    assert "| creps | 10.00 | - | - |" in page and "theirs: absent" in page
    assert "no GPU (CPU smoke test)" in page


def test_parallel_commands_are_logged_one_after_another_and_fail_together(tmp_path):
    check = gpu_check.Check(
        out=tmp_path,
        steps=[],
        cfgs=[],
        run=SpeedRun(cfg="stylegan2"),
        small=SpeedRun(cfg="stylegan2", resolution=16),
        peer=tmp_path,
        max_images=1,
        deadline=0.0,
    )
    with open(tmp_path / "log.txt", "w") as check.log:
        ok = gpu_check.run_logged_parallel(
            check, {"a": [sys.executable, "-c", "print('from a')"], "b": [sys.executable, "-c", "print('from b')"]}, 60
        )
        failed = gpu_check.run_logged_parallel(
            check, {"c": [sys.executable, "-c", "import sys; sys.exit(3)"], "d": [sys.executable, "-c", "pass"]}, 60
        )
        slow = gpu_check.run_logged_parallel(check, {"e": [sys.executable, "-c", "import time; time.sleep(30)"]}, 1)
        own = {"f": [sys.executable, "-c", "import os; print('sees', os.environ['GANFORGE_X'])"]}
        gpu_check.run_logged_parallel(check, own, 60, envs=dict(f=check.env(GANFORGE_X="its own")))
    assert ok.ok and failed.returncode == 3 and slow.returncode is None and slow.seconds < 10
    log = (tmp_path / "log.txt").read_text()
    assert log.index("===== a\n") < log.index("from a") < log.index("===== a: exit 0") < log.index("===== b\n")
    assert "from b" in log and "===== c: exit 3" in log and "===== e: exit None" in log and "sees its own" in log


def _float16_run(folder: Path, gpumem: list[str], float16_layers: int = 3) -> Path:
    """A stand-in run directory of the fp16 step: a snapshot, log.txt with the summary and tick lines, an image."""
    (folder / "run").mkdir(parents=True)
    lines = ["synthesis.b16.conv1  100  -  [4, 8, 16, 16]  float16" for _ in range(float16_layers)]
    lines += [
        f"tick {i}      kimg 0.0       time 2s   cpumem 0.84    gpumem {v:<6s} augment 0.000"
        for i, v in enumerate(gpumem)
    ]
    (folder / "run" / "log.txt").write_text("\n".join(lines) + "\n")
    (folder / "images").mkdir()
    PIL.Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(folder / "images" / "seed0000.png")
    return folder / "run" / "network-snapshot-000000.pkl"


@pytest.mark.parametrize(
    "gpu, gpumem, float16_layers, passed",
    [
        (True, ["1.52", "1.60"], 3, True),
        (True, ["1.52", "0.00"], 3, False),  # A tick without memory statistics on a GPU.
        (True, ["1.52"], 0, False),  # No float16 layer: mixed precision was off.
        (False, ["0.00", "0.00"], 3, True),  # The CPU (dry run) has no GPU memory to show.
    ],
)
def test_fp16_figures_need_float16_layers_and_gpu_memory_on_a_gpu(
    tmp_path, monkeypatch, gpu, gpumem, float16_layers, passed
):
    snapshot = _float16_run(tmp_path, gpumem, float16_layers)
    monkeypatch.setattr(gpu_check, "finite_report", lambda path: dict(finite=True))
    check = gpu_check.Check(
        out=tmp_path, steps=[], cfgs=[], run=SpeedRun(cfg="stylegan2"), small=SpeedRun(cfg="stylegan2"),
        peer=tmp_path, max_images=1, deadline=0.0, gpu=gpu,
    )  # fmt: skip
    row = gpu_check.fp16_report(check, snapshot, tmp_path / "images")
    assert row["gpumem_gb"] == [float(v) for v in gpumem] and row["float16_layers"] == float16_layers
    assert row["image_std"] > 0 and row["passed"] is passed
    assert gpu_check.fp16_report(check, None, None) == dict(passed=False, note="the run did not finish (see log.txt)")


def test_batch_figures_read_the_probe_line_and_the_peak():
    log = (
        "--batch-gpu=auto: 16 per GPU x 2 rounds (probe: 32 out of memory, 16 needs 61% of 79.1 GiB available "
        "with Adam's state; at most 85%).\n"
    )
    ticks = [{"Resources/peak_gpu_mem_gb": {"num": 1, "mean": v, "std": 0.0}} for v in (40.0, 47.46)]
    figures = gpu_check.batch_figures(gpu_check.BATCH_GPU_AUTO.search(log), ticks)
    assert (figures["batch_gpu"], figures["rounds"], figures["available_gib"]) == (16, 2, 79.1)
    assert figures["how"].startswith("probe: 32 out of memory, 16 needs 61%")
    assert figures["peak_gib"] == 47.46 and figures["peak_share"] == pytest.approx(0.6)
    cpu = "--batch-gpu=auto: 4 per GPU x 1 rounds (batch/gpus: on the CPU there is no out-of-memory signal).\n"
    figures = gpu_check.batch_figures(gpu_check.BATCH_GPU_AUTO.search(cpu), [])
    assert figures["batch_gpu"] == 4 and figures["available_gib"] is None and figures["peak_share"] is None


@pytest.mark.slow
def test_the_dry_run_rehearses_every_step_on_the_cpu(tmp_path):
    """The dress rehearsal (about a minute on two cores): every step's commands really run, at tiny sizes; the
    published trainer is a stand-in that records the options it was given with --dry-run."""
    peer = tmp_path / "peer"
    (peer / "stylegan3").mkdir(parents=True)
    args_file = tmp_path / "their-args.json"
    (peer / "stylegan3" / "train.py").write_text(
        f"import json, sys\njson.dump(sys.argv[1:], open({str(args_file)!r}, 'w'))\nprint('Dry run; exiting.')\n"
    )
    out = tmp_path / "out"
    args = [f"--out={out}", "--dry-run", "--cfgs=stylegan2", "--guard-cfg=stylegan2", f"--peer={peer}"]
    result = CliRunner().invoke(gpu_check.main, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert list(steps) == gpu_check.STEPS and results["environment"]["gpu"] == "no GPU (dry run on the CPU)"

    kernels = steps["kernels"]  # Collected, and skipped without a GPU: their imports and markers work.
    assert kernels["status"].startswith("dry run:") and kernels["tests"]["tests"] == kernels["tests"]["skipped"] > 0
    assert kernels["float16_tests"]["tests"] > 0
    guard = steps["guard"]  # On the CPU both float32 runs take the reference path: no difference at all.
    assert guard["status"] == "passed" and guard["float32"]["relative_update_diff"] == 0 and guard["float16"]["finite"]
    fp16 = steps["fp16"]["stylegan2"]  # GANFORGE_CPU_FP16=1: the float16 blocks ran in float16.
    assert steps["fp16"]["status"] == "passed" and fp16["float16_layers"] > 0 and fp16["image_std"] > 0
    assert fp16["gpumem_gb"] == [0.0, 0.0, 0.0] and fp16["nonfinite_grads"] == 0
    assert steps["batch"]["status"].startswith("dry run: ran") and steps["batch"]["batch_gpu"] == 4
    assert steps["speed"]["status"] == "done" and steps["ops"]["status"] == "skipped: no CUDA GPU"
    row = results["speed"]["stylegan2"]
    assert row["ours"]["steady_ticks"] == 1 and row["theirs"] == "dry run: options accepted"
    their_args = json.loads(args_file.read_text())  # The GPU run's options, not the rehearsal's tiny ones.
    assert their_args[-1] == "--dry-run"
    assert {"--batch=32", "--batch-gpu=16", "--kimg=2", "--cbase=32768"} <= set(their_args)

    profile = results["profile"]  # Real steps profiled on the CPU.
    assert steps["profile"]["status"] == "done" and profile["device"] == "cpu"
    assert profile["device_busy_ms_per_step"] is None and profile["wall_ms_per_step"] > 0
    assert profile["ops"][0]["self_ms_per_step"] >= profile["ops"][-1]["self_ms_per_step"]  # Sorted by self time.
    page = (out / "results.md").read_text()
    assert "| fp16 | passed |" in page and "| stylegan2 | " in page and "dry run: options accepted" in page
    assert re.search(r"Where a step goes: stylegan2 16x16, batch 4", page)
