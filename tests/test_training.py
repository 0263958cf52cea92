"""End-to-end tests of train.py and gen_images.py on a tiny configuration, on the CPU.

The runs go through the command line in subprocesses, exactly as users start them. The network is tiny
(--cbase=64 --cmax=8 --map-depth=1 at 8x8) so the whole file takes about a minute on two cores.
"""

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, TINY, assert_states_close, run_dirs, run_script, script_env

import gen_images
import train
from training import checkpoint, config, plots


def load_final_state(run_dir: Path) -> dict:
    return checkpoint.load_state(checkpoint.list_states(str(run_dir))[-1])


@pytest.mark.slow
def test_two_tick_run_writes_every_file_and_renders(tmp_path, data):
    outdir = tmp_path / "runs"
    run_script(
        "train.py",
        f"--outdir={outdir}",
        f"--data={data}",
        *TINY,
        "--gpus=1",
        "--batch=4",
        "--kimg=1",
        "--tick=0.5",
        "--snap=2",
        "--workers=0",
        "--desc=smoke",
        cwd=tmp_path,
    )
    [run_dir] = run_dirs(outdir)
    assert run_dir.name == "00000-stylegan2-shapes8-gpus1-batch4-gamma1-smoke"
    names = set(os.listdir(run_dir))
    expected = {
        "training_options.json",
        "log.txt",
        "stats.jsonl",
        "reals.png",
        "fakes_init.png",
        "fakes000000.png",
        "fakes000001.png",
        "network-snapshot-000000.pkl",
        "network-snapshot-000001.pkl",
        "training-state-000000.pt",
        "training-state-000001.pt",
        "progress.png",
    }
    assert expected <= names
    assert not [name for name in names if name.startswith(".tmp-")]
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["batch_size"] == 4 and options["cfg"] == "stylegan2" and options["ema_kimg"] == 4 * 10 / 32
    log = (run_dir / "log.txt").read_text()
    assert "tick 2" in log and "sec/kimg" in log and "Exiting" in log
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/tick"]["mean"] for s in stats] == [0, 1, 2]
    assert stats[-1]["Progress/kimg"]["mean"] == 1.0 and "Loss/G/loss" in stats[-1]
    # progress.png from this real stats.jsonl: every panel the run has numbers for (no metrics: --metrics=none;
    # no augmentation panel: --aug=noaug).
    titles = plots.write_progress(str(run_dir), output=str(tmp_path / "progress.png"))
    assert titles == ["Losses", "Regularization", "Speed (s/kimg)"]
    with PIL.Image.open(tmp_path / "progress.png") as image:
        assert image.size == (960, 512)  # 2 columns x 2 rows of panels at 80 dpi.

    # The snapshot unpickles in a fresh interpreter, outside the repository, with only the package installed.
    snapshot = run_dir / "network-snapshot-000001.pkl"
    check = (
        "import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb'));"
        "assert sorted(s) == ['D', 'G', 'G_ema', 'augment_pipe', 'training_set_kwargs'], sorted(s);"
        "G = s['G_ema']; assert not G.training and not any(p.requires_grad for p in G.parameters());"
        "assert all(p.device.type == 'cpu' for p in G.parameters());"
        "assert s['training_set_kwargs']['path'].endswith('shapes8.zip'); print(G.img_resolution)"
    )
    result = subprocess.run([sys.executable, "-c", check, str(snapshot)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "8", result.stderr

    out = tmp_path / "out"
    run_script(
        "gen_images.py", f"--network={snapshot}", "--seeds=0,3-4", f"--outdir={out}", "--trunc=0.7", cwd=tmp_path
    )
    assert sorted(os.listdir(out)) == ["seed0000.png", "seed0003.png", "seed0004.png"]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, data):
    # With ADA on, so the augmentation probability, its controller and the augment pipe's draws are covered too.
    common = [f"--data={data}", *TINY, "--aug=ada", "--gpus=1", "--batch=4", "--tick=0.5", "--snap=2", "--workers=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_script("train.py", f"--outdir={straight}", *common, "--kimg=2", cwd=tmp_path)
    run_script("train.py", f"--outdir={split}", *common, "--kimg=1", cwd=tmp_path)
    result = run_script("train.py", f"--outdir={split}", *common, "--kimg=2", "--resume=latest", cwd=tmp_path)
    assert "Continuing from" in result.stdout

    [straight_dir], [split_dir] = run_dirs(straight), run_dirs(split)  # Continued in place: still one run.
    assert_states_close(load_final_state(straight_dir), load_final_state(split_dir), atol=1e-6)
    final = load_final_state(split_dir)
    assert final["progress"]["cur_nimg"] == 2000
    assert float(final["augment_pipe"]["p"]) == float(load_final_state(straight_dir)["augment_pipe"]["p"])
    assert final["ada"]["num_updates"] == 500 // 4  # One update every 4 steps of 4 images.
    assert (split_dir / "network-snapshot-000002.pkl").is_file()
    log = (split_dir / "log.txt").read_text()
    assert log.count("Training for") == 2  # The continued session appended to the same log.

    # Continuing with options that change the computation is refused, naming them.
    result = CliRunner().invoke(
        train.main, [f"--outdir={split}", *common, "--kimg=3", "--resume=latest", "--batch-gpu=2"]
    )
    assert result.exit_code != 0 and "batch_gpu: 4 -> 2" in result.output


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path, data):
    common = [f"--data={data}", *TINY, "--batch=8", "--batch-gpu=4", "--kimg=0.032", "--tick=1", "--workers=0"]
    run_script("train.py", f"--outdir={tmp_path / 'one'}", *common, "--gpus=1", cwd=tmp_path)
    run_script("train.py", f"--outdir={tmp_path / 'two'}", *common, "--gpus=2", cwd=tmp_path)
    [one], [two] = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "two")
    assert two.name.startswith("00000-stylegan2-shapes8-gpus2-batch8")
    a, b = load_final_state(one), load_final_state(two)
    assert a["progress"]["step"] == 4
    # Only the order of float additions differs (all-reduce vs accumulation): a few ulps, relative to the value.
    assert_states_close(a, b, atol=1e-6, rtol=1e-5)
    assert float(a["loss"]["pl_mean"]) > 0 and torch.allclose(a["loss"]["pl_mean"], b["loss"]["pl_mean"])


