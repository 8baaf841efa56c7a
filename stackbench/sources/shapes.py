"""`shapes`: the embedded, procedural, class-labelled image source (mini track).

An item is one object of a class (a shape: circle, star, heart ...) with random pose, aspect, scale,
colour and texture, over a cluttered background. Colour and texture are drawn independently of the class,
so a classifier has to learn the outline; object colours keep a minimum contrast with the background under
them (shapes/2), so the outline is always there to learn. Three separable pieces, also used by the STACK-GEN
scene renderer:

    render_background(size, rng) -> PIL RGB          gradient, blotches, clutter
    draw_object(canvas, cls, box, rng[, into]) -> bbox   one object filling `box` (pose, colour, texture, shadow)
    finish(canvas, rng) -> PIL RGB                   sensor noise over the whole scene
    item(seed, index, split) -> (image, label, id)   a pure function of its arguments

Every random draw comes from a Generator seeded by (seed, split, index): items never share a stream, so any
subset, order or process count renders the same pixels. And any CPU (shapes/3): every float on the way to a pixel
is an IEEE operation (`exact`: no numpy transcendental, no BLAS, no libm), and Pillow, which draws and resamples,
runs the same instructions on every x86-64 CPU (no run-time dispatch). tests/test_cpu.py renders items under each
numpy, torch and OpenCV kernel level the machine has and compares their digests.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..constants import SHAPES_CLASSES
from ..errors import StackbenchError, close_matches
from .base import Source, SourceItem
from .exact import PI, cos, exp, gauss, sin, uniform

VERSION = "shapes/3"  # bump when rendering changes: it is part of the source fingerprint
# shapes/3: the same pixels on every CPU (see the module's docstring); the sensor noise and background blotches are
# sums of uniform bytes instead of numpy's normal draws.
# shapes/2: object colours keep a minimum contrast with the background under them, and less clutter (the
# outline is always visible, so the mini model learns it in a 15-minute CPU budget).
CLASSES = SHAPES_CLASSES
SPLITS = {"train": 0, "val": 1, "test": 2}
SIZE = 224
DEFAULT_ITEMS = 10_000  # default pool size of the `shapes` source (1000 per class)
_SS = 2  # mask supersampling: smooth edges at a small cost


def _circle(n=48, r=1.0, cx=0.0, cy=0.0):
    t = [2 * PI * i / n for i in range(n)]
    return np.array([[cx + r * cos(a), cy + r * sin(a)] for a in t])


def _star(points=5, inner=0.42):
    t = [i * PI / points - PI / 2 for i in range(2 * points)]
    return np.array([[(1.0 if i % 2 == 0 else inner) * f(a) for f in (cos, sin)] for i, a in enumerate(t)])


def _heart(n=64):
    def point(a):
        s = sin(a)
        return [16 * s * s * s, -(13 * cos(a) - 5 * cos(2 * a) - 2 * cos(3 * a) - cos(4 * a))]
    return np.array([point(2 * PI * i / n) for i in range(n)]) / 17.0


_a = 0.3  # half-width of the cross' arms
# class -> [(polygon in unit coordinates, fill)]; fill 0 cuts a hole.
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_circle(), 255)],
    "square": [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 255)],
    "triangle": [(_circle(3), 255)],
    "star": [(_star(), 255)],
    "cross": [(np.array([[-_a, -1], [_a, -1], [_a, -_a], [1, -_a], [1, _a], [_a, _a], [_a, 1], [-_a, 1], [-_a, _a],
                         [-1, _a], [-1, -_a], [-_a, -_a]], float), 255)],
    "ring": [(_circle(), 255), (_circle(r=0.58), 0)],
    "crescent": [(_circle(), 255), (_circle(r=0.86, cx=0.42, cy=-0.12), 0)],
    "heart": [(_heart(), 255)],
    "arrow": [(np.array([[-1, -0.24], [0.15, -0.24], [0.15, -0.62], [1, 0], [0.15, 0.62], [0.15, 0.24], [-1, 0.24]],
                        float), 255)],
    "lightning": [(np.array([[0.12, -1], [-0.5, 0.12], [-0.04, 0.12], [-0.24, 1], [0.52, -0.2], [0.06, -0.2],
                             [0.36, -1]], float), 255)],
}
assert tuple(SHAPES) == CLASSES


def rng_for(seed: int, index: int, split: str = "train") -> np.random.Generator:
    """The item's own Generator: a pure function of (seed, split, index)."""
    if split not in SPLITS:
        raise StackbenchError(f"shapes has no split {split!r}; use one of {', '.join(SPLITS)}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


MIN_CONTRAST = 110.0  # RGB distance between an object colour and the mean background under the object


def _colour_apart(rng, avoid: np.ndarray | None) -> np.ndarray:
    """A random colour at least MIN_CONTRAST from `avoid` (rejection sampling; the farthest of 16 draws if none
    is). It depends on the background, never on the class, so colour still does not tell the class."""
    if avoid is None:
        return _colour(rng)
    best, best_d = None, -1.0
    for _ in range(16):
        c = _colour(rng)
        e = [float(v) - float(w) for v, w in zip(c, avoid, strict=True)]
        d = e[0] * e[0] + e[1] * e[1] + e[2] * e[2]  # squared, summed in this order: no BLAS norm
        if d >= MIN_CONTRAST * MIN_CONTRAST:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _ramp(h: int, w: int, rng) -> np.ndarray:
    """A linear ramp in [0, 1] across the area at a random angle, shape (h, w, 1)."""
    a = uniform(rng, 0, 2 * PI)
    ca, sa = np.float32(cos(a)), np.float32(sin(a))
    r = np.arange(w, dtype=np.float32)[None, :] * ca + np.arange(h, dtype=np.float32)[:, None] * sa
    r -= r.min()
    return (r / max(float(r.max()), 1.0))[..., None]


def _texture(h: int, w: int, rng, avoid: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) float32 surface: solid, gradient, stripes, checks, dots or mottled, with soft lighting. Both
    colours keep MIN_CONTRAST from `avoid` (the background's mean colour) when it is given."""
    c1, c2 = _colour_apart(rng, avoid), _colour_apart(rng, avoid)
    kind = rng.integers(0, 6)
    if kind == 0:
        out = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind == 1:
        out = c1 + (c2 - c1) * _ramp(h, w, rng)
    else:
        x, y = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        period = np.float32(uniform(rng, 6, 18))
        if kind == 2:  # stripes: the positive half of each period (a sine's sign, without the sine)
            a = uniform(rng, 0, PI)
            phase = (x * np.float32(cos(a)) + y * np.float32(sin(a))) / period
            sel = phase - np.floor(phase) < 0.5
        elif kind == 3:
            sel = ((np.floor(x / period) + np.floor(y / period)) % 2) == 0
        elif kind == 4:
            dx, dy = x - np.floor(x / period) * period - period / 2, y - np.floor(y / period) * period - period / 2
            r = float(period) * uniform(rng, 0.2, 0.4)
            sel = dx * dx + dy * dy < r * r
        else:
            low = rng.random((4, 4)).astype(np.float32)
            sel = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)) > 127
        out = np.where(sel[..., None], c1, c2).astype(np.float32)
    light = 1.0 + uniform(rng, 0.1, 0.35) * (_ramp(h, w, rng) - 0.5)
    return out * light


