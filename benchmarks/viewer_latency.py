"""visualizer.py's latency: from an input event in a real browser to the new image on the page, p50 and p95.

Starts visualizer.py (a subprocess, as users run it) on each network and drives headless Chromium (Debian's
`chromium` and `chromium-driver`, through Selenium). Each sample changes the seed x as a slider would (the
control's value, then its input event) and waits in the page until the image of that view is shown; the time is the
page's own clock (performance.now()) from the event to the image's load. Two kinds of sample:

- single: one event, then wait (how fast one change shows);
- burst: 10 events 15 ms apart (a drag), the time from the last event to its image (the coalescing: no stale
  frames are rendered before it).

Networks: `--network=PKL` (any number, e.g. the quick start's snapshot), and `--preset=stylegan3-t,creps` builds
those presets at `--resolution` with their default width and random weights.

    python -m benchmarks.viewer_latency --network=runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.0128 \\
        --preset=stylegan3-t,creps --resolution=256
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import torch

from torch_utils import distributed
from training.config import PRESETS, recipe_settings

ROOT = Path(__file__).resolve().parents[1]

# Runs in the page: change x `count` times `gap_ms` apart, then wait for the last view's image; the milliseconds
# from the last event to the image's load.
MEASURE = """
const [count, gapMs, done] = arguments;
(async () => {
  const x = document.getElementById("x"), image = document.getElementById("image");
  const base = Number(x.value) + 1;
  let start = 0;
  for (let i = 0; i < count; i++) {
    if (i) await new Promise((r) => setTimeout(r, gapMs));
    x.value = base + i;
    start = performance.now();
    x.dispatchEvent(new Event("input"));
  }
  const wanted = sentId;
  while (Number(image.dataset.request || 0) < wanted) await new Promise((r) => requestAnimationFrame(r));
  if (!image.complete) await new Promise((r) => image.addEventListener("load", r, { once: true }));
  done(performance.now() - start);
})();
"""


def preset_snapshot(cfg: str, resolution: int, folder: Path) -> Path:
    """A snapshot of preset `cfg` at `resolution`, default width, random weights (as train.py would build it)."""
    preset = PRESETS[cfg]
    torch.manual_seed(0)
    G = preset.G_class(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=dict(num_layers=preset.map_depth),
        **preset.G_mixed_precision,
        **recipe_settings(cfg, batch=32, cbase=32768, cmax=512)["G_kwargs"],
    ).eval()
    path = folder / f"{cfg}-{resolution}.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None, "training_set_kwargs": {}}, f)
    return path


def measure(network: str, samples: int, device: str) -> dict[str, list[float]]:
    """Latencies (ms) of single events and of bursts on `network`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = distributed._free_port()
    command = [sys.executable, str(ROOT / "visualizer.py"), network, f"--port={port}", "--token=bench"]
    server = subprocess.Popen(
        [*command, f"--device={device}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    browser = None
    try:
        line = server.stdout.readline()
        if "open http" not in line:
            raise click.ClickException(f"visualizer.py did not start: {line}{server.stdout.read()}")
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        browser.set_script_timeout(600)
        browser.get(f"http://127.0.0.1:{port}/?token=bench")
        WebDriverWait(browser, 600).until(  # The network opened and its first image shown.
            lambda b: int(b.find_element(By.ID, "image").get_attribute("data-request") or 0) > 0
        )
        browser.execute_async_script(MEASURE, 1, 0)  # Warm-up.
        return {
            "single": [browser.execute_async_script(MEASURE, 1, 0) for _ in range(samples)],
            "burst": [browser.execute_async_script(MEASURE, 10, 15) for _ in range(max(samples // 2, 1))],
        }
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(30)


@click.command()
@click.option("--network", "networks", metavar="PKL|DIR", multiple=True, help="A snapshot or run directory.")
@click.option("--preset", "presets", metavar="LIST", default="", help="Presets to build, e.g. stylegan3-t,creps.")
@click.option("--resolution", metavar="INT", type=click.IntRange(min=4), default=256, show_default=True)
@click.option("--samples", metavar="INT", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--device", metavar="DEVICE", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def main(networks: tuple[str, ...], presets: str, resolution: int, samples: int, device: str) -> None:
    """Print p50 / p95 latency from an input event to the new image, per network."""
    with tempfile.TemporaryDirectory() as folder:
        targets = list(networks)
        for cfg in [p for p in presets.split(",") if p]:
            targets.append(str(preset_snapshot(cfg, resolution, Path(folder))))
        print(f"{'network':<60} {'single p50':>11} {'p95':>8} {'burst p50':>10} {'p95':>8}  (ms, {device})")
        for network in targets:
            times = measure(network, samples, device)
            single, burst = np.array(times["single"]), np.array(times["burst"])
            print(
                f"{Path(network).name:<60} {np.percentile(single, 50):11.0f} {np.percentile(single, 95):8.0f} "
                f"{np.percentile(burst, 50):10.0f} {np.percentile(burst, 95):8.0f}"
            )


if __name__ == "__main__":
    main()
