"""Decoding one input image robustly: every file is either an RGB image or a `SkipImage` with its reason.

Odd modes are converted (CMYK, grayscale, palette, 16-bit, alpha), unreadable or tiny files are skipped;
a long run never stops on one bad file.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import first_line

# Extensions a class folder may hold (compared lower-cased, so .JPEG counts).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MIN_SIZE = 64  # px per side: a smaller image carries too little to stretch over a 224 px image


class SkipImage(Exception):
    """An input that cannot be used; `path` and `reason` go into the skip report."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Decoded:
    image: Image.Image  # RGB
    converted_from: str | None  # the original mode when it was not RGB


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """Any PIL image -> RGB. Transparency is composited over white; 16/32-bit gray is rescaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), mode
    if img.mode.startswith("I") or img.mode == "F":
        # PIL's own convert clips 16-bit values at 255; rescale the range instead.
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB"), mode
    return img.convert("RGB"), mode  # CMYK, L, 1, YCbCr, LAB, HSV


def decode(data: bytes | str | os.PathLike, name: str, min_size: int = DEFAULT_MIN_SIZE) -> Decoded:
    """Decode a file path or encoded bytes into RGB, or raise SkipImage naming `name` and why."""
    if isinstance(data, (str, os.PathLike)):
        try:
            if os.path.getsize(data) == 0:
                raise SkipImage(name, "empty file (0 bytes)")
        except OSError as e:
            raise SkipImage(name, f"cannot read ({first_line(e)})") from None
        opener = data
    else:
        if not data:
            raise SkipImage(name, "empty file (0 bytes)")
        opener = io.BytesIO(data)
    try:
        with Image.open(opener) as im:
            im.load()
            try:  # camera orientation, as viewers show it (in place: no copy when there is nothing to do)
                ImageOps.exif_transpose(im, in_place=True)
            except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to lose the pixels
                pass
            rgb, converted = to_rgb(im)
            rgb.load()
    except UnidentifiedImageError:
        raise SkipImage(name, "not an image (no image format recognised)") from None
    except SkipImage:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data, bad headers, decoder errors: all skip the file
        raise SkipImage(name, f"truncated or corrupt ({first_line(e)})") from None
    w, h = rgb.size
    if min(w, h) < min_size:
        raise SkipImage(name, f"too small ({w}x{h}; needs at least {min_size} px per side)")
    return Decoded(rgb, converted)