def render_background(size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A cluttered backdrop: two-colour gradient, soft blotches, small lines and blobs (never a class shape
    at object scale)."""
    w, h = (size, size) if isinstance(size, int) else size
    c1, c2 = _colour(rng), _colour(rng)
    base = c1 + (c2 - c1) * _ramp(h, w, rng)
    blot = gauss(rng, (5, 5, 3)) * np.float32(uniform(rng, 10, 35))
    blot_img = Image.fromarray(np.clip(blot + 128, 0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    base = base + (np.asarray(blot_img, dtype=np.float32) - 128)
    canvas = Image.fromarray(np.clip(base, 0, 255, out=base).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 10))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = uniform(rng, 0, w), uniform(rng, 0, h)
        kind = rng.integers(0, 4)
        if kind == 0:  # a line or twig
            ang, length = uniform(rng, 0, 2 * PI), uniform(rng, 15, 90)
            draw.line([(x, y), (x + length * cos(ang), y + length * sin(ang))], fill=col,
                      width=int(rng.integers(1, 5)))
        else:
            r = uniform(rng, 3, 14)
            bbox = [x - r, y - r * uniform(rng, 0.5, 1.5), x + r, y + r * uniform(rng, 0.5, 1.5)]
            bbox = [bbox[0], min(bbox[1], bbox[3]), bbox[2], max(bbox[1], bbox[3])]
            if kind == 1:
                draw.ellipse(bbox, fill=col)
            elif kind == 2:
                draw.rectangle(bbox, outline=col, width=int(rng.integers(1, 3)))
            else:
                draw.arc(bbox, uniform(rng, 0, 360), uniform(rng, 0, 360), fill=col, width=2)
    return canvas


def _class_index(cls: int | str) -> int:
    if isinstance(cls, str):
        if cls not in CLASSES:
            raise StackbenchError(f"unknown shapes class {cls!r}{close_matches(cls, CLASSES)}; classes: "
                                  f"{', '.join(CLASSES)}")
        return CLASSES.index(cls)
    if not 0 <= int(cls) < len(CLASSES):
        raise StackbenchError(f"shapes class index {cls} outside 0..{len(CLASSES) - 1}")
    return int(cls)


def object_mask(cls: int | str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An anti-aliased 'L' mask of one object of the class in a random pose, filling a (w, h) box."""
    w, h = size
    angle = uniform(rng, 0, 2 * PI)
    aspect = exp(uniform(rng, -0.22, 0.22))
    c, s = cos(angle), sin(angle)

    def posed(poly):  # scaled by the aspect, then rotated; element-wise (a matrix product would go through BLAS)
        x, y = poly[:, 0] * aspect, poly[:, 1] * (1 / aspect)
        return np.stack([x * c - y * s, x * s + y * c], 1)
    parts = [(posed(poly), fill) for poly, fill in SHAPES[CLASSES[_class_index(cls)]]]
    solid = np.concatenate([p for p, f in parts if f])
    lo, hi = solid.min(0), solid.max(0)
    scale = min((w * _SS - 2) / (hi[0] - lo[0]), (h * _SS - 2) / (hi[1] - lo[1]))  # fit, keep proportions
    offset = np.array([w * _SS, h * _SS]) / 2 - (lo + hi) / 2 * scale
    mask = Image.new("L", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(mask)
    for poly, fill in parts:
        draw.polygon([tuple(p) for p in (poly * scale + offset)], fill=fill)
    return mask.reduce(_SS)


def draw_object(canvas: Image.Image, cls: int | str, box: Sequence[int], rng: np.random.Generator,
                into: Image.Image | None = None) -> tuple:
    """Draw one object of the class into `box` (x0, y0, x1, y1) of the RGB canvas, in place: random pose,
    aspect, colour, texture, lighting and (sometimes) a drop shadow. Returns the tight bbox it covers; `into`
    (an 'L' image of the canvas's size) gets the object's mask at its place."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = max(x1 - x0, 4), max(y1 - y0, 4)
    mask = object_mask(cls, (w, h), rng)
    region = canvas.crop((x0, y0, x0 + w, y0 + h))
    px = np.asarray(region).reshape(-1, 3)
    avoid = px.sum(0, dtype=np.int64) / len(px)  # the mean colour, before the shadow darkens it (an exact sum)
    if rng.random() < 0.5:  # drop shadow: grounds the object like a photo
        dx, dy = (int(v) for v in rng.integers(2, 9, 2) * rng.choice([-1, 1], 2))
        shadow = mask.filter(ImageFilter.BoxBlur(3)).point(lambda v: v * 45 // 100)
        canvas.paste((0, 0, 0), (x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h), shadow)
    tex = Image.fromarray(np.clip(_texture(h, w, rng, avoid), 0, 255).astype(np.uint8), "RGB")
    canvas.paste(tex, (x0, y0), mask)
    if into is not None:
        into.paste(mask, (x0, y0))
    bx = mask.getbbox() or (0, 0, w, h)
    return (x0 + bx[0], y0 + bx[1], x0 + bx[2], y0 + bx[3])


_NOISE: np.ndarray | None = None


def _noise_tile() -> np.ndarray:
    """A fixed 512x512x3 standard-normal tile (seeded constant): items read windows of it, which is far
    cheaper than drawing 150k normals per image and just as deterministic."""
    global _NOISE
    if _NOISE is None:
        _NOISE = gauss(np.random.default_rng(20250101), (512, 512, 3))
    return _NOISE


def finish(canvas: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sensor noise over the whole image (object and background alike): the last step of a scene."""
    sigma = np.float32(uniform(rng, 0, 7))
    w, h = canvas.size
    tile = _noise_tile()
    if h > tile.shape[0] or w > tile.shape[1]:
        noise = gauss(rng, (h, w, 3))
    else:
        oy, ox = (int(v) for v in rng.integers(0, [tile.shape[0] - h + 1, tile.shape[1] - w + 1]))
        noise = tile[oy:oy + h, ox:ox + w]
    a = np.asarray(canvas, dtype=np.float32) + noise * sigma
    return Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8), "RGB")


