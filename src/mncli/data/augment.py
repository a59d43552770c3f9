"""Batch augmentation with tensor ops: random crop with zero padding, horizontal flip, cutout.

Whole batches are augmented at once on the training device, so no DataLoader workers are needed for
the small in-memory datasets. Randomness comes from an explicit `torch.Generator`, so a batch's
augmentation is a pure function of (seed, epoch, batch index) and a resumed run repeats it exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mncli.errors import BadInput


@dataclass(frozen=True)
class Augment:
    """What to do to each training image: `crop` pixels of zero padding before a random crop back to
    the original size, a horizontal `flip` with probability 1/2, and a `cutout` square of that side
    set to zero (after normalisation, i.e. to the mean) at a random centre."""

    crop: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def enabled(self) -> bool:
        return self.crop > 0 or self.flip or self.cutout > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"crop={self.crop}"] if self.crop else []
        parts += ["flip"] if self.flip else []
        parts += [f"cutout={self.cutout}"] if self.cutout else []
        return ",".join(parts) or "none"


def parse_augment(text: str | None, default: Augment) -> Augment:
    """`default`, `none`, or a comma list such as `crop=4,flip,cutout=8` (missing parts are off)."""
    if text is None or text.strip() in ("", "default"):
        return default
    if text.strip() == "none":
        return Augment()
    crop, flip, cutout = 0, False, 0
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        try:
            if key == "crop":
                crop = int(value or 4)
            elif key == "flip":
                flip = value.lower() not in ("0", "false", "no") if value else True
            elif key == "cutout":
                cutout = int(value or 8)
            else:
                raise ValueError(key)
        except ValueError:
            raise BadInput(
                f"bad --augment part {part.strip()!r}",
                hint="use default, none, or a comma list like crop=4,flip,cutout=8",
            ) from None
    if crop < 0 or cutout < 0:
        raise BadInput("--augment crop and cutout must be >= 0", hint="e.g. --augment crop=4,flip")
    return Augment(crop=crop, flip=flip, cutout=cutout)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Pad every image by `padding` zeros and crop a random window of the original size."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=gen).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)[None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a `size` x `size` square around a uniformly drawn centre (clipped at the border)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (n,), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= (cy - size // 2)[:, None]) & (ys < (cy - size // 2 + size)[:, None])
    in_x = (xs >= (cx - size // 2)[:, None]) & (xs < (cx - size // 2 + size)[:, None])
    hole = in_y[:, None, :, None] & in_x[:, None, None, :]
    return x.masked_fill(hole, 0.0)


def apply_before_normalise(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Crop and flip act on the raw image (padding is black, as torchvision's RandomCrop pads)."""
    if aug.crop:
        x = random_crop(x, aug.crop, gen)
    if aug.flip:
        x = random_flip(x, gen)
    return x


def apply_after_normalise(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    return cutout(x, aug.cutout, gen) if aug.cutout else x
