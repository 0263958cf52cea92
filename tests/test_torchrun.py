"""Two torchrun agents on this machine, started as docs/training.md starts one per machine of a cluster (`--nnodes=2
--nproc-per-node=1`, c10d rendezvous on 127.0.0.1): they train as one process does, a SIGTERM to both (as SLURM sends
it) saves one training state and the same command with `--resume=latest` continues bit-exactly, and an agent killed
with its training process (a machine lost) is named by the other rank."""

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, TINY, assert_identical, assert_states_close, final_state, run_dirs, run_script, script_env

from torch_utils import distributed

COMMON = [*TINY, "--gpus=2", "--batch=8", "--batch-gpu=4", "--tick=0.04", "--workers=0"]


class Agents:
    """Two torchrun agents (`python -m torch_utils.torchrun`) of one job, each in a process group of its own as on
    two machines; agent 0 hosts the rendezvous store. Their output goes to agent0.log and agent1.log in `folder`."""

    def __init__(self, folder: Path, *train_args: str):
        folder.mkdir(exist_ok=True)
        self.logs = [folder / f"agent{node}.log" for node in (0, 1)]
        rendezvous = [
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{distributed._free_port()}",
            f"--rdzv-id={uuid.uuid4().hex}",
        ]
        self.agents = []
        for node, log in enumerate(self.logs):
            command = [
                sys.executable,
                "-m",
                "torch_utils.torchrun",
                *rendezvous,
                f"--rdzv-conf=is_host={int(node == 0)}",
            ]
            with open(log, "w") as out:
                self.agents.append(
                    subprocess.Popen(
                        [*command, str(ROOT / "train.py"), *train_args],
                        cwd=folder,
                        env=script_env(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT)),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def output(self) -> str:
        return "".join(log.read_text() for log in self.logs)

    def wait_for(self, marker: str, timeout_sec: float = 300) -> None:
        deadline = time.time() + timeout_sec
        while marker not in self.output():
            assert time.time() < deadline and all(a.poll() is None for a in self.agents), self.output()
            time.sleep(0.2)

    def finish(self, timeout_sec: float = 300) -> list[int]:
        """Wait for both agents; their exit statuses."""
        try:
            return [agent.wait(timeout=timeout_sec) for agent in self.agents]
        finally:
            self.kill()

    def processes(self, node: int) -> list[psutil.Process]:
        """Agent `node` and the training process it started (in a session of its own, as torchrun starts them)."""
        agent = psutil.Process(self.agents[node].pid)
        return [agent, *agent.children(recursive=True)]

    def rank_of(self, node: int) -> int:
        [rank] = {int(p.environ()["RANK"]) for p in self.processes(node)[1:] if "train.py" in " ".join(p.cmdline())}
        return rank

    def kill(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()


@pytest.mark.slow
def test_two_agents_train_as_one_process_and_a_sigterm_to_both_resumes_bit_identical(tmp_path, data):
    outdirs = {name: tmp_path / name for name in ("one", "straight", "split")}
    run_script(
        "train.py", f"--outdir={outdirs['one']}", f"--data={data}", *COMMON, "--gpus=1", "--kimg=0.16", cwd=tmp_path
    )
    straight = Agents(tmp_path, f"--outdir={outdirs['straight']}", f"--data={data}", *COMMON, "--kimg=0.16")
    assert straight.finish() == [0, 0], straight.output()
    # As with --gpus=2 (test_training.py): only the order of float additions differs from one process.
    assert_states_close(final_state(outdirs["one"]), final_state(outdirs["straight"]), atol=1e-6, rtol=1e-5)

    split = [f"--outdir={outdirs['split']}", f"--data={data}", *COMMON, "--kimg=0.16"]
    agents = Agents(tmp_path / "first", *split)
    agents.wait_for("tick 1 ")
    # torchrun waits longer than its default 30 s for the training processes to save (distributed.run_torchrun).
    environ = agents.processes(0)[-1].environ()
    assert environ[distributed.TORCHRUN_SHUTDOWN_TIMEOUT_ENV] == str(distributed.TORCHRUN_SHUTDOWN_TIMEOUT_SEC)
    for node in (0, 1):  # SLURM signals every process of the job: the agents and their training processes.
        for process in agents.processes(node):
            process.send_signal(signal.SIGTERM)
    statuses, out = agents.finish(), agents.output()
    assert statuses == [143, 143], out
    assert out.count("Received SIGTERM") == 1 and out.count("Stopped by a signal") == 1, out
    assert out.count("torchrun: stopped by SIGTERM") == 2 and "Traceback" not in out, out
    assert out.split("Received SIGTERM")[1].count("Saved training-state") == 1, out
    stopped_at = final_state(outdirs["split"])["progress"]["cur_nimg"]
    assert stopped_at % 8 == 0 and 40 <= stopped_at < 160

    agents = Agents(tmp_path / "second", *split, "--resume=latest")
    assert agents.finish() == [0, 0], agents.output()
    assert f"from {stopped_at / 1000:g} kimg" in agents.output()
    assert len(run_dirs(outdirs["split"])) == 1
    assert_identical(final_state(outdirs["straight"]), final_state(outdirs["split"]))


@pytest.mark.slow
def test_a_lost_agent_is_named_by_the_other_within_the_timeout(tmp_path, data):
    agents = Agents(
        tmp_path, f"--outdir={tmp_path / 'runs'}", f"--data={data}", *COMMON, "--kimg=10", "--timeout-min=0.1"
    )
    agents.wait_for("tick 1 ")
    lost = agents.rank_of(1)
    for process in agents.processes(1):  # Agent 1's machine goes down: its agent and training process end at once.
        process.kill()
    killed_at = time.time()
    status = agents.agents[0].wait(timeout=120)
    out = agents.output()
    agents.kill()
    assert status != 0 and time.time() - killed_at < 6 + 30, out  # --timeout-min, plus the time to tear down.
    assert f"rank {1 - lost} lost its connection to rank {lost} while waiting" in out, out
    assert "--resume=<run dir>" in out and f"[rank{1 - lost}]: Traceback" not in out, out
