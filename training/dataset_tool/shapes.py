"""The demo:shapes renderer: a dataset drawn on the fly so that a fresh machine can train without a download.

Image i is a few filled circles, squares and triangles on a plain background; its label is the class of the
largest (last drawn) shape. training.dataset_tool.sources serves the images as the demo:shapes source.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")  # Label = index of the main shape's class.
DEMO_SHAPES_SEED = 20240601  # Mixed with the image index: image i is the same on every machine and at every size.
SUPERSAMPLE = 4  # Drawn at 4x the size and box-filtered down, for antialiased edges.


@dataclass(frozen=True)
class Shape:
    """A filled shape in normalized coordinates (0..1 across the image)."""

    kind: int  # Index into SHAPE_CLASSES.
    center: tuple[float, float]
    radius: float  # Circumradius, as a fraction of the image side.
    angle: float  # Rotation in radians.
    color: tuple[int, int, int]


class SceneRandom:
    """Random numbers for one demo image, built only on random.Random.random().

    Python guarantees random() repeats its sequence for a given integer seed across versions (numpy's
    Generator methods make no such promise), so demo image i stays the same after upgrades.
    """

    def __init__(self, index: int) -> None:
        self._random = random.Random((DEMO_SHAPES_SEED << 32) | index)

    def uniform(self, low: float, high: float) -> float:
        """A float in [low, high)."""
        return low + (high - low) * self._random.random()

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self._random.random() * n), n - 1)

    def color(self, far_from: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
        """A random RGB colour; with `far_from`, one that stands out against that colour."""
        for _ in range(32):  # Bounded, so the draw count (and hence the scene) is fixed by the seed alone.
            color = (self.below(256), self.below(256), self.below(256))
            if far_from is None or sum(abs(a - b) for a, b in zip(color, far_from, strict=True)) >= 160:
                return color
        return (255 - far_from[0], 255 - far_from[1], 255 - far_from[2])


def sample_shapes_scene(index: int) -> tuple[tuple[int, int, int], list[Shape]]:
    """Pick the background colour and the shapes of demo image `index`; the last shape is the labelled one."""
    rng = SceneRandom(index)
    background = rng.color()
    shapes = []
    for _ in range(rng.below(3)):  # Up to two small distractors behind the main shape.
        center = (rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95))
        shapes.append(
            Shape(
                rng.below(len(SHAPE_CLASSES)),
                center,
                rng.uniform(0.05, 0.12),
                rng.uniform(0, 2 * math.pi),
                rng.color(background),
            )
        )
    radius = rng.uniform(0.18, 0.32)
    center = (rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius))  # Fully inside the image.
    shapes.append(
        Shape(rng.below(len(SHAPE_CLASSES)), center, radius, rng.uniform(0, 2 * math.pi), rng.color(background))
    )
    return background, shapes


def render_shapes_scene(index: int, size: int) -> tuple[PIL.Image.Image, int]:
    """Draw demo image `index` at `size` x `size` pixels; return it and its label."""
    background, shapes = sample_shapes_scene(index)
    side = size * SUPERSAMPLE
    canvas = PIL.Image.new("RGB", (side, side), background)
    draw = PIL.ImageDraw.Draw(canvas)
    for shape in shapes:
        cx, cy, r = shape.center[0] * side, shape.center[1] * side, shape.radius * side
        if SHAPE_CLASSES[shape.kind] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape.color)
        else:
            corners = 4 if SHAPE_CLASSES[shape.kind] == "square" else 3
            angles = [shape.angle + 2 * math.pi * k / corners for k in range(corners)]
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=shape.color)
    # BOX averages each 4x4 block exactly: true area antialiasing without ringing.
    return canvas.resize((size, size), PIL.Image.Resampling.BOX), shapes[-1].kind
