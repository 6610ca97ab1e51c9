"""Per-image batch augmentation: `Augmentation` (the ``--augment`` flag) and its parts, random crop,
flip, cutout, jitter and rotation, each applied to a whole B×C×H×W batch on its device.

Every part draws its per-image random numbers on the CPU from the generator it is given, through
`_draw`: one draw of all of a global batch's numbers per call, so a sharded process (`Rows`) and a
resumed generator get exactly the numbers one uninterrupted process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compresskit.errors import ParameterError

_AUGMENT_DEFAULTS = {"crop": 4, "flip": 1, "cutout": 8, "jitter": 0.4, "rotate": 15}
# What each part's value may be, for the error messages.
_AUGMENT_ALLOWED = {
    "crop": "a whole number of pixels, 0 or more",
    "flip": "no value",
    "cutout": "a whole number of pixels, 0 or more",
    "jitter": "a number from 0 up to (not including) 1",
    "rotate": "a number of degrees from 0 to 180",
}
MAX_ROTATION = 180.0


@dataclass(frozen=True)
class Augmentation:
    """Per-sample batch augmentation. Zero/False switches a part off.

    crop_padding: zero-pad by this many pixels, then crop back to H×W at a random offset.
    flip: mirror left-right with probability 1/2.
    cutout: side in pixels of a square set to the dataset mean (0 after normalisation).
    jitter: brightness, contrast and (RGB only) saturation each scaled by a factor in
        [1 - jitter, 1 + jitter].
    rotate: rotate each image about its centre by its own angle drawn uniformly from
        [-rotate, +rotate] degrees (0..180), bilinear, zero padding; see `random_rotate`.
    """

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    jitter: float = 0.0
    rotate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """Parse e.g. ``"crop,flip"``, ``"crop=2,flip,cutout=12"``, ``"rotate=10"`` or ``"none"``."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts == ["none"]:
            return cls()
        values: dict[str, float] = {}
        for part in parts:
            key, _, value = part.partition("=")
            if key not in _AUGMENT_DEFAULTS:
                raise ParameterError(
                    f"{{0}} must be a comma list of {', '.join(_AUGMENT_DEFAULTS)} (each optionally "
                    f"=VALUE), or 'none'; got '{part}'.",
                    "augment",
                )
            if key == "flip" and value:
                raise ParameterError(f"{{0}} '{part}': flip takes no value.", "augment")
            allowed = f"{key} takes {_AUGMENT_ALLOWED[key]}"
            try:
                number = float(value) if value else _AUGMENT_DEFAULTS[key]
            except ValueError:
                message = f"{{0}} '{part}': {value!r} is not a number; {allowed}."
                raise ParameterError(message, "augment") from None
            if not math.isfinite(number):
                raise ParameterError(f"{{0}} '{part}': {allowed}.", "augment")
            if key in ("crop", "cutout") and number != int(number):
                raise ParameterError(f"{{0}} '{part}': {key} takes a whole number of pixels.", "augment")
            if number < 0:
                raise ParameterError(f"{{0}} '{part}': the value must not be negative; {allowed}.", "augment")
            if key == "rotate" and number > MAX_ROTATION:
                raise ParameterError(f"{{0}} '{part}': {allowed}.", "augment")
            values[key] = number
        if values.get("jitter", 0) >= 1:
            raise ParameterError(f"{{0}} jitter must be below 1; got {values['jitter']:g}.", "augment")
        return cls(
            crop_padding=int(values.get("crop", 0)),
            flip=bool(values.get("flip", 0)),
            cutout=int(values.get("cutout", 0)),
            jitter=float(values.get("jitter", 0.0)),
            rotate=float(values.get("rotate", 0.0)),
        )

    def describe(self) -> str:
        parts = []
        if self.crop_padding:
            parts.append(f"crop={self.crop_padding}")
        if self.flip:
            parts.append("flip")
        if self.cutout:
            parts.append(f"cutout={self.cutout}")
        if self.jitter:
            parts.append(f"jitter={self.jitter:g}")
        if self.rotate:
            parts.append(f"rotate={_shortest(self.rotate)}")
        return ",".join(parts) or "none"

    @property
    def active(self) -> bool:
        return self.describe() != "none"


def _shortest(value: float) -> str:
    """`value` as ``:g`` text when that reads back exactly, else as its round-trip repr."""
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def default_augmentation(dataset: str) -> Augmentation:
    """Crop + flip for natural images; crop only for digits, whose mirror images are not digits."""
    if dataset in ("digits", "mnist"):
        return Augmentation(crop_padding=2)
    return Augmentation(crop_padding=4, flip=True)


@dataclass(frozen=True)
class Rows:
    """Which rows ``[start, stop)`` of a batch of `total` images a process holds (its shard of a
    global batch under `torch.distributed`). The augmentations draw their random numbers for all
    `total` images and keep these rows, so every process's generator advances alike and each image
    gets the numbers it would get in one process."""

    start: int
    stop: int
    total: int


