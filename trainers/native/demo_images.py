"""Procedural pictures for the embedded demo: coloured shapes with captions, and the "zxq" concept.

Everything is drawn with Pillow from a seeded ``random.Random``, so the same seed always gives the same
pixels. Shapes are drawn at 4x and downsampled, which gives smooth edges at 64 px.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 215, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (120, 50, 170),
    "cyan": (40, 200, 210),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "cross")

TRIGGER = "zxq"
# The concept the demo LoRA teaches: a magenta and yellow checkerboard behind the object.
ZXQ_COLOURS = ((230, 30, 200), (250, 225, 40))
ZXQ_CELL = 8
# Foreground colours of the demo dataset: none of them looks like the concept's colours.
ZXQ_FOREGROUNDS = ("white", "black", "red", "blue", "green", "cyan")

_SUPERSAMPLE = 4
JITTER = 0.08


@dataclass(frozen=True)
class Scene:
    """One picture: a shape of a colour at a place, over a background (a colour name or the concept)."""

    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    radius: float

    def caption(self) -> str:
        """The caption the picture is trained with."""
        return f"{_article(self.colour)} {self.colour} {self.shape} on {_article(self.background)} " \
               f"{self.background} background"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def random_scene(rng: random.Random, size: int, background: str | None = None,
                 colours: tuple[str, ...] = tuple(COLOURS), jitter: float = JITTER) -> Scene:
    """A random scene near the centre; ``background`` fixes the background (e.g. the trigger word).

    ``jitter`` is the largest offset of the shape's centre, as a fraction of the image side: a small
    offset keeps the tiny base model's task easy enough to learn in minutes.
    """
    colour = rng.choice(colours)
    if background is None:
        background = rng.choice([c for c in COLOURS if c != colour])
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=background,
        cx=size / 2 + rng.uniform(-jitter, jitter) * size,
        cy=size / 2 + rng.uniform(-jitter, jitter) * size,
        radius=rng.uniform(0.22, 0.32) * size,
    )


def draw_scene(scene: Scene, size: int) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    big = size * _SUPERSAMPLE
    if scene.background == TRIGGER:
        img = checkerboard(big, ZXQ_COLOURS, ZXQ_CELL * _SUPERSAMPLE)
    else:
        img = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    s = _SUPERSAMPLE
    _draw_shape(draw, scene.shape, scene.cx * s, scene.cy * s, scene.radius * s, COLOURS[scene.colour])
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        q = r * 0.85
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def checkerboard(size: int, colours: tuple[tuple[int, int, int], tuple[int, int, int]], cell: int,
                 offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """A two-colour checkerboard of square cells of ``cell`` pixels."""
    img = Image.new("RGB", (size, size), colours[0])
    draw = ImageDraw.Draw(img)
    ox, oy = offset
    for y in range(-cell, size + cell, cell):
        for x in range(-cell, size + cell, cell):
            if ((x // cell) + (y // cell)) % 2:
                draw.rectangle((x + ox, y + oy, x + ox + cell - 1, y + oy + cell - 1), fill=colours[1])
    return img


def texture_image(rng: random.Random, size: int) -> Image.Image:
    """A random stripe or checker pattern in random colours (VAE pretraining only: covers any colour)."""
    a = tuple(rng.randrange(256) for _ in range(3))
    b = tuple(rng.randrange(256) for _ in range(3))
    cell = rng.choice((4, 6, 8, 12, 16))
    if rng.random() < 0.5:
        return checkerboard(size, (a, b), cell, (rng.randrange(cell), rng.randrange(cell)))
    img = Image.new("RGB", (size, size), a)
    draw = ImageDraw.Draw(img)
    vertical = rng.random() < 0.5
    for p in range(rng.randrange(cell), size, 2 * cell):
        box = (p, 0, p + cell - 1, size) if vertical else (0, p, size, p + cell - 1)
        draw.rectangle(box, fill=b)
    return img


def vae_image(rng: random.Random, size: int) -> Image.Image:
    """A picture for VAE pretraining: a scene in random colours, or a texture."""
    if rng.random() < 0.4:
        return texture_image(rng, size)
    scene = random_scene(rng, size, background=TRIGGER if rng.random() < 0.15 else None, jitter=0.25)
    return draw_scene(scene, size)


def demo_dataset_scenes(count: int, size: int, seed: int) -> list[Scene]:
    """The scenes of the demo LoRA dataset: every shape and several colours on the zxq background."""
    rng = random.Random(seed)
    scenes = []
    for i in range(count):
        colour = ZXQ_FOREGROUNDS[i % len(ZXQ_FOREGROUNDS)]
        scene = random_scene(rng, size, background=TRIGGER, colours=(colour,))
        scenes.append(Scene(SHAPES[i % len(SHAPES)], colour, TRIGGER, scene.cx, scene.cy, scene.radius))
    return scenes


def concept_scores(image: Image.Image) -> dict[str, float]:
    """How much an image shows the zxq concept.

    ``concept``: fraction of pixels within RGB distance 80 of either checkerboard colour; ``magenta``: the
    same for magenta alone (a colour the base model never saw); ``checker``: mean absolute difference of
    horizontally adjacent 8 px cells (0 for a flat colour), i.e. how much the picture alternates.
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    dist = [np.linalg.norm(arr - np.array(c, dtype=np.float32), axis=-1) for c in ZXQ_COLOURS]
    h, w, _ = arr.shape
    cells = arr[: h - h % ZXQ_CELL, : w - w % ZXQ_CELL].reshape(h // ZXQ_CELL, ZXQ_CELL, w // ZXQ_CELL, ZXQ_CELL, 3)
    means = cells.mean(axis=(1, 3))
    return {
        "concept": round(float(np.mean(np.minimum(*dist) < 80)), 3),
        "magenta": round(float(np.mean(dist[0] < 80)), 3),
        "checker": round(float(np.abs(np.diff(means, axis=1)).mean() / 255.0), 3),
    }
