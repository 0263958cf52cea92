"""Tests for the quality metrics: the math against independent implementations, and the whole pipeline on CPU.

The pipeline tests use STAND-IN detectors: small TorchScript modules with the call signature of the published
Inception-v3 and VGG16 files (pooled pixel statistics times a fixed random projection). They are NOT Inception or
VGG, and the numbers they give mean nothing; they only let the sampling, the rank split, the statistics cache,
the offline handling and the JSON output run without the real 100 MB files.
"""

import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import urllib.error
import urllib.request
import warnings

import helpers
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny

import calc_metrics
import dnnlib
import metrics
import train
from metrics import detectors, equivariance, features, registry
from metrics.frechet_inception_distance import frechet_distance
from metrics.inception_score import inception_score
from metrics.kernel_inception_distance import kernel_inception_distance
from metrics.precision_recall import precision_recall
from metrics.sliced_wasserstein import laplacian_pyramid, pyramid_down, pyramid_up, sliced_wasserstein
from torch_utils.alias_free import make_transform
from training import checkpoint, networks_stylegan2
from training.dataset import ImageFolderDataset

CPU = torch.device("cpu")

# ----------------------------------------------------------------------------
# The math, against independent numpy/scipy versions.


def gaussian_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian features [n, d]."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal([d, d]) / np.sqrt(d)
    return rng.standard_normal([n, d]) @ mixing + shift


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((cov1 cov2)^(1/2)) by symmetric eigendecompositions: the eigenvalues of S1 cov2 S1, S1 = cov1^(1/2)."""
    values, vectors = np.linalg.eigh(cov1)
    sqrt1 = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(sqrt1 @ cov2 @ sqrt1), 0, None)).sum())


def test_frechet_distance_matches_an_eigendecomposition():
    real, gen = gaussian_features(400, 24, seed=0), gaussian_features(300, 24, seed=1, shift=0.3)
    mu1, cov1, mu2, cov2 = real.mean(0), np.cov(real, rowvar=False), gen.mean(0), np.cov(gen, rowvar=False)
    expected = np.square(mu1 - mu2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0, abs=1e-6)


def kid_by_loops(real: np.ndarray, gen: np.ndarray, num_subsets: int, max_subset_size: int, seed: int) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, written out element by element over the same subsets."""
    d = real.shape[1]
    m = min(max_subset_size, len(real), len(gen))
    rng = np.random.default_rng(seed)

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1) ** 3

    estimates = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = gen[rng.choice(len(gen), m, replace=False)]
        k_xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
        k_yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
        k_xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
        estimates.append((k_xx + k_yy) / (m * (m - 1)) - 2 * k_xy / (m * m))
    return float(np.mean(estimates))


def test_kid_matches_explicit_loops():
    real, gen = gaussian_features(50, 6, seed=2), gaussian_features(40, 6, seed=3, shift=0.5)
    expected = kid_by_loops(real, gen, num_subsets=4, max_subset_size=25, seed=7)
    assert kernel_inception_distance(real, gen, num_subsets=4, max_subset_size=25, seed=7) == pytest.approx(
        expected, rel=1e-6
    )
    assert expected > 0  # The shifted set is measurably different.


def test_precision_recall_of_disjoint_and_identical_sets():
    a = torch.from_numpy(gaussian_features(60, 5, seed=4)).float()
    b = torch.from_numpy(gaussian_features(50, 5, seed=5)).float() + 100  # Far away from a.
    assert precision_recall(a, b, k=3, block_size=16) == (0.0, 0.0)
    assert precision_recall(a, a.clone(), k=3, block_size=16) == (1.0, 1.0)


