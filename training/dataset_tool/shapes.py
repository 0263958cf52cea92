"""The demo datasets' renderer: images drawn on the fly so that a fresh machine can train without a download.

Two kinds of scene, each a plain background with filled circles, squares and triangles; the label is the class of
the largest (last drawn) shape. training.dataset_tool.sources serves them as these --source names:

    demo:shapes  one large shape near the centre: aligned data, as faces are, which a small network on a CPU
                 learns in minutes (the quick start).
    demo:scenes  the large shape anywhere in the image, with up to two small distractors behind it: harder,
                 since the generator must also learn where things go.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import PIL.ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")  # Label = index of the main shape's class.
DEMO_SHAPES_SEED = 20240601  # Mixed with the image index: image i is the same on every machine and at every size.
SUPERSAMPLE = 4  # Drawn at 4x the size and box-filtered down, for antialiased edges.
CENTRE_JITTER = 0.08  # demo:shapes: the shape's centre is within this fraction of the image side of the middle.


@dataclass(frozen=True)
class Shape:
    """A filled shape in normalized coordinates (0..1 across the image)."""

    kind: int  # Index into SHAPE_CLASSES.
    center: tuple[float, float]
    radius: float  # Circumradius, as a fraction of the image side.
    angle: float  # Rotation in radians.
    color: tuple[int, int, int]


Scene = tuple[tuple[int, int, int], list[Shape]]  # The background colour and the shapes, the labelled one last.


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


def sample_centred_shape(index: int) -> Scene:
    """demo:shapes image `index`: the background colour and one large shape near the centre, fully inside."""
    rng = SceneRandom(index)
    background = rng.color()
    radius = rng.uniform(0.22, 0.34)
    center = (0.5 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER), 0.5 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER))
    shape = Shape(rng.below(len(SHAPE_CLASSES)), center, radius, rng.uniform(0, 2 * math.pi), rng.color(background))
    return background, [shape]


def sample_scattered_scene(index: int) -> Scene:
    """demo:scenes image `index`: the background colour and the shapes; the last shape is the labelled one."""
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


SceneSampler = Callable[[int], Scene]
SCENE_SAMPLERS: dict[str, SceneSampler] = {"demo:shapes": sample_centred_shape, "demo:scenes": sample_scattered_scene}


def sample_scene(demo: str, index: int) -> Scene:
    """Image `index` of the demo named `demo` (a key of SCENE_SAMPLERS): its background and its shapes."""
    return SCENE_SAMPLERS[demo](index)


def render_scene(demo: str, index: int, size: int) -> tuple[PIL.Image.Image, int]:
    """Draw image `index` of the demo named `demo` at `size` x `size` pixels; return it and its label."""
    background, shapes = sample_scene(demo, index)
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