def item(seed: int, index: int, split: str = "train", size: int = SIZE) -> tuple[Image.Image, int, str]:
    """Item `index` of the shapes split: (RGB image, label, id). Labels cycle through the classes
    (label = index % 10), so every run of 10 consecutive items is balanced."""
    img, label, _ = _drawn(seed, index, split, size)
    return img, label, item_id(seed, index, split)


def _drawn(seed: int, index: int, split: str, size: int) -> tuple[Image.Image, int, Image.Image]:
    """(image, label, the object's mask) of item `index`."""
    rng = rng_for(seed, index, split)
    label = int(index) % len(CLASSES)
    canvas = render_background(size, rng)
    side = uniform(rng, 0.35, 0.62) * size
    # Object-centred like a photo (ImageNet-style), with a jitter that keeps the box inside the frame.
    cx = size / 2 + uniform(rng, -1, 1) * min(0.14 * size, size / 2 - side / 2)
    cy = 0.46 * size + uniform(rng, -1, 1) * min(0.12 * size, 0.46 * size - side / 2)
    mask = Image.new("L", canvas.size)
    draw_object(canvas, label, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), rng, into=mask)
    return finish(canvas, rng), label, mask


def item_id(seed: int, index: int, split: str = "train") -> str:
    """The id of item `index` (what STACK sets record for their source images)."""
    return f"shapes-{split}-{seed}-{index:07d}"


class ShapesSource(Source):
    """`shapes`: `n` items of one split; labels are index % 10 (balanced)."""

    kind = "shapes"
    always_usable = True

    def __init__(self, split: str | None = None, seed: int = 0, n: int = DEFAULT_ITEMS, size: int = SIZE):
        split = split or "test"
        rng_for(seed, 0, split)  # validates the split name
        if n < 2 * len(CLASSES):
            raise StackbenchError(f"shapes source needs at least {2 * len(CLASSES)} items, got {n}")
        self.split, self.seed, self.n, self.size = split, int(seed), int(n), int(size)
        self.ref = "shapes" if (seed, n) == (0, DEFAULT_ITEMS) else f"shapes:{n}@{seed}"
        self.class_names = list(CLASSES)

    def __len__(self) -> int:
        return self.n

    def labels(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64) % len(CLASSES)

    def item_id(self, i: int) -> str:
        return item_id(self.seed, i, self.split)

    def load(self, i: int) -> SourceItem:
        img, label, mask = _drawn(self.seed, i, self.split, self.size)
        return SourceItem(img, label, self.item_id(i), object_mask=mask)

    def fingerprint(self) -> str:
        key = f"{VERSION}|{self.split}|{self.seed}|{self.n}|{self.size}"
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
