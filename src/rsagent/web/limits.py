"""What an upload may be: its bytes and pixels are checked before anything decodes it, and every
refusal is one line the page shows (never a stack trace)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rsagent.core.errors import ImageError, MaskError, RsagentError
from rsagent.core.image import load_image, load_mask
from rsagent.core.trajectory import Trajectory

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 25_000_000  # a 6000x4000 photo; the segmenters and models downscale anyway
MB = 1 << 20


class UploadError(RsagentError):
    """An upload that is refused (too large) or cannot be read (corrupt, unsupported)."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MB)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise RsagentError(f"upload limits must be positive, got {self.max_bytes} bytes and {self.max_pixels} pixels")

    @classmethod
    def from_options(cls, max_upload_mb: float, max_pixels: int) -> UploadLimits:
        return cls(int(max_upload_mb * MB), int(max_pixels))

    @property
    def label_note(self) -> str:
        """The byte limit for an upload's label: Gradio's own pop-up for a file over it cannot name the option."""
        return f"at most {self.max_bytes / MB:g} MB (rsagent serve --max-upload-mb)"


def check_size(path: str | Path, limits: UploadLimits, what: str) -> Path:
    """The upload's path once its size is known to be within the limit."""
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{what}: the upload did not arrive; try again")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{what} ({path.name}) is empty")
    if size > limits.max_bytes:
        raise UploadError(f"{what} ({path.name}) is {size / MB:.1f} MB, over this server's limit of "
                          f"{limits.max_bytes / MB:.1f} MB (rsagent serve --max-upload-mb)")
    return path


def check_pixels(width: int, height: int, limits: UploadLimits, what: str) -> None:
    if width * height > limits.max_pixels:
        raise UploadError(f"{what} is {width}x{height} = {width * height:,} pixels, over this server's limit of "
                          f"{limits.max_pixels:,} (rsagent serve --max-upload-pixels)")


def _header_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path) as img:
                return img.size
    except Image.DecompressionBombError:
        raise UploadError(f"{what} ({path.name}) is far too large to decode (possible decompression bomb)") from None
    except Exception:  # noqa: BLE001 - anything PIL cannot identify is one message
        raise UploadError(f"{what} ({path.name}) is not a readable image (unknown or corrupt format)") from None


def _one_line(exc: Exception, path: Path, what: str) -> str:
    """The loader's message with the server's temporary path replaced by what the user uploaded."""
    return str(exc).replace(str(path), f"{what} ({path.name})")


def read_image(path: str | Path, limits: UploadLimits, what: str = "the image") -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8 RGB, within the limits; UploadError otherwise."""
    path = check_size(path, limits, what)
    check_pixels(*_header_size(path, what), limits, what)
    try:
        return load_image(path, max_pixels=limits.max_pixels)
    except ImageError as exc:
        raise UploadError(_one_line(exc, path, what)) from None


def read_mask(path: str | Path, size: tuple[int, int], limits: UploadLimits,
              what: str = "the ground-truth mask") -> np.ndarray:
    """An uploaded mask (non-zero = target) as a bool array of the image's `size` (width, height)."""
    path = check_size(path, limits, what)
    check_pixels(*_header_size(path, what), limits, what)
    try:
        return load_mask(path, size=size, max_pixels=limits.max_pixels)
    except MaskError as exc:
        raise UploadError(_one_line(exc, path, what)) from None


def read_trajectory(path: str | Path, limits: UploadLimits, what: str = "the trajectory") -> Trajectory:
    """An uploaded trajectory.json, checked so that rendering it stays within the pixel limit."""
    path = check_size(path, limits, what)
    try:
        traj = Trajectory.from_dict(json.loads(path.read_bytes()))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UploadError(f"{what} ({path.name}) is not an rsagent trajectory.json ({reason})") from None
    check_trajectory(traj, limits, f"{what} ({path.name})")
    return traj


def check_trajectory(traj: Trajectory, limits: UploadLimits, what: str) -> None:
    """A trajectory's image size bounds every mask decoded from it: refuse one over the pixel limit."""
    try:
        width, height = int(traj.image["width"]), int(traj.image["height"])
    except (TypeError, KeyError, ValueError):
        raise UploadError(f"{what} has no image width and height") from None
    if width < 1 or height < 1:
        raise UploadError(f"{what} has an empty image size {width}x{height}")
    check_pixels(width, height, limits, f"{what}'s image")
    rles = [c.rle for c in traj.candidates] + ([traj.final["rle"]] if traj.final.get("rle") else [])
    for rle in rles:
        if not isinstance(rle, dict) or list(rle.get("size") or []) != [height, width]:
            raise UploadError(f"{what} holds a mask whose size is not the image's {width}x{height}")
