"""The root scripts' options as users type them, and what --help and the start-up say (issue 28, item 4)."""

import re
import shlex
import urllib.error
import urllib.request

import click
import pytest
from click.testing import CliRunner
from helpers import readme_quick_start

import calc_metrics
import dataset_tool
import dnnlib
import gen_images
import gen_video
import train
from metrics import detectors

COMMANDS = [train.main, gen_images.main, gen_video.main, calc_metrics.main, dataset_tool.main]
SCRIPTS = ["train", "gen_images", "gen_video", "calc_metrics", "dataset_tool"]
BOOL_SPELLINGS = ["1", "0", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"]


def _help(command: click.Command) -> str:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _dry_run(tmp_path, data, *args: str) -> click.testing.Result:
    """train.py --dry-run on `data` with a tiny network, no metrics and `args`."""
    base = [f"--outdir={tmp_path}", f"--data={data}", "--cfg=stylegan2", "--gpus=1", "--batch=16", "--gamma=auto"]
    return CliRunner().invoke(train.main, [*base, "--metrics=none", "--cbase=64", "--cmax=32", *args, "--dry-run"])


def _commands(text: str) -> list[list[str]]:
    """The `python ...` commands in a block of help or Markdown text, continuation lines joined, as argv lists."""
    joined = re.sub(r"\\\n\s*", "", text)
    return [shlex.split(line.strip()) for line in joined.splitlines() if line.strip().startswith("python ")]


# ----------------------------------------------------------------------------
# The --help examples.


def test_the_first_help_example_is_the_readme_quick_start():
    """The example for the CPU trains what the README's quick start trains, option for option."""
    examples = _help(train.main).split("Examples:", 1)[1].split("\n\n")
    first = next(block for block in examples if "python" in block)
    assert "CPU" in first, first
    quick_start = readme_quick_start()[0]
    readme_commands = [shlex.split(part) for part in quick_start.split(" && ") if part.startswith("python ")]
    readme_commands = [[arg for arg in args if arg != "--force"] for args in readme_commands]  # The help's needs none.
    assert _commands(first) == readme_commands


def test_data_is_shown_as_required():
    text = _help(train.main)
    assert re.search(r"--data ZIP\|DIR +Training data", text), text
    assert "[ZIP|DIR]" not in text


# ----------------------------------------------------------------------------
# BOOL options: the flag alone, or with a value.


def _bool_params(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.metavar == "BOOL"]


@pytest.mark.parametrize("command", COMMANDS, ids=SCRIPTS)
def test_every_bool_option_also_works_as_a_flag(command):
    """Every yes/no option of the root scripts is a BOOL that may be given alone; none is a plain click bool, which
    would take the next option as its value."""
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and isinstance(param.type, click.types.BoolParamType):
            raise AssertionError(f"{command.name} {param.opts}: use dnnlib.util.BOOL with flag_value=True")
    for param in _bool_params(command):
        assert isinstance(param.type, dnnlib.util.BoolParamType), param.opts
        assert not param.is_flag and param.flag_value is True, f"{command.name} {param.opts} must accept the flag alone"


def test_train_bool_options_in_every_spelling(tmp_path, demo_shapes):
    data = demo_shapes(32)
    alone = _dry_run(tmp_path, data, "--cond", "--mirror", "--fp32", "--nobench")
    assert alone.exit_code == 0, alone.output
    for setting in ('"cond": true', '"mirror": true', '"fp32": true', '"cudnn_benchmark": false'):
        assert setting in alone.output, setting
    for args, fp32 in [
        (["--fp32"], "true"),  # Alone, just before --dry-run.
        (["--fp32", "--workers=1"], "true"),  # Alone, followed by another option.
        (["--fp32=1"], "true"),
        (["--fp32", "1"], "true"),
        (["--fp32=0"], "false"),
        (["--fp32", "0"], "false"),
        (["--fp32=True"], "true"),
        (["--fp32=no"], "false"),
    ]:
        result = _dry_run(tmp_path, data, *args)
        assert result.exit_code == 0 and f'"fp32": {fp32}' in result.output, (args, result.output)
    required = [f"--outdir={tmp_path}", f"--data={data}", "--cfg=stylegan2", "--gpus=1", "--batch=16", "--gamma=1"]
    at_the_end = CliRunner().invoke(train.main, [*required, "--dry-run", "--fp32"])
    assert at_the_end.exit_code == 0 and '"fp32": true' in at_the_end.output, at_the_end.output


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_a_bad_bool_value_lists_the_accepted_spellings(tmp_path, demo_shapes, value):
    result = _dry_run(tmp_path, demo_shapes(32), f"--fp32={value}")
    assert result.exit_code == 2, result.output
    message = result.output.split("Error: ", 1)[1]
    assert f"Invalid value for '--fp32': {value!r} is not" in message, message
    assert all(re.search(rf"\b{spelling}\b", message) for spelling in BOOL_SPELLINGS), message
    assert ", ," not in message and ": ," not in message and "''," not in message, message  # No empty spelling.


def test_bool_help_shows_the_metavar_and_default():
    text = _help(train.main)
    for name in ("--cond", "--mirror", "--fp32", "--nobench"):
        assert re.search(rf"{name} BOOL .*\[default: False\]", text), name
    assert re.search(r"--verbose BOOL .*\[default: True\]", _help(calc_metrics.main))


def test_calc_metrics_bool_options_parse_alone_and_keep_the_snapshots_default():
    def params(*args):
        return calc_metrics.main.make_context("calc_metrics.py", ["--network=net.pkl", *args]).params

    assert params()["mirror"] is None and params()["verbose"] is True  # None: the snapshot's setting.
    assert params("--mirror", "--verbose=0") == params("--mirror", "--verbose", "0")
    assert params("--mirror")["mirror"] is True and params("--mirror=0")["mirror"] is False
    assert params("--verbose=off")["verbose"] is False


# ----------------------------------------------------------------------------
# Range descriptions in --help.


@pytest.mark.parametrize("command", COMMANDS, ids=SCRIPTS)
def test_help_shows_no_empty_range_bound(command):
    text = _help(command)
    assert "None" not in text, text


def test_unbounded_float_options_show_only_their_default():
    assert dnnlib.util.FiniteFloatRange()._describe_range() == ""
    assert dnnlib.util.FiniteFloatRange(min=0)._describe_range() == "x>=0"
    assert dnnlib.util.FiniteFloatRange(max=1, max_open=True)._describe_range() == "x<1"
    for command in (gen_images.main, gen_video.main):
        assert re.search(r"--trunc FLOAT +Truncation psi\.  \[default: 1\]\n", _help(command))
    assert re.search(r"--rotate DEG +Rotate, in degrees \(StyleGAN3\)\.\n", _help(gen_images.main))


# ----------------------------------------------------------------------------
# Offline with the default --metrics.


def test_offline_default_metrics_say_retries_and_how_to_go_on(tmp_path, demo_shapes, monkeypatch):
    sleeps = []

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(dnnlib.util.time, "sleep", sleeps.append)
    monkeypatch.setattr(train, "launch", lambda c: pytest.fail("an unavailable detector must stop the run first"))
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={demo_shapes(32)}", "--cfg=stylegan2", "--gpus=1"]
    result = CliRunner().invoke(train.main, [*args, "--batch=16", "--gamma=auto", "--cbase=64", "--cmax=32"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    attempts = detectors.DOWNLOAD_ATTEMPTS
    for url in detectors.INCEPTION.urls:
        assert lines.count(f"Downloading {url} ...") == 1, result.output  # One line per URL; retries say so.
    retries = [line for line in lines if "retry" in line.lower()]
    assert len(retries) == len(detectors.INCEPTION.urls) * (attempts - 1), result.output
    assert all("Name or service not known" in line for line in retries), retries
    assert len(sleeps) == len(retries)
    error = result.output.split("Error: ", 1)[1]
    for way_on in ("--detector-dir", "--metrics=none", "--metrics=swd"):
        assert way_on in error, way_on


def test_retries_are_labelled_in_open_url(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(dnnlib.util.time, "sleep", lambda s: None)
    with pytest.raises(dnnlib.util.DownloadError, match="after 3 attempts"):
        dnnlib.util.open_url("https://example.invalid/x.pkl", cache_dir=str(tmp_path), num_attempts=3)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Downloading https://example.invalid/x.pkl ..."
    assert [line.split(":")[0].strip() for line in out[1:]] == ["Attempt 1 of 3 failed", "Attempt 2 of 3 failed"]
    assert all(line.endswith(("retrying in 1 s.", "retrying in 2 s.")) for line in out[1:]), out


# ----------------------------------------------------------------------------
# The dataset's size at start.


def test_dry_run_shows_the_dataset_size(tmp_path, demo_shapes):
    result = _dry_run(tmp_path, demo_shapes(32))
    assert result.exit_code == 0, result.output
    assert re.search(r"Dataset path: +\S+shapes32\.zip \(64 images, 32x32\)\n", result.output), result.output
    assert "Warning:" not in result.output


def test_a_dataset_smaller_than_the_batch_is_warned_about(tmp_path, demo_shapes):
    result = _dry_run(tmp_path, demo_shapes(32, max_images=10))
    assert result.exit_code == 0, result.output
    assert "(10 images, 32x32)" in result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert "10 images" in warning and "--batch=16" in warning and "repeat" in warning, warning
