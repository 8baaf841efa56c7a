"""Composing one STACK-MIX image from two same-class images, and encoding it deterministically."""
from __future__ import annotations

import io

from PIL import Image

LAYOUTS = ("cut", "fit")
FORMATS = ("png", "jpeg")
PNG_COMPRESS_LEVEL = 1  # fixed (never a library default that may change); 3x faster than 6 for 13% more bytes
JPEG_QUALITY = 95
RESAMPLE = Image.BILINEAR  # Pillow's bilinear with antialiasing on reduction (like torchvision's Resize)


def cover(img: Image.Image, size: tuple[int, int], rows: tuple[int, int] | None = None) -> Image.Image:
    """Resize so the image covers `size` (w, h) and center-crop the rest (torchvision Resize + CenterCrop).

    rows=(r0, r1): only rows r0..r1-1 of that result, resampled directly from the matching source region
    (half the resampling work for a stack; within 1 grey level of cropping the full result)."""
    w, h = size
    iw, ih = img.size
    if iw * h > ih * w:  # wider than the target: crop the sides
        cw, ch = ih * w / h, ih
    else:
        cw, ch = iw, iw * h / w
    x0, y0 = (iw - cw) / 2, (ih - ch) / 2
    r0, r1 = rows or (0, h)
    s = ch / h
    return img.resize((w, r1 - r0), RESAMPLE, box=(x0, y0 + r0 * s, x0 + cw, y0 + r1 * s))


def contained_size(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The (w, h) an image of `image_size` takes when scaled to fit inside `size`, keeping its proportions."""
    (w, h), (iw, ih) = size, image_size
    s = min(w / iw, h / ih)
    return max(1, round(iw * s)), max(1, round(ih * s))


def contain(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize the whole image to fit inside `size` (w, h), keeping its proportions."""
    return img.resize(contained_size(img.size, size), RESAMPLE)


def compose(top: Image.Image, bottom: Image.Image, layout: str, size: int = 224, wall_row: int = 170,
            masks: tuple = (None, None)) -> tuple[Image.Image, list[int] | None, list[int] | None]:
    """(image, top_box, bottom_box). Boxes are x0, y0, x1, y1 in output pixels (x1, y1 exclusive). An image with a
    mask in `masks` (an 'L' image of its size, nonzero on its object: what a procedural source knows) gets the box
    of the mask's pixels that land in its slot, resampled as the image is (None when none land there); an image
    without one gets the box of where it was placed.

    cut: the paper's CutMix stacking: both images cover size x size; rows [0, wall_row) come from `top`,
         rows [wall_row, size) from `bottom`.
    fit: `top` covers the seen part (size x wall_row); the whole of `bottom` is scaled into the band behind
         the wall, centred on a fill of its mean colour, so a complete object sits in the dead zone.
    """
    if layout == "cut":
        out = Image.new("RGB", (size, size))
        place = [lambda im: cover(im, (size, size), rows=(0, wall_row)),
                 lambda im: cover(im, (size, size), rows=(wall_row, size))]
        corners = [(0, 0), (0, wall_row)]
    elif layout == "fit":
        band = size - wall_row
        out = Image.new("RGB", (size, size))
        out.paste(bottom.resize((1, 1), Image.BOX).getpixel((0, 0)), (0, wall_row, size, size))  # the mean colour
        place = [lambda im: cover(im, (size, wall_row)), lambda im: contain(im, (size, band))]
        small = contained_size(bottom.size, (size, band))
        corners = [(0, 0), ((size - small[0]) // 2, wall_row + (band - small[1]) // 2)]
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    boxes = []
    for img, mask, fit, (x, y) in zip((top, bottom), masks, place, corners, strict=True):
        piece = fit(img)
        out.paste(piece, (x, y))
        inside = fit(mask).getbbox() if mask is not None else (0, 0, *piece.size)
        boxes.append(None if inside is None else [inside[0] + x, inside[1] + y, inside[2] + x, inside[3] + y])
    return out, boxes[0], boxes[1]


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
