"""--info: show the dataset the way training will load it."""

from __future__ import annotations

import warnings

import click
import numpy as np
from tqdm import tqdm

from training.dataset import LABELS_FILE, DatasetError, ImageFolderDataset
from training.dataset_tool.config import is_power_of_two
from training.dataset_tool.convert import MAX_SKIPPED_SHOWN


def print_dataset_info(path: str, max_images: int | None) -> None:
    """Load a dataset through ImageFolderDataset, as training does, print what training will see, and fail
    naming every damaged image (and a broken dataset.json) found."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # A broken dataset.json is reported below, under Labels.
            dataset = ImageFolderDataset(path=path, check=False)  # Every image is read below, so skip the sample.
    except DatasetError as err:
        raise click.ClickException(str(err)) from err
    labels_problem = None
    try:
        labelled = ImageFolderDataset(path=path, use_labels=True, check=False)
    except DatasetError as err:
        labels_problem = err.problem
    else:
        dataset.close()
        dataset = labelled
    with dataset:
        channels, height, width = dataset.image_shape
        if labels_problem is not None:
            labels = f"unusable: {labels_problem}"
        elif dataset.has_onehot_labels:
            classes = np.bincount(
                [int(dataset.get_details(i).raw_label) for i in range(len(dataset))], minlength=dataset.label_dim
            )
            labels = f"yes, {dataset.label_dim} classes: " + ", ".join(f"{c}: {n}" for c, n in enumerate(classes))
        elif dataset.has_labels:
            labels = f"yes, vectors of {dataset.label_dim} floats"
        else:
            labels = "no"
        indices = np.arange(len(dataset))
        if max_images is not None and max_images < len(dataset):
            indices = np.sort(np.random.default_rng(0).choice(indices, size=max_images, replace=False))
        channel_sums = np.zeros(channels, dtype=np.float64)
        damaged: list[str] = []
        for idx in tqdm(indices, unit="img", desc="Reading", dynamic_ncols=True, leave=False):
            try:
                channel_sums += dataset[idx][0].reshape(channels, -1).mean(axis=1)
            except DatasetError as err:  # Keep reading: the point is to list every damaged image at once.
                damaged.append(err.problem)
    readable = len(indices) - len(damaged)
    means = channel_sums / max(readable, 1)
    names = ["gray"] if channels == 1 else ["R", "G", "B"]
    click.echo(f"Path:        {path}")
    click.echo(f"Name:        {dataset.name}")
    click.echo(f"Images:      {len(dataset)}")
    trainable = width == height and is_power_of_two(width)
    click.echo(f"Resolution:  {width}x{height}" + ("" if trainable else "  (training needs a square power of two)"))
    click.echo(f"Channels:    {channels} ({'grayscale' if channels == 1 else 'RGB'})")
    click.echo(f"Labels:      {labels}")
    click.echo(
        "Mean pixel:  "
        + ", ".join(f"{n} {m:.1f}" for n, m in zip(names, means, strict=True))
        + f"  (0-255, over {readable} images)"
    )
    problems = []
    if damaged:
        click.echo(f"Damaged:     {len(damaged)} of the {len(indices)} images read:")
        for problem in damaged[:MAX_SKIPPED_SHOWN]:
            click.echo(f"  {problem}")
        if len(damaged) > MAX_SKIPPED_SHOWN:
            click.echo(f"  and {len(damaged) - MAX_SKIPPED_SHOWN} more")
        problems.append(f"{len(damaged)} damaged image(s)")
    if labels_problem is not None:
        problems.append(f"an unusable {LABELS_FILE} (training with --cond=1 would fail)")
    if problems:
        raise click.ClickException(
            f"{path} has {' and '.join(problems)}; re-create it with dataset_tool.py from its source images"
        )
