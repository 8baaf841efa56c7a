"""Composing one STACK-MIX image from two same-class images, and encoding it deterministically."""
from __future__ import annotations

import io
import math

from PIL import Image

LAYOUTS = ("cut", "fit")
FORMATS = ("png", "jpeg")
PNG_COMPRESS_LEVEL = 1  # fixed (never a library default that may change); 3x faster than 6 for 13% more bytes
JPEG_QUALITY = 95
RESAMPLE = Image.BILINEAR  # Pillow's bilinear with antialiasing on reduction (like torchvision's Resize)


def _cover_crop(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x0, y0, cw, ch): the centre crop of the image that covers `size` (w, h) once resized."""
    (w, h), (iw, ih) = size, image_size
    if iw * h > ih * w:  # wider than the target: crop the sides
        cw, ch = ih * w / h, ih
    else:
        cw, ch = iw, iw * h / w
    return (iw - cw) / 2, (ih - ch) / 2, cw, ch


def cover(img: Image.Image, size: tuple[int, int], rows: tuple[int, int] | None = None) -> Image.Image:
    """Resize so the image covers `size` (w, h) and center-crop the rest (torchvision Resize + CenterCrop).

    rows=(r0, r1): only rows r0..r1-1 of that result, resampled directly from the matching source region
    (half the resampling work for a stack; within 1 grey level of cropping the full result)."""
    w, h = size
    x0, y0, cw, ch = _cover_crop(img.size, size)
    r0, r1 = rows or (0, h)
    s = ch / h
    return img.resize((w, r1 - r0), RESAMPLE, box=(x0, y0 + r0 * s, x0 + cw, y0 + r1 * s))


def placed_box(box, scale: tuple[float, float], offset: tuple[float, float], clip) -> list[int] | None:
    """A box in source pixels -> output pixels (x = bx * sx + dx), rounded outward and clipped to `clip`
    (x0, y0, x1, y1); None when nothing of it is left. Exact when the scale is 1 and the offset whole."""
    (sx, sy), (dx, dy) = scale, offset
    lo = lambda v, k, d, c: max(c, math.floor(v * k + d + 1e-9))  # noqa: E731 - the epsilon keeps exact products exact
    hi = lambda v, k, d, c: min(c, math.ceil(v * k + d - 1e-9))  # noqa: E731
    out = [lo(box[0], sx, dx, clip[0]), lo(box[1], sy, dy, clip[1]), hi(box[2], sx, dx, clip[2]),
           hi(box[3], sy, dy, clip[3])]
    return out if out[0] < out[2] and out[1] < out[3] else None


def _covered_box(box, image_size, size: tuple[int, int], clip) -> list[int] | None:
    """Where `box` of an image lands once the image covers `size` (centre crop), clipped to its slot."""
    x0, y0, cw, ch = _cover_crop(image_size, size)
    sx, sy = size[0] / cw, size[1] / ch
    return placed_box(box, (sx, sy), (-x0 * sx, -y0 * sy), clip)


def contain(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize the whole image to fit inside `size` (w, h), keeping its proportions."""
    w, h = size
    iw, ih = img.size
    s = min(w / iw, h / ih)
    return img.resize((max(1, round(iw * s)), max(1, round(ih * s))), RESAMPLE)


def compose(top: Image.Image, bottom: Image.Image, layout: str, size: int = 224, wall_row: int = 170,
            objects: tuple | None = None) -> tuple[Image.Image, list[int] | None, list[int] | None]:
    """(image, top_box, bottom_box). Boxes are x0, y0, x1, y1 in output pixels (x1, y1 exclusive): where each
    placed image went, or with `objects` (each image's object box in its own pixels, or None) where each object
    went, rounded outward and clipped to its slot (None when none of it is left in the slot).

    cut: the paper's CutMix stacking: both images cover size x size; rows [0, wall_row) come from `top`,
         rows [wall_row, size) from `bottom`.
    fit: `top` covers the seen part (size x wall_row); the whole of `bottom` is scaled into the band behind
         the wall, centred on a fill of its mean colour, so a complete object sits in the dead zone.
    """
    if layout == "cut":
        out = Image.new("RGB", (size, size))
        out.paste(cover(top, (size, size), rows=(0, wall_row)), (0, 0))
        out.paste(cover(bottom, (size, size), rows=(wall_row, size)), (0, wall_row))
        slots = [0, 0, size, wall_row], [0, wall_row, size, size]
        return out, *_object_boxes(objects, slots, lambda k, box, slot: _covered_box(
            box, (top, bottom)[k].size, (size, size), slot))
    if layout == "fit":
        band = size - wall_row
        out = Image.new("RGB", (size, size))
        out.paste(cover(top, (size, wall_row)), (0, 0))
        small = contain(bottom, (size, band))
        mean = bottom.resize((1, 1), Image.BOX).getpixel((0, 0))
        out.paste(mean, (0, wall_row, size, size))
        x0, y0 = (size - small.width) // 2, wall_row + (band - small.height) // 2
        out.paste(small, (x0, y0))
        slots = [0, 0, size, wall_row], [x0, y0, x0 + small.width, y0 + small.height]
        scale = small.width / bottom.width, small.height / bottom.height
        return out, *_object_boxes(objects, slots, lambda k, box, slot: (
            _covered_box(box, top.size, (size, wall_row), slot) if k == 0 else placed_box(box, scale, (x0, y0), slot)))
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _object_boxes(objects, slots, place) -> tuple:
    """Each slot's box: the placed object's where its image knows it, else the slot itself."""
    objects = objects or (None, None)
    return tuple(list(slot) if obj is None else place(k, obj, slot) for k, (obj, slot) in enumerate(zip(objects, slots)))


def encoding(fmt: str) -> str:
    """The encoder settings, recorded in the recipe: they decide the bytes."""
    return f"png compress_level={PNG_COMPRESS_LEVEL}" if fmt == "png" else f"jpeg quality={JPEG_QUALITY} 4:4:4"


def encode(img: Image.Image, fmt: str) -> bytes:
    """PNG (lossless, fixed compression, no metadata chunks) or JPEG (fixed quality, 4:4:4)."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return buf.getvalue()