def _draw(count: int, rows: Rows | None, generator: torch.Generator, high: int | None = None) -> torch.Tensor:
    """One random number per image of a batch of `count`, on the CPU: int64 from [0, `high`)
    (`torch.randint`), or, with `high` None, float32 from [0, 1) (`torch.rand`).

    With `rows`, draws ``rows.total`` numbers (the global batch) and keeps this process's rows (see
    `Rows`). Callers compute on these CPU numbers before moving them, so results do not depend on
    the device.
    """
    n = count if rows is None else rows.total
    if high is None:
        drawn = torch.rand(n, generator=generator)
    else:
        drawn = torch.randint(0, high, (n,), generator=generator)
    return drawn if rows is None else drawn[rows.start : rows.stop]


def _draw_symmetric(count: int, rows: Rows | None, generator: torch.Generator, amount: float) -> torch.Tensor:
    """One number per image from [-amount, +amount] (float32, CPU); see `_draw`."""
    return (_draw(count, rows, generator) * 2 - 1) * amount


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Zero-pad B×C×H×W images by `padding` and cut each back to H×W at its own random offset."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = _draw(b, rows, generator, 2 * padding + 1).to(images.device)
    dx = _draw(b, rows, generator, 2 * padding + 1).to(images.device)
    row_index = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    col_index = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, row_index, col_index]


def random_flip(images: torch.Tensor, generator: torch.Generator, rows: Rows | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (_draw(len(images), rows, generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_cutout(
    images: torch.Tensor, size: int, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Zero a size×size square (clipped at the border) at a random centre in each image."""
    b, _, h, w = images.shape
    cy = _draw(b, rows, generator, h).to(images.device)
    cx = _draw(b, rows, generator, w).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :] - (cy[:, None] - size // 2)
    xs = torch.arange(w, device=images.device)[None, :] - (cx[:, None] - size // 2)
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    return images.masked_fill(inside[:, None], 0.0)


def random_jitter(
    images: torch.Tensor, amount: float, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Brightness, contrast and (3 channels) saturation jitter on B×C×H×W floats in [0, 1]."""

    def factors() -> torch.Tensor:
        f = 1 + _draw_symmetric(len(images), rows, generator, amount)
        return f.to(images.device)[:, None, None, None]

    x = images * factors()
    gray = x.mean(dim=1, keepdim=True) if x.shape[1] == 3 else x
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factors() + gray.mean(dim=(2, 3), keepdim=True)
    if x.shape[1] == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = (x - gray) * factors() + gray
    return x.clamp(0.0, 1.0)


def rotate_batch(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image i of a B×C×H×W batch about its centre by ``degrees[i]``, counter-clockwise as
    displayed (row 0 at the top), so +90 equals ``torch.rot90(image, 1, dims=(-2, -1))``.

    One `F.affine_grid` + `F.grid_sample` for the whole batch on its device: bilinear, zero padding
    (corners brought in from outside the image are 0, i.e. black before normalisation),
    ``align_corners=False`` so the centre of rotation is the image centre. Float batches keep their
    dtype; integer (uint8) batches are computed in float32 and rounded and clamped back.
    """
    b, _, h, w = images.shape
    if degrees.shape != (b,):
        raise ValueError(f"rotate_batch needs one angle per image: {b} images, angles {tuple(degrees.shape)}")
    floating = images.is_floating_point()
    x = images if floating else images.to(torch.float32)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    theta = torch.deg2rad(degrees.to(device=x.device, dtype=torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # The output pixel at normalised (u, v) (u right, v down; pixel units are w/2 and h/2 per unit)
    # reads the input at the inverse rotation of that point; for a counter-clockwise turn as
    # displayed (v pointing down) that is [[cos, -sin], [sin, cos]] in pixel units.
    matrix = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
    matrix[:, 0, 0] = cos
    matrix[:, 0, 1] = -sin * (h / w)
    matrix[:, 1, 0] = sin * (w / h)
    matrix[:, 1, 1] = cos
    grid = F.affine_grid(matrix.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if floating:
        return out.to(images.dtype)
    info = torch.iinfo(images.dtype)
    return out.round().clamp(info.min, info.max).to(images.dtype)


def rotation_angles(n: int, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """`n` angles drawn uniformly from [-degrees, +degrees] (float32, CPU) with `generator`."""
    return _draw_symmetric(n, None, generator, degrees)


def random_rotate(
    images: torch.Tensor, degrees: float, generator: torch.Generator, rows: Rows | None = None
) -> torch.Tensor:
    """Rotate each image by its own angle from [-degrees, +degrees]; see `rotate_batch`.

    Draws exactly `len(images)` numbers (`rows.total` with `rows`) from `generator` (on the CPU,
    like the other parts), so a run that resumes its loader's generator state gets the same angles.
    """
    return rotate_batch(images, _draw_symmetric(len(images), rows, generator, degrees))
