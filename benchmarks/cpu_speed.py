"""CPU speed of StyleGAN3: the filtered_lrelu reference path, the generator, and real training.

Measures this checkout and, with --baseline=DIR, another one (for example a worktree of an earlier commit), taking
turns between the two so that both see the same load; on a machine shared with other jobs only figures taken side
by side like this compare. Each checkout runs in processes of its own that import it (PYTHONPATH), so the baseline
needs no copy of this script. Printed: medians.

Parts:
    ops    Every distinct filtered_lrelu call of one forward pass of a stylegan3-t generator at --resolution,
           --cbase and --cmax (batch --batch), on the activations that pass produced: milliseconds per forward
           and per forward + backward (gradients of x and the bias), summed over the layers; then the whole
           generator, forward (no_grad, as the image grids render) and forward + backward.
    steps  Training steps of stylegan3-t as train.py would run them (benchmarks/step_profile.py builds the
           trainer from train.py's options; --gamma=0.05), one process per checkout, the two taking turns step by
           step (--steps each, after 16 warm-up steps), so each pair of steps sees the same load: s/kimg is the
           median step time over the batch, and the speed-up the median of the paired ratios.
    train  train.py --cfg=stylegan3-t on a demo:shapes zip (metrics off, --workers=1), one whole run per checkout
           per round: start-up (the tick-0 line's time, image grids and first step included) and s/kimg, the
           median of the ticks after warm-up (ticks 0 and 1; see benchmarks/train_speed.py). Runs last minutes,
           so a busy machine's load can differ between the two; the steps part pairs far more closely.

Examples:

    git worktree add /tmp/base HEAD~1          # the checkout to compare with
    python -m benchmarks.cpu_speed --baseline=/tmp/base --parts=ops --rounds=5
    python -m benchmarks.cpu_speed --baseline=/tmp/base --parts=steps --steps=48
    python -m benchmarks.cpu_speed --baseline=/tmp/base --parts=train --rounds=3 --json=cpu_speed.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
WARMUP_TICKS = 2  # As in benchmarks/train_speed.py: tick 0 is one step, tick 1 the first run of every phase.

# ----------------------------------------------------------------------------
# Workers: run in a fresh process whose PYTHONPATH is the checkout measured. They print one JSON line.


def ops_worker(resolution: int, batch: int, cbase: int, cmax: int, repeats: int) -> dict:
    """Time each distinct filtered_lrelu call of a stylegan3-t G, and G itself, in this process's checkout."""
    import torch

    from torch_utils.ops import filtered_lrelu as ops_module
    from training.networks_stylegan3 import Generator

    torch.manual_seed(0)
    G = Generator(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=resolution,
        img_channels=3,
        num_fp16_res=4,
        conv_clamp=256,
        channel_base=cbase,
        channel_max=cmax,
        mapping_kwargs=dict(num_layers=2),
    )
    z = torch.randn([batch, G.z_dim])

    calls = {}  # (x shape, up, down) -> [arguments, keyword arguments, count]
    original = ops_module.filtered_lrelu

    def recorder(x, *args, **kwargs):
        key = (tuple(x.shape), kwargs.get("up"), kwargs.get("down"))
        entry = calls.setdefault(key, [(x.detach().clone(), *args), kwargs, 0])
        entry[2] += 1
        return original(x, *args, **kwargs)

    ops_module.filtered_lrelu = recorder
    with torch.no_grad():
        G(z, None)
    ops_module.filtered_lrelu = original

    def median_ms(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    rows = []
    for (shape, up, down), ((x, *args), kwargs, count) in calls.items():
        kwargs = {k: (v.detach().requires_grad_(True) if k == "b" else v) for k, v in kwargs.items()}
        x = x.requires_grad_(True)

        def forward_backward(x=x, args=args, kwargs=kwargs):
            y = original(x, *args, **kwargs)
            y.backward(torch.ones_like(y))

        def forward(x=x, args=args, kwargs=kwargs):
            with torch.no_grad():
                original(x, *args, **kwargs)

        rows.append(
            dict(
                shape=list(shape),
                up=up,
                down=down,
                count=count,
                fwd_ms=median_ms(forward),
                fwd_bwd_ms=median_ms(forward_backward),
            )
        )

    def G_forward():
        with torch.no_grad():
            G(z, None)

    def G_forward_backward():
        G(z, None).square().sum().backward()

    return dict(
        ops=rows,
        ops_fwd_ms=sum(r["fwd_ms"] * r["count"] for r in rows),
        ops_fwd_bwd_ms=sum(r["fwd_bwd_ms"] * r["count"] for r in rows),
        G_fwd_ms=median_ms(G_forward),
        G_fwd_bwd_ms=median_ms(G_forward_backward),
    )


def measure_ops(tree: Path, opts: dict) -> dict:
    """Run ops_worker in a fresh process importing `tree`."""
    cmd = [sys.executable, __file__, "--worker=ops"]
    cmd += [f"--{k.replace('_', '-')}={opts[k]}" for k in ("resolution", "batch", "cbase", "cmax", "repeats")]
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_training(tree: Path, data: Path, outdir: Path, opts: dict) -> dict:
    """Train with `tree`'s train.py; its start-up and median steady s/kimg from stats.jsonl."""
    from training.run_log import read_jsonl

    ticks = WARMUP_TICKS - 1 + opts["steady_ticks"]  # after tick 0, which is a single step
    cmd = [
        sys.executable,
        "train.py",
        f"--outdir={outdir}",
        "--cfg=stylegan3-t",
        f"--data={data}",
        "--gpus=1",
        f"--batch={opts['batch']}",
        "--gamma=0.05",
        "--metrics=none",
        f"--cbase={opts['cbase']}",
        f"--cmax={opts['cmax']}",
        f"--kimg={ticks * opts['tick_kimg']:g}",
        f"--tick={opts['tick_kimg']:g}",
        f"--snap={int(1 / opts['tick_kimg']) + 1}",
        "--workers=1",
    ]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    stats = read_jsonl(str(sorted(outdir.glob("*/stats.jsonl"))[-1]))
    steady = [tick["Timing/sec_per_kimg"]["mean"] for tick in stats[WARMUP_TICKS:]]
    return dict(
        startup_sec=stats[0]["Timing/startup_sec"]["mean"],
        sec_per_kimg=statistics.median(steady),
        steady_ticks=len(steady),
    )


def steps_worker(data: str, batch: int, cbase: int, cmax: int, warmup: int) -> None:
    """Build the trainer of train.py --cfg=stylegan3-t in this process's checkout; run one training step per 'step'
    line on stdin and answer with its milliseconds."""
    from benchmarks import step_profile

    train_args = [f"--batch={batch}", "--gamma=0.05", f"--cbase={cbase}", f"--cmax={cmax}", "--workers=1"]
    with tempfile.TemporaryDirectory() as tmp:
        c, t, data_iter, labels, device = step_profile.build("stylegan3-t", Path(data), Path(tmp), train_args)
        step_profile.run_steps(c, t, data_iter, labels, device, warmup)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            print(step_profile.run_steps(c, t, data_iter, labels, device, 1), flush=True)


def measure_steps(trees: dict[str, Path], data: Path, opts: dict) -> dict[str, list[float]]:
    """Milliseconds of --steps training steps per checkout, the checkouts' worker processes taking turns."""
    args = [f"--data={data}"] + [f"--{k}={opts[k]}" for k in ("batch", "cbase", "cmax")]
    workers = {}
    for name, tree in trees.items():
        env = dict(os.environ, PYTHONPATH=str(tree))
        cmd = [sys.executable, __file__, "--worker=steps", *args]
        workers[name] = subprocess.Popen(
            cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
    try:
        for name, worker in workers.items():  # the timed steps start once both have warmed up
            while (line := worker.stdout.readline()) and line.strip() != "ready":
                pass
            assert line, f"the {name} worker exited during its warm-up"
        times = {name: [] for name in workers}
        for i in range(opts["steps"]):
            for name in list(workers)[:: 1 if i % 2 == 0 else -1]:  # ABBA order: neither always goes first
                workers[name].stdin.write("step\n")
                workers[name].stdin.flush()
                times[name].append(float(workers[name].stdout.readline()))
        return times
    finally:
        for worker in workers.values():
            worker.stdin.close()
            worker.wait()


# ----------------------------------------------------------------------------


def summarize(results: dict[str, list[dict]], keys: list[str]) -> dict[str, dict[str, float]]:
    """{tree: {key: median over the rounds}}."""
    return {tree: {k: statistics.median(r[k] for r in rounds) for k in keys} for tree, rounds in results.items()}


def print_table(title: str, summary: dict[str, dict[str, float]], keys: list[str]) -> None:
    """One row per figure: each tree's median and, with a baseline, baseline / this (the speed-up)."""
    trees = list(summary)
    print(f"\n{title}")
    print(f"{'':<22}" + "".join(f"{t:>12}" for t in trees) + ("    speed-up" if len(trees) == 2 else ""))
    for k in keys:
        values = [summary[t][k] for t in trees]
        line = f"{k:<22}" + "".join(f"{v:>12.2f}" for v in values)
        if len(values) == 2:
            line += f"    {values[1] / values[0]:>7.2f}x"
        print(line)


@click.command(context_settings=dict(max_content_width=120))
@click.option(
    "--baseline",
    metavar="DIR",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Another checkout to measure alongside this one.",
)
@click.option(
    "--parts", metavar="LIST", default="ops,steps", show_default=True, help="Comma-separated: ops, steps, train."
)
@click.option(
    "--rounds",
    metavar="INT",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Measurements per checkout, alternating between the checkouts.",
)
@click.option(
    "--resolution", metavar="INT", type=click.IntRange(min=16), default=32, show_default=True, help="Image resolution."
)
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), default=8, show_default=True, help="Batch size.")
@click.option(
    "--cbase",
    metavar="INT",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Capacity multiplier (train.py --cbase).",
)
@click.option(
    "--cmax",
    metavar="INT",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Max. feature maps (train.py --cmax).",
)
@click.option(
    "--repeats",
    metavar="INT",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="ops: timed repetitions per call (median).",
)
@click.option(
    "--steps",
    metavar="INT",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="steps: timed steps per checkout (multiples of 16 hold every phase in its share).",
)
@click.option(
    "--tick-kimg",
    metavar="KIMG",
    type=click.FloatRange(min=0.001),
    default=0.064,
    show_default=True,
    help="train: tick length.",
)
@click.option(
    "--steady-ticks",
    metavar="INT",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="train: ticks timed after the two warm-up ticks.",
)
@click.option("--glibc-tunables", metavar="STR", help="GLIBC_TUNABLES of the measured processes (docs/performance.md).")
@click.option("--json", "json_path", metavar="FILE", type=click.Path(dir_okay=False), help="Also write every figure.")
@click.option("--worker", type=click.Choice(["ops", "steps"]), hidden=True, help="Internal: be a worker process.")
@click.option("--data", hidden=True, help="Internal: the steps worker's dataset.")
def main(
    baseline: Path | None,
    parts: str,
    rounds: int,
    glibc_tunables: str | None,
    json_path: str | None,
    worker: str | None,
    data: str | None,
    **opts,
) -> None:
    """Time the StyleGAN3 CPU path of this checkout, and of --baseline, in alternation; print medians."""
    if glibc_tunables:
        os.environ["GLIBC_TUNABLES"] = glibc_tunables  # inherited by the measured processes
    if worker == "ops":
        print(json.dumps(ops_worker(**{k: opts[k] for k in ("resolution", "batch", "cbase", "cmax", "repeats")})))
        return
    if worker == "steps":
        steps_worker(data, opts["batch"], opts["cbase"], opts["cmax"], warmup=16)
        return
    trees = {"this": ROOT} | ({"baseline": baseline.resolve()} if baseline else {})
    parts = [p.strip() for p in parts.split(",")]
    assert set(parts) <= {"ops", "steps", "train"}, f"--parts takes ops, steps and/or train, got {parts}"
    report = dict(options=dict(opts, rounds=rounds, baseline=str(baseline), glibc_tunables=glibc_tunables))
    if "ops" in parts:
        results = {name: [] for name in trees}
        for r in range(rounds):
            for name in list(trees)[:: 1 if r % 2 == 0 else -1]:  # ABBA order: neither always goes first
                results[name].append(measure_ops(trees[name], opts))
        keys = ["ops_fwd_ms", "ops_fwd_bwd_ms", "G_fwd_ms", "G_fwd_bwd_ms"]
        report["ops"] = dict(rounds=results, medians=summarize(results, keys))
        res, batch = opts["resolution"], opts["batch"]
        title = f"filtered_lrelu calls of one G pass (summed), and G; {res}x{res}, batch {batch}; milliseconds"
        print_table(title, report["ops"]["medians"], keys)
    if "steps" in parts:
        from benchmarks.train_speed import make_dataset

        with tempfile.TemporaryDirectory() as tmp:
            times = measure_steps(trees, make_dataset(Path(tmp), opts["resolution"], max_images=64), opts)
        medians = {
            name: dict(ms_per_step=statistics.median(t), sec_per_kimg=statistics.median(t) / opts["batch"])
            for name, t in times.items()
        }
        report["steps"] = dict(ms=times, medians=medians)
        print_table(
            f"training steps, stylegan3-t, batch {opts['batch']}, {opts['steps']} each",
            medians,
            ["ms_per_step", "sec_per_kimg"],
        )
        if baseline:
            ratios = [b / a for a, b in zip(times["this"], times["baseline"], strict=True)]
            report["steps"]["paired_speedup"] = statistics.median(ratios)
            print(f"median of the paired ratios (baseline / this): {statistics.median(ratios):.2f}x")
    if "train" in parts:
        from benchmarks.train_speed import make_dataset

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = make_dataset(tmp, opts["resolution"], max_images=4096)
            results = {name: [] for name in trees}
            for r in range(rounds):
                for name in list(trees)[:: 1 if r % 2 == 0 else -1]:
                    outdir = tmp / f"{name}-{r}"
                    results[name].append(measure_training(trees[name], data, outdir, opts))
                    print(f"round {r} {name}: {results[name][-1]}", flush=True)
        keys = ["startup_sec", "sec_per_kimg"]
        report["train"] = dict(rounds=results, medians=summarize(results, keys))
        print_table(f"train.py --cfg=stylegan3-t, batch {opts['batch']}", report["train"]["medians"], keys)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
