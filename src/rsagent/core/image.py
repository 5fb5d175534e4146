"""Reading images and masks from disk with size limits and clear errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rsagent.core.errors import ImageError, MaskError

# A 100 MP RGB image is 300 MB decoded; anything larger is almost surely a decompression bomb.
DEFAULT_MAX_PIXELS = 100_000_000


def _open_checked(path: str | Path, max_pixels: int) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, expected an image file")
    try:
        with warnings.catch_warnings():
            # PIL warns between its own threshold and twice it; our limit below decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refusing to decode, possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{path}: image has zero size")
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (possible decompression bomb); raise max_pixels if it is genuine"
        )
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the image's header, without decoding its pixels."""
    with Image.open(path) as img:
        width, height = img.size
    return height, width


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load an image as an (H, W, 3) uint8 RGB array. Raises ImageError with a one-line reason."""
    img = _open_checked(path, max_pixels)
    try:
        rgb = img.convert("RGB")
        rgb.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: image data is corrupt or truncated ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_mask(path: str | Path, size: tuple[int, int] | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load a mask image as a bool array (non-zero = foreground).

    size: the expected (width, height); a mismatch raises MaskError naming both sizes.
    """
    try:
        img = _open_checked(path, max_pixels)
        # palette masks (VOC style) store labels as indices: read those, not their display colours
        if img.mode in ("L", "1", "P", "I", "I;16"):
            arr = np.asarray(img)
        else:  # colour masks: foreground where any channel is non-zero (grey conversion rounds dim pixels to 0)
            arr = np.asarray(img.convert("RGB")).any(axis=2)
    except ImageError as exc:
        raise MaskError(str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"{path}: mask data is corrupt or truncated ({exc})") from None
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise MaskError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[0]}x{size[1]}"
        )
    return arr != 0


def mask_png(mask: np.ndarray) -> bytes:
    """A bool mask as the bytes of a single-channel PNG with values 0 and 255."""
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as a single-channel PNG with values 0 and 255."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(mask_png(mask))


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array (PNG or JPEG by extension)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