@pytest.mark.slow
def test_torchrun_launch(tmp_path, data):
    outdir = tmp_path / "runs"
    env = script_env()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(ROOT / "train.py"),
        f"--outdir={outdir}",
        f"--data={data}",
        *TINY,
        "--gpus=2",
        "--batch=8",
        "--kimg=0.016",
        "--tick=1",
        "--workers=0",
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Training options:") == 1  # Only rank 0 prints.
    [run_dir] = run_dirs(outdir)
    assert run_dir.name.startswith("00000-stylegan2-shapes8-gpus2-batch8")
    assert load_final_state(run_dir)["progress"]["cur_nimg"] == 16

    # --gpus must match the number of processes torchrun started.
    command[command.index("--gpus=2")] = "--gpus=4"
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "torchrun started 2 processes" in result.stdout + result.stderr


@pytest.mark.slow
def test_resume_from_a_snapshot_pickle(tmp_path, data):
    outdir = tmp_path / "runs"
    common = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=4", "--tick=1", "--workers=0"]
    run_script("train.py", *common, "--kimg=1", cwd=tmp_path)
    [first] = run_dirs(outdir)
    snapshot = first / "network-snapshot-000001.pkl"

    # As in the published tools, a pickle starts a new run from its weights even with its training state beside
    # it (which used to continue the schedule: "Training for 0.016 kimg from 1 kimg", one step): kimg 0 and the
    # fine-tuning settings. A note says how to continue exactly instead.
    result = run_script("train.py", *common, "--kimg=0.016", f"--resume={snapshot}", cwd=tmp_path)
    assert f"to continue that run exactly, pass --resume={first}" in result.stdout
    assert "Training for 0.016 kimg from 0 kimg" in result.stdout and "Continuing from" not in result.stdout
    second = run_dirs(outdir)[1]
    options = json.loads((second / "training_options.json").read_text())
    assert options["resume_pkl"] == str(snapshot) and options["resume_state"] is None
    assert options["ada_kimg"] == 100 and options["ema_rampup"] is None
    final = load_final_state(second)
    assert final["progress"]["cur_nimg"] == 16 and final["progress"]["step"] == 4
    with open(snapshot, "rb") as f:
        source = pickle.load(f)["G_ema"].state_dict()
    # Four steps at lr 0.002 from the snapshot's weights (no EMA ramp-up): still close to them.
    weight = "synthesis.b8.conv1.weight"
    assert 0 < (final["G_ema"][weight] - source[weight]).abs().max() < 0.05

    # A lone pickle (or a URL) does the same, without the note.
    lone = tmp_path / "lone.pkl"
    lone.write_bytes(snapshot.read_bytes())
    result = run_script("train.py", *common, "--kimg=0.016", f"--resume={lone}", cwd=tmp_path)
    assert "kimg starts at 0" in result.stdout and "continue that run exactly" not in result.stdout
    third = run_dirs(outdir)[2]
    assert load_final_state(third)["progress"]["cur_nimg"] == 16

    # Continuing exactly stays explicit: the run directory.
    result = run_script("train.py", *common, "--kimg=1.016", f"--resume={first}", cwd=tmp_path)
    assert "Continuing from" in result.stdout and len(run_dirs(outdir)) == 3
    assert load_final_state(first)["progress"]["cur_nimg"] == 1016


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpus=3", "--batch=8"], "--batch=8 must be a multiple of --gpus=3"),
        (["--batch=8", "--batch-gpu=3"], "must be a multiple of --batch-gpu=3"),
        (["--batch=8", "--batch-gpu=2"], "--batch-gpu=2 is smaller than --mbstd-group=4"),
        (["--cond=1", "--data=UNLABELLED"], "--cond=1 needs labels"),
        (["--aug=ada", "--p=0.5"], "--p sets the probability of --aug=fixed"),
        (["--aug=noaug", "--target=0.5"], "--target is the goal of --aug=ada"),
        (["--cbase=4"], "--cbase=4 is below the resolution 8"),
        (["--metrics=fid50k_full,fid5k"], "Unknown metric 'fid5k'; the registered metrics are:"),
        (["--metrics=eqt50k_int"], "--metrics=eqt50k_int measures the equivariance of StyleGAN3 generators"),
        (["--tick=0.5", "--snap=1"], "below 1 kimg"),
        (["--data=MISSING"], "--data="),
    ],
)
def test_bad_options_are_refused(tmp_path, data, args, message):
    base = {"--outdir": str(tmp_path / "runs"), "--data": str(data), "--gpus": "1", "--batch": "8"}
    base.update({"--cfg": "stylegan2", "--gamma": "1", "--aug": "noaug", "--metrics": "none"})
    for arg in args:
        key, value = arg.split("=", 1)
        if value == "UNLABELLED":
            value = str(_unlabelled_dataset(tmp_path, data))
        elif value == "MISSING":
            value = str(tmp_path / "nope.zip")
        base[key] = value
    result = CliRunner().invoke(train.main, [f"{k}={v}" for k, v in base.items()] + ["--dry-run"])
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert not (tmp_path / "runs").exists()