def test_inception_score_of_uniform_and_confident_predictions():
    mean, std = inception_score(np.full([100, 1008], 1 / 1008), num_splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    confident = np.zeros([1000, 10])
    confident[np.arange(1000), np.arange(1000) % 10] = 1  # Every split sees all 10 classes equally often.
    mean, _std = inception_score(confident, num_splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6)
    # Against exp(mean KL) written out per sample, on random distributions in 2 splits.
    probs = np.random.default_rng(0).dirichlet(np.full(5, 0.3), size=40)
    expected = [
        np.exp(np.mean([np.sum(p * np.log(p / part.mean(axis=0))) for p in part])) for part in (probs[:20], probs[20:])
    ]
    assert inception_score(probs, num_splits=2) == pytest.approx((np.mean(expected), np.std(expected)), rel=1e-9)
    with pytest.raises(metrics.MetricError, match="at least 10 images"):
        inception_score(probs[:9], num_splits=10)


def test_sliced_wasserstein_of_equal_and_shifted_sets():
    a = torch.randn([2000, 12], generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(a, a.clone(), seed=0) == 0.0
    shifted = sliced_wasserstein(a, a + 0.5, seed=0)
    # Shifting by v moves every projection onto unit u by u.v; the mean |u.v| over random directions is about
    # |v| * sqrt(2 / (pi * d)).
    assert shifted == pytest.approx(0.5 * np.sqrt(12) * np.sqrt(2 / (np.pi * 12)), rel=0.1)


def test_laplacian_pyramid_reconstructs_the_image():
    images = torch.rand([2, 3, 64, 64]) * 255
    levels = laplacian_pyramid(images)
    assert [level.shape[2] for level in levels] == [64, 32, 16]
    assert torch.allclose(pyramid_down(images).mean(), images.mean(), rtol=1e-2)
    reconstructed = levels[-1]
    for level in reversed(levels[:-1]):
        reconstructed = level + pyramid_up(reconstructed)
    assert torch.allclose(reconstructed, images, atol=1e-3)


def band_limited_image(resolution: int, seed: int = 0) -> tuple:
    """A random sum of sinusoids with frequencies up to Nyquist, and a function evaluating it anywhere."""
    rng = np.random.default_rng(seed)
    radius, angle = 0.5 * np.sqrt(rng.uniform(0, 1, 32)), rng.uniform(0, 2 * np.pi, 32)
    freqs = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1) * resolution  # Cycles per image width.
    phases = rng.uniform(0, 1, 32)

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # u, v in image widths about the centre.
        return sum(np.sin(2 * np.pi * (fx * u + fy * v + p)) for (fx, fy), p in zip(freqs, phases, strict=True)) / 8

    centers = (np.arange(resolution) + 0.5) / resolution - 0.5
    u, v = np.meshgrid(centers, centers, indexing="xy")
    return torch.tensor(evaluate(u, v), dtype=torch.float32)[None, None], evaluate


@pytest.mark.parametrize("matrix", [make_transform((0.043, -0.071), 0), make_transform((0, 0), 33)])
def test_equivariance_resampling_matches_the_analytic_transform(matrix):
    resolution = 64
    image, evaluate = band_limited_image(resolution)
    source_x, source_y = equivariance.source_positions(resolution, matrix)
    truth = evaluate((source_x + 0.5) / resolution - 0.5, (source_y + 0.5) / resolution - 0.5)
    truth = torch.tensor(truth.reshape(resolution, resolution), dtype=torch.float32)[None, None]
    mask = equivariance.resample_mask(resolution, matrix, CPU)

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return 10 * np.log10(4 / (((a - b).square() * mask).sum() / mask.sum()).item())

    expected = equivariance.lowpass(truth)
    assert mask.sum() > 1000
    assert psnr(equivariance.resample(equivariance.lowpass(image), matrix), expected) > 70  # Measured: 73-86 dB.
    assert psnr(equivariance.resample(equivariance.lowpass(image), np.linalg.inv(matrix)), expected) < 30


def test_in_chunks_calls_with_small_chunks_and_concatenates():
    calls = []

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(len(a))
        return a + b

    x, y = torch.arange(10.0), torch.arange(10.0) * 10
    assert torch.equal(features.in_chunks(add, x, y, chunk=4), x + y) and calls == [4, 4, 2]


def test_exact_shift_and_its_mask():
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    shifted, mask = equivariance.shift_exactly(images, dx=1, dy=-2)
    assert torch.equal(shifted[0, 0, :2, 1:], images[0, 0, 2:, :3])
    assert mask.sum() == 2 * 3 and (shifted * (1 - mask)).abs().sum() == 0


# ----------------------------------------------------------------------------
# Stand-in detectors (NOT Inception or VGG16; see the module docstring).

STAND_IN_SOURCE = '''
import torch


class StandInDetector(torch.nn.Module):
    """Stand-in for the published detectors' call signature; NOT Inception or VGG16."""

    def __init__(self, feature_dim: int):
        super().__init__()
        generator = torch.Generator().manual_seed(feature_dim)
        self.register_buffer("projection", torch.randn([48, feature_dim], generator=generator))
        self.register_buffer("logit_projection", torch.randn([48, 1008], generator=generator))

    def forward(
        self,
        img: torch.Tensor,
        return_features: bool = False,
        no_output_bias: bool = False,
        resize_images: bool = True,
        return_lpips: bool = False,
    ) -> torch.Tensor:
        stats = torch.nn.functional.adaptive_avg_pool2d(img.to(torch.float32) / 255, 4).flatten(1)  # [N, 48]
        if return_lpips:
            features = stats @ self.projection
            return features / features.square().sum(dim=1, keepdim=True).sqrt()
        if return_features:
            return stats @ self.projection
        return torch.softmax(stats @ self.logit_projection * 4, dim=1)  # Probabilities, as the published file.
'''


class _JitFromBytes:
    """Pickles as a call of torch.jit.load on the archive bytes: a pickle of a TorchScript module."""

    def __init__(self, archive: bytes):
        self.archive = archive

    def __reduce__(self):
        return torch.jit.load, (io.BytesIO(self.archive),)


def write_stand_in_detectors(folder) -> None:
    """inception-2015-12-05.pkl (a pickle) and vgg16.pt (a TorchScript archive), both stand-ins."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "stand_in_detector.py"
    source.write_text(STAND_IN_SOURCE)
    namespace: dict = {}
    exec(compile(STAND_IN_SOURCE, str(source), "exec"), namespace)  # TorchScript needs the source file on disk.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent PyTorch; the files still load.
        inception = torch.jit.script(namespace["StandInDetector"](2048))
        vgg = torch.jit.script(namespace["StandInDetector"](4096))
    buffer = io.BytesIO()
    torch.jit.save(inception, buffer)
    (folder / "inception-2015-12-05.pkl").write_bytes(pickle.dumps(_JitFromBytes(buffer.getvalue())))
    torch.jit.save(vgg, str(folder / "vgg16.pt"))


# ----------------------------------------------------------------------------
# Tiny networks, data and run directory, shared by the pipeline tests.


def tiny_stylegan2() -> torch.nn.Module:
    """A StyleGAN2 generator with a few thousand parameters (8x8 RGB)."""
    return helpers.tiny_stylegan2().eval()


def tiny_stylegan3(resolution: int = 16) -> torch.nn.Module:
    """A StyleGAN3-T generator small enough for the CPU."""
    torch.manual_seed(0)
    return helpers.tiny_stylegan3(resolution).eval()


class ReplayGenerator(torch.nn.Module):
    """Returns the dataset's images in order (as a generator would, in [-1, 1]): a 'perfect' generator."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.register_buffer("images", torch.from_numpy(images).float() / 127.5 - 1)
        self.z_dim, self.c_dim = 8, 0
        self.img_channels, self.img_resolution = images.shape[1], images.shape[2]
        self.next_index = 0

    def forward(self, z: torch.Tensor, c: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        index = torch.arange(self.next_index, self.next_index + len(z)) % len(self.images)
        self.next_index += len(z)
        return self.images[index]


class NoiseGenerator(ReplayGenerator):
    """Returns uniform noise images."""

    def forward(self, z: torch.Tensor, c: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        return torch.rand([len(z), *self.images.shape[1:]], generator=torch.Generator().manual_seed(len(z))) * 2 - 1


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shapes8):
    """A dataset (64 shapes at 8x8), stand-in detectors, and a run directory with a tiny StyleGAN2 snapshot."""
    root = tmp_path_factory.mktemp("metrics")
    data = shapes8
    write_stand_in_detectors(root / "detectors")
    run_dir = root / "runs" / "00000-stylegan2-shapes8"
    run_dir.mkdir(parents=True)
    (run_dir / "training_options.json").write_text(json.dumps(dict(data=str(data), cond=False, mirror=False)))
    torch.manual_seed(0)
    D = networks_stylegan2.Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8)
    G = tiny_stylegan2()
    dataset_kwargs = dict(path=str(data), use_labels=False, xflip=False, max_size=None, random_seed=0)
    checkpoint.save_snapshot(str(run_dir / "network-snapshot-000000.pkl"), G, D, G, None, dataset_kwargs)
    with ImageFolderDataset(str(data)) as dataset:
        images = np.stack([dataset[i][0] for i in range(len(dataset))])
    return dnnlib.EasyDict(
        root=root,
        data=str(data),
        detector_dir=str(root / "detectors"),
        run_dir=run_dir,
        pkl=str(run_dir / "network-snapshot-000000.pkl"),
        dataset_kwargs=dataset_kwargs,
        images=images,
    )


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty $DNNLIB_CACHE_DIR, and no network: any download fails at once."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(detectors, "DOWNLOAD_ATTEMPTS", 1)
    return tmp_path / "cache"


@pytest.fixture
def detector_images(monkeypatch):
    """Counts the images every detector is called on."""
    counter = {"images": 0}
    load = detectors.load_detector

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, img, **kwargs):
            counter["images"] += len(img)
            return self.inner(img, **kwargs)

    monkeypatch.setattr(detectors, "load_detector", lambda path, device: Counting(load(path, device)))
    return counter