def _unlabelled_dataset(tmp_path: Path, data: Path) -> Path:
    """A copy of the demo dataset without its dataset.json."""
    path = tmp_path / "unlabelled.zip"
    with zipfile.ZipFile(data) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if name != "dataset.json":
                dst.writestr(name, src.read(name))
    return path


def test_dry_run_prints_the_config_and_writes_nothing(tmp_path, data):
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--gpus=1", "--batch=8", "--dry-run"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    assert '"glr": 0.002' in result.output and "Dry run; exiting." in result.output
    assert "00000-stylegan2-shapes8-gpus1-batch8-gamma1" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "cfg, resolution, batch, expected",
    [
        # The StyleGAN3 training-configurations guide's table (batch 32; the same for -T and -R; CREPS follows it).
        ("stylegan3-t", 128, 32, 0.5),
        ("stylegan3-r", 256, 32, 2),
        ("stylegan3-t", 512, 32, 8),
        ("stylegan3-r", 1024, 32, 32),
        ("creps", 512, 32, 8),
        # StyleGAN2-ADA's automatic configuration (the guide's table of its command lines).
        ("stylegan2", 128, 32, 0.1024),
        ("stylegan2", 256, 16, 0.8192),
        ("stylegan2", 512, 8, 6.5536),
        ("stylegan2", 1024, 4, 52.4288),
    ],
)
def test_recommended_gamma_follows_the_published_tables(cfg, resolution, batch, expected):
    assert config.recommended_gamma(cfg, resolution, batch)[0] == pytest.approx(expected)