def run_cli(*args: str):
    """Run calc_metrics.py in this process; returns click's Result."""
    return CliRunner().invoke(calc_metrics.main, [str(a) for a in args], catch_exceptions=True)


# ----------------------------------------------------------------------------
# The pipeline.


@pytest.mark.slow
def test_cli_writes_jsonl_next_to_the_snapshot_and_reuses_dataset_stats(workspace, cache_dir, detector_images):
    args = [
        "--metrics=fid50k_full,kid50k_full",
        f"--network={workspace.pkl}",
        "--num-gen=32",
        "--batch=16",
        f"--detector-dir={workspace.detector_dir}",
        "--workers=0",
        "--verbose=0",
    ]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert detector_images["images"] == 2 * (64 + 32)  # Both metrics: all 64 reals and 32 generated images.
    stats_files = sorted(os.listdir(cache_dir / "gan-metrics"))
    assert len(stats_files) == 2 and all(name.startswith("shapes8-inception") for name in stats_files)

    detector_images["images"] = 0
    result = run_cli(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert detector_images["images"] == 2 * 32  # The reals' statistics came from the cache.

    for name in ("fid50k_full", "kid50k_full"):
        lines = (workspace.run_dir / f"metric-{name}.jsonl").read_text().splitlines()
        assert len(lines) == 2 and json.loads(lines[0])["results"] == json.loads(lines[1])["results"]
        record = json.loads(lines[-1])
        assert record["metric"] == name and record["snapshot_pkl"] == "network-snapshot-000000.pkl"
        assert record["num_gen"] == 32 and record["max_real"] is None and record["num_gpus"] == 1
        # The images measured, computed or read from the cache: all 64 of the dataset.
        assert json.loads(lines[0])["num_real"] == record["num_real"] == 64
        assert set(record) >= {"results", "total_time", "total_time_str", "timestamp"}
        assert np.isfinite(record["results"][name]) and record["results"][name] > 0


def test_cli_prints_results_outside_a_run_directory(workspace, cache_dir, tmp_path):
    pkl = tmp_path / "elsewhere.pkl"
    shutil.copyfile(workspace.pkl, pkl)
    result = run_cli(
        "--metrics=is50k",
        f"--network={pkl}",
        f"--detector-dir={workspace.detector_dir}",
        "--num-gen=20",
        "--workers=0",
        "--verbose=0",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads([line for line in result.output.splitlines() if line.startswith("{")][-1])
    assert record["metric"] == "is50k" and record["results"]["is50k_mean"] >= 1
    assert not list(tmp_path.glob("metric-*.jsonl"))


@pytest.mark.slow
def test_a_perfect_generator_scores_perfectly(workspace, cache_dir):
    G = ReplayGenerator(workspace.images)
    common = dict(
        dataset_factory=ImageFolderDataset,
        detector_dir=workspace.detector_dir,
        num_gen=64,
        num_workers=0,
        batch_size=16,
    )
    fid = metrics.calc_metric("fid50k_full", G, workspace.dataset_kwargs, CPU, **common)["results"]["fid50k_full"]
    noise = NoiseGenerator(workspace.images)
    noise_fid = metrics.calc_metric("fid50k_full", noise, workspace.dataset_kwargs, CPU, **common)["results"]
    # 64 stand-in features span 48 of 2048 dimensions: the square root of such singular covariances is exact only
    # to about 1e-7 of their trace (scipy's sqrtm and eigendecompositions alike), hence a relative tolerance.
    assert abs(fid) < 1e-5 * noise_fid["fid50k_full"]
    pr = metrics.calc_metric("pr50k3_full", G, workspace.dataset_kwargs, CPU, **common)["results"]
    assert pr == {"pr50k3_full_precision": 1.0, "pr50k3_full_recall": 1.0}
    swd = metrics.calc_metric("swd", G, workspace.dataset_kwargs, CPU, **common)["results"]
    assert swd["swd"] == pytest.approx(0, abs=1e-9) and set(swd) == {"swd", "swd_8"}
    noise = metrics.calc_metric("swd", NoiseGenerator(workspace.images), workspace.dataset_kwargs, CPU, **common)
    assert noise["results"]["swd"] > 10


def test_ppl_runs_with_the_lpips_call(workspace, cache_dir):
    result = metrics.calc_metric(
        "ppl2_wend", tiny_stylegan2(), None, CPU, detector_dir=workspace.detector_dir, num_gen=24, batch_size=8
    )
    assert np.isfinite(result["results"]["ppl2_wend"]) and result["results"]["ppl2_wend"] >= 0


def test_swd_of_a_bigger_dataset_has_one_value_per_level(demo_shapes, cache_dir, capsys):
    data = demo_shapes(32, 16)
    with ImageFolderDataset(str(data)) as dataset:
        images = np.stack([dataset[i][0] for i in range(len(dataset))])
    kwargs = dict(path=str(data), xflip=False)
    common = dict(dataset_factory=ImageFolderDataset, num_workers=0)
    record = metrics.calc_metric("swd", ReplayGenerator(images), kwargs, CPU, num_gen=64, progress=True, **common)
    same = record["results"]
    assert "distances: 100%" in capsys.readouterr().err  # The last stage shows its progress too.
    assert (record["num_gen"], record["num_real"], record["max_real"]) == (16, 16, 16384)  # What the 16 images allow.
    noise = metrics.calc_metric("swd", NoiseGenerator(images), kwargs, CPU, num_gen=16, **common)["results"]
    assert set(same) == {"swd", "swd_32", "swd_16"}
    assert max(same.values()) < 1e-9 and min(noise.values()) > 10


def test_offline_error_names_each_file_its_url_and_where_to_put_it(workspace, cache_dir):
    result = run_cli("--metrics=fid50k_full,pr50k3", f"--network={workspace.pkl}", "--workers=0")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    for spec in (detectors.INCEPTION, detectors.VGG16):
        assert spec.filenames[0] in result.output and spec.urls[0] in result.output
        assert dnnlib.util.url_cache_path(spec.urls[0]) in result.output
    assert "--detector-dir" in result.output and "network is unreachable" in result.output
    assert "Traceback" not in result.output

    with pytest.raises(ValueError, match="inception-2015-12-05.pkl"):  # The API raises a ValueError subclass.
        metrics.check_metrics_available(["kid50k"])
    metrics.check_metrics_available(["swd", "eqt50k_int"])  # Nothing to download.


def test_detectors_are_found_in_the_download_cache(workspace, cache_dir):
    target = dnnlib.util.url_cache_path(detectors.INCEPTION.urls[0])
    os.makedirs(os.path.dirname(target))
    shutil.copyfile(os.path.join(workspace.detector_dir, "inception-2015-12-05.pkl"), target)
    metrics.check_metrics_available(["fid50k_full", "is50k"])  # Offline, but the cache has the file.
    with pytest.raises(metrics.DetectorUnavailableError, match="vgg16.pkl"):
        metrics.check_metrics_available(["pr50k3_full"])


class _Planted:
    """A pickle that would run a shell command when unpickled with pickle.load."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _JitFromPath:
    """A pickle calling torch.jit.load on a path: it would load some other file than the pickle holds."""

    def __reduce__(self):
        return torch.jit.load, ("/etc/passwd",)


def test_a_planted_detector_pickle_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "the-pickle-ran"
    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(_Planted(f"touch {marker}")))
    with pytest.raises(detectors.UnsafeDetectorError) as error:
        detectors.load_detector(str(path), CPU)
    assert not marker.exists()
    assert str(path) in str(error.value) and ".system" in str(error.value)  # posix.system, as pickle spells it.
    assert "nothing from the file ran" in str(error.value) and isinstance(error.value, metrics.MetricError)

    path.write_bytes(pickle.dumps(_JitFromPath()))
    with pytest.raises(detectors.UnsafeDetectorError, match="calls torch.jit.load on str"):
        detectors.load_detector(str(path), CPU)


def test_a_detector_file_with_another_checksum_is_refused(tmp_path, monkeypatch):
    write_stand_in_detectors(tmp_path)
    path = tmp_path / "inception-2015-12-05.pkl"
    actual = hashlib.sha256(path.read_bytes()).hexdigest()

    def register(sha256: str) -> None:
        spec = dataclasses.replace(detectors.INCEPTION, sha256={"inception-2015-12-05.pkl": sha256})
        monkeypatch.setattr(detectors, "DETECTORS", (spec, detectors.VGG16))

    register("0" * 64)
    with pytest.raises(detectors.DetectorChecksumError) as error:
        detectors.load_detector(str(path), CPU)
    message = str(error.value)
    assert str(path) in message and "0" * 64 in message and actual in message
    assert detectors.INCEPTION.urls[0] in message and "Delete it" in message
    # Before training starts, too, and under the download cache's name for the file.
    with pytest.raises(detectors.DetectorChecksumError):
        detectors.require({detectors.INCEPTION: ["fid50k_full"]}, str(tmp_path), download=False)
    cached = tmp_path / os.path.basename(dnnlib.util.url_cache_path(detectors.INCEPTION.urls[0]))
    shutil.copyfile(path, cached)
    with pytest.raises(detectors.DetectorChecksumError):
        detectors.load_detector(str(cached), CPU)

    register(actual.upper())  # The published file loads; the hash may be written in either case.
    assert isinstance(detectors.load_detector(str(path), CPU), torch.jit.ScriptModule)
    assert isinstance(detectors.load_detector(str(tmp_path / "vgg16.pt"), CPU), torch.jit.ScriptModule)  # No hash.


def test_unknown_metric_names_are_refused_with_the_list(workspace):
    with pytest.raises(metrics.UnknownMetricError, match="fid50k_full"):
        metrics.check_metrics_available(["fid5k"])
    result = run_cli("--metrics=fid50k_full,fid5k", f"--network={workspace.pkl}")
    assert result.exit_code == 1 and "Unknown metric 'fid5k'" in result.output and "swd" in result.output


def test_missing_dataset_is_a_clear_error(workspace, cache_dir, tmp_path):
    result = run_cli("--metrics=swd", f"--network={workspace.pkl}", f"--data={tmp_path / 'missing.zip'}")
    assert result.exit_code == 1 and "missing.zip" in result.output and "Traceback" not in result.output


def test_equivariance_is_refused_for_stylegan2(workspace):
    result = run_cli("--metrics=eqt50k_int", f"--network={workspace.pkl}")
    assert result.exit_code == 1 and "StyleGAN3" in result.output and "Traceback" not in result.output
    with pytest.raises(metrics.IncompatibleNetworkError):
        metrics.calc_metric("eqr50k", tiny_stylegan2(), None, CPU, num_gen=4)


def test_stylegan3_is_equivariant_to_integer_translation():
    G = tiny_stylegan3(16)
    before = G.synthesis.input.transform.clone()
    result = metrics.calc_metric("eqt50k_int", G, None, CPU, num_gen=16, batch_size=4)
    assert result["results"]["eqt50k_int"] > 50  # Measured: about 63 dB.
    assert torch.equal(G.synthesis.input.transform, before)  # The caller's network is left alone.


def test_stylegan3_t_fractional_translation_beats_rotation():
    G = tiny_stylegan3(64)
    frac = metrics.calc_metric("eqt50k_frac", G, None, CPU, num_gen=4, batch_size=2)["results"]["eqt50k_frac"]
    rot = metrics.calc_metric("eqr50k", G, None, CPU, num_gen=4, batch_size=2)["results"]["eqr50k"]
    assert frac > 60 and rot < frac - 20  # The T configuration is built for translation only.


@pytest.mark.slow
def test_two_processes_match_one(workspace, cache_dir, tmp_path, monkeypatch):
    results = []
    for gpus in (1, 2):
        monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / f"cache{gpus}"))  # Both compute the reals' statistics.
        run_dir = tmp_path / f"run{gpus}"
        run_dir.mkdir()
        (run_dir / "training_options.json").write_text(json.dumps(dict(data=workspace.data)))
        pkl = run_dir / "network-snapshot-000000.pkl"
        shutil.copyfile(workspace.pkl, pkl)
        result = run_cli(
            "--metrics=fid50k_full,swd",
            f"--network={pkl}",
            f"--gpus={gpus}",
            "--num-gen=30",
            "--batch=8",
            "--workers=0",
            "--verbose=0",
            f"--detector-dir={workspace.detector_dir}",
        )
        assert result.exit_code == 0, result.output + repr(result.exception)
        results.append([json.loads((run_dir / f"metric-{name}.jsonl").read_text()) for name in ("fid50k_full", "swd")])
    for one, two in zip(*results, strict=True):
        assert two["num_gpus"] == 2
        for key, value in one["results"].items():
            assert two["results"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ----------------------------------------------------------------------------
# Metrics during training.

TRAIN_TINY = tiny(metrics=None, gpus=1, batch=8, workers=0)  # Each test names its metrics.


def test_training_refuses_metrics_it_cannot_compute_before_starting(workspace, cache_dir, tmp_path):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={workspace.data}", *TRAIN_TINY, "--kimg=1"]
    result = CliRunner().invoke(train.main, [*args, "--metrics=fid50k_full"])  # The default, offline.
    assert result.exit_code == 1 and "inception-2015-12-05.pkl" in result.output, result.output
    assert detectors.INCEPTION.urls[0] in result.output and "--detector-dir" in result.output
    assert not outdir.exists()
    args.append("--dry-run")  # Only looks: names what a real run would fetch, and downloads nothing.
    result = CliRunner().invoke(train.main, [*args, "--metrics=fid50k_full"])
    assert result.exit_code == 0 and "inception-2015-12-05.pkl" in result.output and "Note:" in result.output
    result = CliRunner().invoke(
        train.main, [*args, "--metrics=fid50k_full", f"--detector-dir={workspace.detector_dir}"]
    )
    assert result.exit_code == 0 and "Dry run" in result.output, result.output
    result = CliRunner().invoke(train.main, [*args, "--metrics=swd"])  # Needs no download.
    assert result.exit_code == 0 and "Metrics:             swd" in result.output, result.output
    assert ("--metrics=none skips them" in result.output) == (not torch.cuda.is_available())


@pytest.mark.slow
def test_training_evaluates_every_snapshot(workspace, cache_dir, tmp_path, monkeypatch, tensorboard):
    # Few samples instead of the protocols' 50k and 16k, so that the run takes seconds.
    for name in ("fid50k_full", "swd"):
        spec = metrics.get_metric(name)
        monkeypatch.setitem(registry._METRICS, name, dataclasses.replace(spec, num_gen=16, max_real=None))
    outdir = tmp_path / "runs"
    args = [
        f"--outdir={outdir}",
        f"--data={workspace.data}",
        *TRAIN_TINY,
        "--kimg=1",
        "--tick=1",
        "--snap=1",
        "--metrics=fid50k_full,swd",
        f"--detector-dir={workspace.detector_dir}",
    ]
    result = CliRunner().invoke(train.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [run_dir] = list(outdir.iterdir())
    snapshots = sorted(path.name for path in run_dir.glob("network-snapshot-*.pkl"))
    assert snapshots == ["network-snapshot-000000.pkl", "network-snapshot-000001.pkl"]
    for name in ("fid50k_full", "swd"):
        records = [json.loads(line) for line in (run_dir / f"metric-{name}.jsonl").read_text().splitlines()]
        assert [record["snapshot_pkl"] for record in records] == snapshots
        assert all(record["num_gen"] == 16 and np.isfinite(record["results"][name]) for record in records)
        logged = [(step, value) for tag, value, step in tensorboard.scalars if tag == f"Metrics/{name}"]
        assert [value for _, value in logged] == [record["results"][name] for record in records]
        assert [step // 1000 for step, _ in logged] == [0, 1]  # TensorBoard steps are images: snapshots at kimg 0, 1.
    # calc_metrics.py's number for the last snapshot equals the one written during training.
    G_ema = checkpoint.load_snapshot(str(run_dir / snapshots[-1]))["G_ema"]
    standalone = metrics.calc_metric(
        "swd", G_ema, dict(path=workspace.data, xflip=False), CPU, dataset_factory=ImageFolderDataset, num_workers=0
    )
    assert standalone["results"]["swd"] == pytest.approx(records[-1]["results"]["swd"], rel=1e-6)