def test_recipe_settings_scale_with_the_batch_as_the_published_train_py():
    # StyleGAN3-R at the recipes' batch 32: doubled channels, a 10 kimg G_ema half-life, blur fading over 200 kimg,
    # magnitudes decaying by half every 20k images (per step: 0.5 ** (32 / 20000)).
    r = config.recipe_settings("stylegan3-r", batch=32, cbase=32768, cmax=512)
    assert r["G_kwargs"]["channel_base"] == 65536 and r["G_kwargs"]["channel_max"] == 1024
    assert r["G_kwargs"]["conv_kernel"] == 1 and r["G_kwargs"]["use_radial_filters"]
    assert r["G_kwargs"]["magnitude_ema_beta"] == 0.5 ** (32 / 20000)
    assert (r["ema_kimg"], r["blur_fade_kimg"]) == (10, 200)
    # StyleGAN2 at batch 64: twice the half-life, no blur, no magnitude decay, channels as given.
    s = config.recipe_settings("stylegan2", batch=64, cbase=16384, cmax=256)
    assert s == dict(G_kwargs=dict(channel_base=16384, channel_max=256), ema_kimg=20, blur_fade_kimg=0)


def test_fine_tuning_changes_only_the_published_three_settings():
    c = config.TrainingConfig(outdir="runs", cfg="stylegan3-r", data="d.zip", blur_init_sigma=10)
    tuned = config.fine_tuning(c)
    changed = {f for f in c.__dataclass_fields__ if getattr(c, f) != getattr(tuned, f)}
    assert changed == {"ada_kimg", "ema_rampup", "blur_init_sigma"}
    assert (tuned.ada_kimg, tuned.ema_rampup, tuned.blur_init_sigma) == (100, None, 0.0)


def test_gamma_far_from_the_rule_is_warned_about():
    assert config.gamma_advice("stylegan3-t", 8.2, 512, 32) is None  # AFHQv2's published value
    assert config.gamma_advice("stylegan3-t", 2, 256, 16) is None
    assert config.gamma_advice("stylegan2", 10, 1024, 32) is None  # FFHQ's published StyleGAN2 value
    high = config.gamma_advice("stylegan3-t", 32, 256, 32)  # The 1024x1024 value at 256x256.
    assert high is not None and "--gamma=32 is 16x above" in high and "gives 2 at 256x256" in high
    low = config.gamma_advice("stylegan2", 0.001, 256, 32)
    assert low is not None and "410x below" in low and "--gamma=auto" in low
    assert "turns R1 regularization off" in config.gamma_advice("creps", 0, 256, 32)


def test_batch_advice_only_when_the_batch_differs_from_the_recipes():
    assert config.batch_advice(32) is None
    assert "larger --gamma" in config.batch_advice(16) and "--dlr" in config.batch_advice(16)
    assert "experimenting" in config.batch_advice(64)


def test_gamma_auto_is_printed_and_recorded(tmp_path, data):
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--gpus=1", "--batch=8", "--dry-run"]
    result = CliRunner().invoke(train.main, [*args, "--cfg=stylegan3-t", "--gamma=auto"])
    assert result.exit_code == 0, result.output
    # 8x8 images: 64 / 32768 by the StyleGAN3 rule, rounded to 4 digits for the run directory's name.
    assert "--gamma=auto: 0.001953, from the StyleGAN3 guide's rule" in result.output
    assert '"gamma": 0.001953' in result.output and '"gamma_auto": true' in result.output
    assert "gamma0.001953" in result.output
    assert "Advice: --batch=8 is smaller than the published recipes' 32" in result.output
    result = CliRunner().invoke(train.main, [*args, "--gamma=AUTO"])  # stylegan2: 0.0002 * 64 / 8
    assert result.exit_code == 0 and '"gamma": 0.0016' in result.output, result.output
    result = CliRunner().invoke(train.main, [*args, "--gamma=often"])
    assert result.exit_code != 0 and "'often' is not a valid float" in result.output, result.output


def test_far_gamma_is_warned_about_once_at_start(tmp_path, data):
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--gpus=1", "--batch=32", "--dry-run"]
    result = CliRunner().invoke(train.main, [*args, "--gamma=5", "--mbstd-group=4"])
    assert result.exit_code == 0, result.output
    assert result.output.count("Advice:") == 1 and "--gamma=5 is 12500x above" in result.output, result.output


@pytest.mark.slow
def test_help_matches_docs():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout == (ROOT / "docs" / "train-help.txt").read_text(), "regenerate: python train.py --help"


@pytest.mark.slow
def test_gen_images_refuses_bad_class(tmp_path, data):
    outdir = tmp_path / "runs"
    run_script(
        "train.py",
        f"--outdir={outdir}",
        f"--data={data}",
        *TINY,
        "--gpus=1",
        "--batch=4",
        "--kimg=0.004",
        "--tick=1",
        "--workers=0",
        "--cond=1",
        cwd=tmp_path,
    )
    [run_dir] = run_dirs(outdir)
    snapshot = str(run_dir / "network-snapshot-000000.pkl")
    with open(snapshot, "rb") as f:
        assert pickle.load(f)["G_ema"].c_dim == 3
    runner = CliRunner()
    result = runner.invoke(gen_images.main, [f"--network={snapshot}", "--seeds=0", f"--outdir={tmp_path / 'o'}"])
    assert result.exit_code != 0 and "pass --class=N" in result.output
    result = runner.invoke(
        gen_images.main, [f"--network={snapshot}", "--seeds=0", "--class=3", f"--outdir={tmp_path / 'o'}"]
    )
    assert result.exit_code != 0 and "classes 0..2" in result.output
    result = runner.invoke(
        gen_images.main, [f"--network={snapshot}", "--seeds=1", "--class=2", f"--outdir={tmp_path / 'o'}"]
    )
    assert result.exit_code == 0 and (tmp_path / "o" / "seed0001.png").is_file()
    result = runner.invoke(gen_images.main, [f"--network={tmp_path / 'nope.pkl'}", "--seeds=0", "--outdir=o"])
    assert result.exit_code != 0 and "nope.pkl" in result.output


@pytest.mark.slow
def test_fixed_augmentation_is_applied_logged_and_saved(tmp_path, data):
    outdir = tmp_path / "runs"
    run_script(
        "train.py",
        f"--outdir={outdir}",
        f"--data={data}",
        *TINY,
        "--aug=fixed",
        "--p=0.3",
        "--mirror=1",
        "--gpus=1",
        "--batch=4",
        "--kimg=0.008",
        "--tick=1",
        "--workers=0",
        cwd=tmp_path,
    )
    [run_dir] = run_dirs(outdir)
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["Progress/augment"]["mean"] == pytest.approx(0.3)
    assert "augment 0.300" in (run_dir / "log.txt").read_text()
    with open(run_dir / "network-snapshot-000000.pkl", "rb") as f:
        snapshot = pickle.load(f)
    assert float(snapshot["augment_pipe"].p) == pytest.approx(0.3)
    assert snapshot["training_set_kwargs"]["xflip"] is True  # --mirror=1 doubles the dataset with x-flips.


@pytest.mark.slow
def test_rerunning_a_finished_run_writes_nothing_and_no_snapshot_is_replaced(tmp_path, data):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=4", "--tick=1", "--workers=0"]
    run_script("train.py", *args, "--kimg=0.02", cwd=tmp_path)
    [run_dir] = run_dirs(outdir)
    # Tick 0's snapshot (4 images) and the final one (20) fall in the same kimg: the second gets a name of its own.
    first, final = run_dir / "network-snapshot-000000.pkl", run_dir / "network-snapshot-000000_020.pkl"
    assert sorted(run_dir.glob("network-snapshot-*.pkl")) == [first, final]
    assert first.read_bytes() != final.read_bytes() and (run_dir / "fakes000000_020.png").is_file()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}

    # The same command again, as a requeued job runs it: the run is complete, nothing is written, status 0.
    for resume in ["latest", str(run_dir)]:
        out = run_script("train.py", *args, "--kimg=0.02", f"--resume={resume}", cwd=tmp_path).stdout
        assert f"{run_dir} is complete: it has trained 0.02 kimg of --kimg=0.02 (--kimg is the total" in out, out
        assert "raise --kimg" in out and "Training for" not in out, out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()} == before
    assert run_dirs(outdir) == [run_dir]

    # Raising --kimg trains further; the earlier snapshots stay as they were.
    out = run_script("train.py", *args, "--kimg=0.04", "--resume=latest", cwd=tmp_path).stdout
    assert "Training for 0.04 kimg from 0.02 kimg" in out, out
    assert first.read_bytes() == before[first.name][1] and final.read_bytes() == before[final.name][1]
    assert (run_dir / "network-snapshot-000000_040.pkl").is_file()
