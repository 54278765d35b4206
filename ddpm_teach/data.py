"""Data for the course: 2-D toy distributions, glyph digits, and readers for real image sets.

Everything the course needs runs offline. The default image set is *glyph digits*: MNIST-like
28x28 digits rendered from the fonts that ship with matplotlib and then bent, slanted, thickened and
blurred at random, so a notebook can train a digit model with no download at all. MNIST,
Fashion-MNIST and CIFAR-10 are read from their official files only when asked for, and downloaded
only with ``download=True``.

Conventions, shared by every loader here:

* 2-D toy data: float32 tensors of shape (n, 2), roughly unit scale (coordinates within about +-3).
* Images: float32 tensors of shape (N, C, H, W) scaled to [-1, 1] (background -1), the range the
  DDPM paper uses (section 3.3: "data scaled linearly to [-1, 1]"); labels int64 of shape (N,).
* Randomness: every generator takes a ``seed`` and draws from its own ``torch.Generator``; the
  global RNG is never touched, so the same seed gives the same data anywhere.

Real data sets live in a cache folder: the ``root`` argument, else the ``DDPM_TEACH_DATA``
environment variable, else ``~/.cache/ddpm_teach``; each set in its own sub-folder (``mnist/``,
``fashion-mnist/``, ``cifar10/``). Downloaded archives are checked against their published SHA-256
digests.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextPath
from torch import Tensor

__all__ = [
    "DATASETS",
    "EIGHT_GAUSSIANS_CENTERS",
    "EIGHT_GAUSSIANS_RADIUS",
    "EIGHT_GAUSSIANS_STD",
    "GLYPH_EXCLUDED",
    "GLYPH_FONTS",
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "ChecksumError",
    "DatasetNotFoundError",
    "GlyphFont",
    "RemoteFile",
    "data_root",
    "glyph_digits",
    "is_image_dataset",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "toy_2d",
]

TOY_DATASETS = ("eight-gaussians", "swiss-roll", "moons", "checkerboard")
IMAGE_DATASETS = ("glyph-digits", "mnist", "fashion-mnist", "cifar10")
DATASETS = TOY_DATASETS + IMAGE_DATASETS

#: Default sizes for :func:`load_dataset` when ``n`` is None (real sets default to all images).
TOY_DEFAULT_N = 100_000
GLYPH_DEFAULT_N = 60_000


def _check_count(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {n!r}")
    return int(n)


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if seed < 0:  # as course.seed_everything: torch would wrap it, NumPy refuses it
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


# ================================================================================================
# 2-D toy distributions
# ================================================================================================

#: Eight Gaussians: equal-weight components on a circle of radius 2, isotropic std 0.1. Neighbouring
#: centres are 2 * 2 * sin(pi / 8) = 1.53 apart, about 15 std, so the modes never touch: a sampler
#: that drops or merges one is easy to see, and the mode-coverage metric can assign every point.
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.1
_angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
EIGHT_GAUSSIANS_CENTERS = (
    EIGHT_GAUSSIANS_RADIUS * torch.stack([_angles.cos(), _angles.sin()], dim=1)
).float()  # (8, 2)
del _angles


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    component = torch.randint(0, 8, (n,), generator=g)
    return EIGHT_GAUSSIANS_CENTERS[component] + EIGHT_GAUSSIANS_STD * torch.randn(n, 2, generator=g)


def _swiss_roll(n: int, g: torch.Generator) -> Tensor:
    # The classic spiral r = t, angle t for t in [1.5 pi, 4.5 pi], scaled to radius <= 2.
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * t.cos(), t * t.sin()], dim=1) / (4.5 * math.pi / 2)
    return x + 0.05 * torch.randn(n, 2, generator=g)


def _moons(n: int, g: torch.Generator) -> Tensor:
    # Two interleaved half circles of radius 1 (scikit-learn's layout), centred and scaled by 1.5.
    upper = torch.rand(n, generator=g) < 0.5
    angle = math.pi * torch.rand(n, generator=g)
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    lower = torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], dim=1)
    x = torch.where(upper[:, None], x, lower) - torch.tensor([0.5, 0.25])
    return 1.5 * x + 0.1 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # A 4x4 board of unit squares on [-2, 2]^2; uniform on the 8 squares whose column + row is even.
    x = 4 * torch.rand(n, generator=g) - 2
    row = 2 * torch.randint(0, 2, (n,), generator=g) + (torch.floor(x) % 2)  # same parity as column
    y = row - 2 + torch.rand(n, generator=g)
    return torch.stack([x, y], dim=1)


_TOY_SAMPLERS = {
    "eight-gaussians": _eight_gaussians,
    "swiss-roll": _swiss_roll,
    "moons": _moons,
    "checkerboard": _checkerboard,
}


def toy_2d(name: str, n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` i.i.d. points from a named 2-D toy distribution.

    Args:
        name: one of :data:`TOY_DATASETS`: "eight-gaussians" (see :data:`EIGHT_GAUSSIANS_CENTERS`),
            "swiss-roll" (a noisy spiral of radius <= 2), "moons" (two interleaved half circles)
            or "checkerboard" (uniform on the dark squares of a 4x4 board on [-2, 2]^2).
        n: number of points.
        seed: seed of the private generator; the same (name, n, seed) always gives the same points.

    Returns:
        float32 tensor of shape (n, 2).
    """
    if name not in _TOY_SAMPLERS:
        raise ValueError(f"name: unknown toy data set {name!r}; expected one of {TOY_DATASETS}")
    n = _check_count(n)
    return _TOY_SAMPLERS[name](n, _generator(seed)).float()


# ================================================================================================
# Glyph digits
# ================================================================================================
#
# How a glyph digit is made:
#  1. Bank (once per process): for each font variant and digit, take the glyph's vector outline
#     from matplotlib (TextPath) and scale it so its bounding box's longer side is 20 px, as
#     MNIST did with its 20x20 box in a 28x28 frame. Store it as a *signed distance field* (SDF):
#     distance to the outline in pixels, negative inside; note its centre of mass too, since
#     MNIST centred each digit by that, and our warps are about it. An SDF can be resampled smoothly and thresholded at any level, which gives exact
#     thickening/thinning and anti-aliasing for free (the trick game engines use for text).
#  2. Per image: warp the SDF with a random affine map (rotation, slant, scale, squash,
#     shift) plus a smooth random elastic displacement, all in one grid_sample call, then turn
#     distance into ink with a soft threshold whose level sets the stroke width and whose
#     softness sets the blur.

_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


class GlyphFont(NamedTuple):
    """One font variant of the glyph-digit bank: family, style, and its file under mpl-data."""

    family: str
    style: str
    file: str


#: The 16 font variants rendered into glyph digits, all shipped with matplotlib.
GLYPH_FONTS: tuple[GlyphFont, ...] = (
    GlyphFont("DejaVu Sans", "regular", "DejaVuSans.ttf"),
    GlyphFont("DejaVu Sans", "bold", "DejaVuSans-Bold.ttf"),
    GlyphFont("DejaVu Sans", "italic", "DejaVuSans-Oblique.ttf"),
    GlyphFont("DejaVu Sans", "bold italic", "DejaVuSans-BoldOblique.ttf"),
    GlyphFont("DejaVu Serif", "regular", "DejaVuSerif.ttf"),
    GlyphFont("DejaVu Serif", "bold", "DejaVuSerif-Bold.ttf"),
    GlyphFont("DejaVu Serif", "italic", "DejaVuSerif-Italic.ttf"),
    GlyphFont("DejaVu Serif", "bold italic", "DejaVuSerif-BoldItalic.ttf"),
    GlyphFont("DejaVu Sans Mono", "regular", "DejaVuSansMono.ttf"),
    GlyphFont("DejaVu Sans Mono", "bold", "DejaVuSansMono-Bold.ttf"),
    GlyphFont("DejaVu Sans Mono", "italic", "DejaVuSansMono-Oblique.ttf"),
    GlyphFont("DejaVu Sans Mono", "bold italic", "DejaVuSansMono-BoldOblique.ttf"),
    GlyphFont("STIX", "regular", "STIXGeneral.ttf"),
    GlyphFont("STIX", "bold", "STIXGeneralBol.ttf"),
    GlyphFont("STIX", "italic", "STIXGeneralItalic.ttf"),
    GlyphFont("STIX", "bold italic", "STIXGeneralBolIta.ttf"),
)

#: (font file, digit) pairs left out because they look typeset, not written: the monospaced zeros
#: carry a dot inside.
GLYPH_EXCLUDED = tuple((font.file, "0") for font in GLYPH_FONTS if "Mono" in font.file)

_IMAGE = 28  # output side, pixels
_BOX = 20.0  # longer side of a glyph's bounding box before warping (MNIST: 20x20 box)
_TILE = 40  # side of one bank tile, output pixels; the 28x28 view sits in its middle
_RES = 2  # SDF samples per output pixel
_ELASTIC = 4  # control grid of the elastic displacement, k x k
_CHUNK = 8192  # images warped per grid_sample call (bounds peak memory to ~100 MB)


def _outline_segments(font_file: Path, char: str) -> Tensor:
    """The closed outline of one glyph as straight segments, (S, 2, 2) float32, font units, y up."""
    path = TextPath((0, 0), char, size=1, prop=FontProperties(fname=font_file))
    t = np.linspace(0, 1, 5)  # 4 chords per Bezier piece: <= 0.13 px off the curve at 20 px
    segments = []
    for bezier, _ in path.iter_bezier():
        if bezier.degree == 0:  # MOVETO starts a new contour; it draws nothing
            continue
        pts = bezier.control_points if bezier.degree == 1 else bezier(t)
        segments.append(np.stack([pts[:-1], pts[1:]], axis=1))
    if not segments:
        raise RuntimeError(f"font {font_file.name} has no outline for {char!r}")
    return torch.from_numpy(np.concatenate(segments)).float()


def _inside(xs: Tensor, ys: Tensor, segments: Tensor) -> Tensor:
    """Non-zero winding rule (TrueType's fill rule) on the lattice xs (C,) by ys (R,): (R, C) bool.

    Casts a ray from each point to the right and adds +1 for every edge crossing it upwards and
    -1 downwards; the point is inside when the sum is not zero.
    """
    (ax, ay), (bx, by) = segments[:, 0].T, segments[:, 1].T  # each (S,)
    y = ys[:, None]  # (R, 1)
    up, down = (ay <= y) & (by > y), (by <= y) & (ay > y)  # (R, S); horizontal edges: neither
    direction = up.float() - down.float()
    dy = torch.where(by == ay, torch.ones_like(by), by - ay)  # avoid 0 / 0 on horizontal edges
    x_cross = ax + (y - ay) * (bx - ax) / dy  # where each edge meets row y (R, S)
    right = x_cross[:, None, :] > xs[None, :, None]  # (R, C, S)
    return (right * direction[:, None, :]).sum(-1) != 0


def _distance_to_segments(points: Tensor, segments: Tensor) -> Tensor:
    """Euclidean distance from each point (Q, 2) to the nearest segment (S, 2, 2); returns (Q,)."""
    px, py = points[:, :1], points[:, 1:]  # (Q, 1)
    ax, ay, bx, by = segments.reshape(-1, 4).T[:, None]  # each (1, S)
    ex, ey = bx - ax, by - ay
    dx, dy = px - ax, py - ay  # (Q, S)
    # Closest point a + t (b - a), t clamped to the segment; degenerate segments act as points.
    t = ((dx * ex + dy * ey) / (ex * ex + ey * ey).clamp_min(1e-12)).clamp_(0, 1)
    rx, ry = dx - t * ex, dy - t * ey
    return (rx * rx + ry * ry).min(dim=1).values.sqrt()


def _glyph_sdf(font_file: Path, char: str) -> tuple[Tensor, Tensor, float]:
    """Signed distance field of one glyph, scaled so its bounding box's longer side is _BOX.

    Returns:
        sdf: (_TILE * _RES, _TILE * _RES) float32, in output pixels, negative inside the glyph,
            with the centre of the glyph's bounding box at the centre of the tile.
        com: (2,) the glyph's centre of mass (x, y), pixels from the tile centre, y down.
        stroke: estimated mean stroke width in output pixels, 2 * area / perimeter (exact for a
            long stroke of constant width, whose perimeter is twice its length).
    """
    seg = _outline_segments(font_file, char)
    pts = seg.reshape(-1, 2)
    lo, hi = pts.min(0).values, pts.max(0).values
    seg = (seg - (lo + hi) / 2) * (_BOX / (hi - lo).max())
    seg[..., 1] = -seg[..., 1]  # image rows grow downwards

    c = (torch.arange(_TILE * _RES, dtype=torch.float32) + 0.5) / _RES - _TILE / 2
    inside = _inside(c, c, seg)  # (rows = y, columns = x)
    grid = torch.stack(torch.meshgrid(c, c, indexing="xy"), dim=-1)  # (R, C, 2) as (x, y)
    sdf = _distance_to_segments(grid.reshape(-1, 2), seg).reshape(inside.shape)
    sdf = torch.where(inside, -sdf, sdf)
    area = inside.sum().item() / _RES**2
    perimeter = (seg[:, 1] - seg[:, 0]).norm(dim=-1).sum().item()
    return sdf, grid[inside].mean(0), 2 * area / perimeter


@functools.lru_cache(maxsize=1)
def _glyph_bank() -> tuple[Tensor, Tensor, Tensor]:
    """All glyph SDFs stacked into one tall atlas image, tile k = font k // 10, digit k % 10.

    Returns:
        atlas: (1, 1, F * 10 * _TILE * _RES, _TILE * _RES) float32 (F font variants).
        com: (F * 10, 2) float32 centres of mass, pixels from each tile's centre.
        stroke: (F * 10,) float32 estimated stroke widths, output pixels.
    """
    tiles, coms, strokes = [], [], []
    # Thousands of small tensor ops: handing each to a thread pool costs more than it saves, and
    # on a busy machine far more (every op waits for a descheduled worker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for font in GLYPH_FONTS:
            file = _FONT_DIR / font.file
            if not file.is_file():
                raise FileNotFoundError(
                    f"glyph digits need the font {file}, shipped with matplotlib"
                )
            for digit in range(10):
                sdf, com, stroke = _glyph_sdf(file, str(digit))
                tiles.append(sdf)
                coms.append(com)
                strokes.append(stroke)
    finally:
        torch.set_num_threads(threads)
    return torch.cat(tiles)[None, None], torch.stack(coms), torch.tensor(strokes)


@functools.lru_cache(maxsize=1)
def _pixel_features() -> Tensor:
    """Per output pixel: its centre (x, y) from the image centre, then the bicubic weights that
    interpolate a k x k grid of control points at it (k = _ELASTIC). Shape (784, 2 + k * k).

    Interpolation is linear in the control values, so a displacement field is ``weights @ ctrl``.
    """
    c = torch.arange(_IMAGE, dtype=torch.float32) + 0.5 - _IMAGE / 2
    xy = torch.stack(torch.meshgrid(c, c, indexing="xy"), dim=-1).reshape(-1, 2)
    k = _ELASTIC
    one_hot = torch.eye(k * k).reshape(k * k, 1, k, k)
    weights = F.interpolate(one_hot, size=(_IMAGE, _IMAGE), mode="bicubic", align_corners=True)
    return torch.cat([xy, weights.reshape(k * k, -1).T], dim=1)


def _render_glyphs(
    tile: Tensor, matrix: Tensor, shift: Tensor, elastic: Tensor, width: Tensor, soft: Tensor
) -> Tensor:
    """Warp bank tiles and threshold them into images.

    Args:
        tile: (B,) int64 atlas tile indices.
        matrix: (B, 2, 2) forward linear map about the centre of mass, glyph -> image
            (pixels, y down).
        shift: (B, 2) forward translation, pixels.
        elastic: (B, 2, k, k) control points of a smooth displacement (glyph pixels, x then y)
            added to every pixel's source position.
        width: (B,) how far to move the outline outwards, pixels (negative thins the strokes).
        soft: (B,) width of the ink ramp, pixels (about 1 is plain anti-aliasing; more is blur).

    Returns:
        (B, 1, 28, 28) float32 in [-1, 1].
    """
    atlas, com, _ = _glyph_bank()
    b, side, height = tile.shape[0], _TILE * _RES, atlas.shape[-2]
    # Inverse warp: each output pixel p looks up where it came from in its glyph's tile,
    #   src = A^-1 (p - shift) + elastic(p) + centre of mass,
    # for all pixels of all images in one batched matrix product.
    inverse = torch.linalg.inv(matrix)
    coef = torch.cat([inverse.mT, elastic.reshape(b, 2, -1).mT], dim=1)  # (B, 2 + k*k, 2)
    offset = com[tile] - (inverse @ shift[..., None])[..., 0]  # (B, 2)
    features = _pixel_features().expand(b, -1, -1)
    src = torch.baddbmm(offset[:, None], features, coef)  # (B, 784, 2) tile pixels from centre
    # Stay inside the tile (its border is far from any ink), so no neighbour tile bleeds in.
    src.clamp_(-_TILE / 2 + 1, _TILE / 2 - 1)
    # Tile coordinates -> grid_sample's [-1, 1] over the whole atlas (align_corners=False).
    src.mul_(torch.tensor([2 / _TILE, 2 * _RES / height]))
    src[..., 1] += ((2 * tile + 1) * side / height - 1)[:, None]
    sdf = F.grid_sample(atlas, src.reshape(1, b * _IMAGE, _IMAGE, 2), align_corners=False)
    # ink = clamp(0.5 - (stretch * sdf - width) / soft, 0, 1), returned as 2 * ink - 1, where
    # stretch (the warp's mean scale) turns distances measured before warping into pixels.
    stretch = torch.linalg.det(matrix).abs().sqrt()
    bias, slope = 1 + 2 * width / soft, -2 * stretch / soft
    images = torch.addcmul(bias[:, None], sdf.reshape(b, -1), slope[:, None]).clamp_(-1, 1)
    return images.reshape(b, 1, _IMAGE, _IMAGE)


def glyph_digits(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Render ``n`` MNIST-like digits from matplotlib's fonts, randomly deformed.

    Each image picks a digit (labels are balanced: each digit appears n // 10 or n // 10 + 1
    times, in random order) and one of the 16 :data:`GLYPH_FONTS` (but not the pairs in
    :data:`GLYPH_EXCLUDED`), then draws:

    * rotation in +-12 degrees, slant (shear) in +-0.3, size 0.8-1.05 of the 20 px box,
      aspect ratio 0.8-1.2, and a shift of up to +-1.5 px of the centre of mass;
    * a smooth elastic displacement (a 4x4 grid of offsets of std 0.6 px, bicubically
      interpolated);
    * a stroke width of 1.0-2.6 px (bold fonts stay somewhat bolder: their outline is moved in by
      at most a quarter of their stroke on each side) and an edge softness of 1.0-1.8 px.

    The mean pixel is about 0.17 on a [0, 1] scale (MNIST's is 0.13). Deterministic for a given
    (n, seed). Each image costs one 28x28 bilinear resample, so 60,000 take a few seconds on one
    CPU core; the font bank is built on first use (a few seconds) and cached for the process.

    Returns:
        images: (n, 1, 28, 28) float32 in [-1, 1]; background exactly -1, the cores of all but
            the thinnest strokes exactly +1.
        labels: (n,) int64 digits 0-9.
    """
    n = _check_count(n)
    g = _generator(seed)
    _, _, stroke = _glyph_bank()
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    # A font for each image, uniform over the variants allowed for its digit.
    options = [
        [i for i, f in enumerate(GLYPH_FONTS) if (f.file, str(d)) not in GLYPH_EXCLUDED]
        for d in range(10)
    ]
    count = torch.tensor([len(o) for o in options])
    table = torch.tensor([o + o[:1] * (len(GLYPH_FONTS) - len(o)) for o in options])  # (10, F)
    font = table[labels, (torch.rand(n, generator=g) * count[labels]).long()]
    tile = font * 10 + labels

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    angle = uniform(-12, 12).deg2rad()
    slant = uniform(-0.3, 0.3)
    size, aspect = uniform(0.8, 1.05), uniform(0.8, 1.2)
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n), torch.zeros(n)
    rotate = torch.stack([cos, -sin, sin, cos], dim=1).reshape(n, 2, 2)
    shear = torch.stack([one, slant, zero, one], dim=1).reshape(n, 2, 2)  # x += slant * y
    scale = torch.diag_embed(torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], dim=1))
    matrix = rotate @ shear @ scale
    shift = uniform(-1.5, 1.5, 2)
    elastic = 0.6 * torch.randn(n, 2, _ELASTIC, _ELASTIC, generator=g)
    # A target stroke width, reached by moving the font's own outline out (or in); thin by at
    # most a quarter of the font's stroke on each side, since more would cut serif hairlines.
    target = uniform(1.0, 2.6)
    width = torch.maximum((target - stroke[tile] * size) / 2, -0.25 * stroke[tile] * size)
    soft = uniform(1.0, 1.8)

    images = torch.empty(n, 1, _IMAGE, _IMAGE)
    for i in range(0, n, _CHUNK):
        s = slice(i, i + _CHUNK)
        images[s] = _render_glyphs(tile[s], matrix[s], shift[s], elastic[s], width[s], soft[s])
    return images, labels


# ================================================================================================
# Real data sets: files, checksums, downloads
# ================================================================================================


class DatasetNotFoundError(FileNotFoundError):
    """A real data set's files are missing and were not (or could not be) downloaded."""


class ChecksumError(OSError):
    """A data file's SHA-256 digest differs from the published one."""


@dataclass(frozen=True)
class RemoteFile:
    """A published data file: its name, SHA-256 digest and download URLs (mirrors, in order)."""

    name: str
    sha256: str
    urls: tuple[str, ...]


def _files(mirrors: tuple[str, ...], table: str) -> dict[str, RemoteFile]:
    """Parse lines of "file-name sha256" into RemoteFiles, each fetched from the mirrors in turn."""
    rows = (line.split() for line in table.strip().splitlines())
    return {name: RemoteFile(name, sha, tuple(m + name for m in mirrors)) for name, sha in rows}


# SHA-256 digests of the official files, as recorded by tensorflow-datasets
# (url_checksums/mnist.txt and fashion_mnist.txt) and by torchvision (CIFAR-10 resource).
_MNIST_FILES = _files(
    (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    """
    train-images-idx3-ubyte.gz  440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609
    train-labels-idx1-ubyte.gz  3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c
    t10k-images-idx3-ubyte.gz   8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6
    t10k-labels-idx1-ubyte.gz   f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6
    """,
)
_FASHION_MNIST_FILES = _files(
    (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    """
    train-images-idx3-ubyte.gz  3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84
    train-labels-idx1-ubyte.gz  a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845
    t10k-images-idx3-ubyte.gz   346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073
    t10k-labels-idx1-ubyte.gz   67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5
    """,
)
_CIFAR10_FILES = _files(
    ("https://www.cs.toronto.edu/~kriz/",),
    "cifar-10-python.tar.gz  6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)

#: data set name -> its published files (tests may patch the digests of files they write).
_REMOTE_FILES: dict[str, dict[str, RemoteFile]] = {
    "mnist": _MNIST_FILES,
    "fashion-mnist": _FASHION_MNIST_FILES,
    "cifar10": _CIFAR10_FILES,
}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of the real data sets.

    ``root`` if given, else the ``DDPM_TEACH_DATA`` environment variable, else
    ``~/.cache/ddpm_teach``. Each data set has its own sub-folder there, named as in
    :data:`DATASETS`.
    """
    if root is None:
        root = os.environ.get("DDPM_TEACH_DATA") or Path.home() / ".cache" / "ddpm_teach"
    return Path(root).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: SHA-256 mismatch, expected {expected}, got {actual}. The file is corrupt or "
            "not the official one; delete it and download it again."
        )


def _download(file: RemoteFile, folder: Path) -> list[str]:
    """Fetch ``file`` into ``folder``, trying each mirror; returns the errors of failed mirrors.

    The bytes go to a temporary file in the same folder and are hashed on the way; only a file
    with the right digest is renamed into place (atomically), so a broken download never leaves
    a half-written file under the real name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in file.urls:
        print(f"downloading {url} -> {folder / file.name}", file=sys.stderr)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                for block in iter(lambda r=response: r.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != file.sha256:
                raise ChecksumError(
                    f"{file.name} downloaded from {url}: SHA-256 mismatch, expected "
                    f"{file.sha256}, got {digest.hexdigest()}; the file was discarded."
                )
            os.replace(tmp, folder / file.name)
            return []
        except ChecksumError:
            raise
        except OSError as error:  # urllib's URLError and HTTPError, timeouts, a full disk
            errors.append(f"{url}: {error}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return errors


def _missing_error(
    dataset: str, folder: Path, missing: list[RemoteFile], errors: list[str], loader: str
) -> DatasetNotFoundError:
    lines = [f"{dataset}: these files are not in {folder}:"]
    lines += [f"  {f.name}  from {f.urls[0]}  (sha256 {f.sha256})" for f in missing]
    if errors:
        lines.append("Downloading failed:")
        lines += [f"  {e}" for e in errors]
    lines.append(
        f"Put them in {folder} (as downloaded), or call {loader}(download=True) to fetch them, or "
        "pass root= / set DDPM_TEACH_DATA to a folder whose sub-folder holds them."
    )
    return DatasetNotFoundError("\n".join(lines))


def _fetch(
    key: str,
    names: list[str],
    root: str | os.PathLike[str] | None,
    download: bool,
    verify: bool,
    loader: str,
    extracted: list[str] | None = None,
) -> tuple[Path, dict[str, Path]]:
    """Find (or download) the named files of data set ``key``; returns its folder and the paths.

    A file counts as present under its published name, or, for ``.gz`` files, also gunzipped
    (without ``.gz``; not checksummed, since the published digests are of the archives).
    ``extracted`` names files whose presence makes the archives unnecessary (CIFAR-10's folder).
    """
    folder = data_root(root) / key
    if extracted is not None and all((folder / e).is_file() for e in extracted):
        return folder, {}
    table = _REMOTE_FILES[key]
    found: dict[str, Path] = {}
    for name in names:
        raw = folder / name.removesuffix(".gz")
        if (folder / name).is_file():
            found[name] = folder / name
        elif name.endswith(".gz") and raw.is_file():
            found[name] = raw
    missing = [table[name] for name in names if name not in found]
    errors: list[str] = []
    if missing and download:
        for file in missing:
            errors += _download(file, folder)
            if (folder / file.name).is_file():
                found[file.name] = folder / file.name
        missing = [table[name] for name in names if name not in found]
    if missing:
        raise _missing_error(key, folder, missing, errors, loader)
    if verify:
        for name, path in found.items():
            if path.name == name:  # an archive as published
                _verify(path, table[name].sha256)
    return folder, found


# ------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ------------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip'd or raw, into a native-endian numpy array.

    The header is big-endian: two zero bytes, a type code (0x08 = unsigned byte, ...), the number
    of dimensions d, then d uint32 sizes; the data follows in C order.

    Args:
        path: the file; gzip compression is detected from its first bytes, not its name.
        expected_magic: if given, the first four bytes read as a big-endian int must equal it
            (:data:`IDX_IMAGES_MAGIC` = 2051 for image files, :data:`IDX_LABELS_MAGIC` = 2049).
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt download
            raise ValueError(
                f"{path}: not a complete gzip file ({err}); delete it and download it again"
            ) from None
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path}: IDX magic number {magic:#010x} ({magic}), expected {expected_magic:#010x} "
            f"({expected_magic}); is this the right file?"
        )
    if data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (header {data[:4].hex()})")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(
            f"{path}: IDX header promises {ndim} dimensions, file has {len(data)} bytes"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected_bytes = offset + math.prod(shape) * dtype.itemsize
    if len(data) != expected_bytes:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected_bytes} bytes), file has {len(data)}"
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _to_unit_range(images: np.ndarray) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def _load_idx_set(
    key: str,
    root: str | os.PathLike[str] | None,
    train: bool,
    download: bool,
    verify: bool,
    loader: str,
) -> tuple[Tensor, Tensor]:
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    _, paths = _fetch(key, names, root, download, verify, loader)
    images = read_idx(paths[names[0]], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[names[1]], IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(
            f"{key}: expected images (N, 28, 28) and N labels, "
            f"got {images.shape} and {labels.shape}"
        )
    return _to_unit_range(images)[:, None], torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    verify: bool = True,
) -> tuple[Tensor, Tensor]:
    """MNIST from its official IDX files in ``<root>/mnist/`` (see :func:`data_root`).

    Args:
        root: cache folder; the files live in its ``mnist`` sub-folder.
        train: the 60,000 training images, else the 10,000 test images.
        download: fetch missing files (about 11 MB) and check their SHA-256.
        verify: check the SHA-256 of the ``.gz`` files found (gunzipped files are not checked).

    Returns:
        images (N, 1, 28, 28) float32 in [-1, 1] and labels (N,) int64.
    """
    return _load_idx_set("mnist", root, train, download, verify, "load_mnist")


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    verify: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (Zalando) from ``<root>/fashion-mnist/``; arguments as :func:`load_mnist`."""
    return _load_idx_set("fashion-mnist", root, train, download, verify, "load_fashion_mnist")


# ------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# ------------------------------------------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
CIFAR_BATCH_SIZE = 10_000  # images in every published batch file


class _NotData(pickle.UnpicklingError):
    """A pickle that names a class or function beyond plain data: refused, never run."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists and numpy arrays, nothing else: a pickle can run arbitrary code."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store bytes
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise _NotData(f"CIFAR batch refers to {module}.{name}, which is not data")
        return super().find_class(module, name)


def _read_cifar_batch(f: io.IOBase, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    except _NotData:
        raise
    except (EOFError, pickle.UnpicklingError, OSError, tarfile.TarError) as err:  # cut short
        raise ValueError(
            f"{name}: not a complete CIFAR-10 batch ({type(err).__name__}: {err}); delete the "
            "extracted folder or the archive and extract or download it again"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{name}: expected a CIFAR-10 batch, a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{name}: expected data (N, 3072) and N labels, got {data.shape}")
    # Checked before the casts, which would wrap a 256 to 0 or a 10.0 to a class that is not one.
    if data.dtype != np.uint8 and (
        not np.issubdtype(data.dtype, np.integer)
        or (data.size and (data.min() < 0 or data.max() > 255))
    ):
        raise ValueError(f"{name}: expected pixel values 0..255 (uint8), got dtype {data.dtype}")
    if labels.size and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9
    ):
        raise ValueError(
            f"{name}: expected labels 0..9, got {labels.dtype} values {labels.min()}..{labels.max()}"
        )
    return data.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False)


def load_cifar10(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    download: bool = False,
    verify: bool = True,
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from the official python archive, in ``<root>/cifar10/`` (see :func:`data_root`).

    Reads ``cifar-10-batches-py/`` if it has been extracted there, else straight from
    ``cifar-10-python.tar.gz`` (163 MB). Unless ``verify=False``, the archive's SHA-256 is
    checked, or, for an extracted folder (whose files have no published digests), that every
    batch holds the published 10,000 images: a batch cut short by a copy that stopped early
    but still unpickles would otherwise train on a silently smaller data set.

    Returns:
        images (N, 3, 32, 32) float32 in [-1, 1] (RGB) and labels (N,) int64, N = 50,000 for
        ``train`` else 10,000.
    """
    names = _CIFAR_TRAIN if train else _CIFAR_TEST
    archive = "cifar-10-python.tar.gz"
    extracted = [f"{_CIFAR_DIR}/{b}" for b in names]
    folder, paths = _fetch("cifar10", [archive], root, download, verify, "load_cifar10", extracted)
    found = {}
    if not paths:
        for member in extracted:
            with open(folder / member, "rb") as f:
                found[member] = _read_cifar_batch(f, str(folder / member))
            n = len(found[member][1])
            if verify and n != CIFAR_BATCH_SIZE:
                raise ValueError(
                    f"{folder / member}: expected the published {CIFAR_BATCH_SIZE:,} images, "
                    f"got {n:,}; delete the folder {folder / _CIFAR_DIR} and extract the archive "
                    "again (or pass verify=False for batch files of your own)"
                )
    else:
        # One pass in archive order: a .tar.gz cannot seek backwards without decompressing again.
        with tarfile.open(paths[archive], "r:gz") as tar:
            for info in tar:
                f = tar.extractfile(info) if info.name in extracted else None
                if f is not None:
                    found[info.name] = _read_cifar_batch(f, f"{paths[archive]}:{info.name}")
        if len(found) < len(extracted):
            lacking = sorted(set(extracted) - found.keys())
            raise ValueError(f"{paths[archive]}: the archive lacks {lacking}")
    batches = [found[member] for member in extracted]
    data = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32)  # channel planes R, G, B
    return _to_unit_range(data), torch.from_numpy(np.concatenate([lab for _, lab in batches]))


# ================================================================================================
# One entry point
# ================================================================================================


def is_image_dataset(name: str) -> bool:
    """True for the image sets of :data:`DATASETS`, False for the 2-D toys."""
    if name not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {DATASETS}")
    return name in IMAGE_DATASETS


def load_dataset(
    name: str,
    n: int | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Any data set of :data:`DATASETS` by name, ready for a ``TensorDataset``.

    Args:
        name: a toy ("eight-gaussians", "swiss-roll", "moons", "checkerboard") or an image set
            ("glyph-digits", "mnist", "fashion-mnist", "cifar10"; the real ones' training splits).
        n: how many examples. None: 100,000 toy points, 60,000 glyph digits, or every image of a
            real set. For a real set, a smaller ``n`` is a random subset chosen by ``seed``.
        seed: seed for generated data and for subset selection.
        root, download: where real data sets are cached, and whether to fetch them (see
            :func:`data_root`, :func:`load_mnist`).

    Returns:
        (x, labels): toy data (n, 2) with labels None, or images (n, C, H, W) in [-1, 1] with
        int64 labels (n,).
    """
    is_image_dataset(name)  # validates the name
    if n is not None:
        n = _check_count(n)
    if name in TOY_DATASETS:
        return toy_2d(name, TOY_DEFAULT_N if n is None else n, seed), None
    if name == "glyph-digits":
        return glyph_digits(GLYPH_DEFAULT_N if n is None else n, seed)
    loader = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
    images, labels = loader[name](root=root, train=True, download=download)
    if n is None:
        return images, labels
    if n > len(images):
        raise ValueError(f"n: {name} has {len(images)} training images, asked for {n}")
    keep = torch.randperm(len(images), generator=_generator(seed))[:n]
    return images[keep], labels[keep]


if __name__ == "__main__":  # python -m ddpm_teach.data [PNG]: time the renderer, save a preview
    import time

    start = time.perf_counter()
    _glyph_bank()
    print(f"glyph bank: {time.perf_counter() - start:.2f} s", file=sys.stderr)
    for count in (10_000, 60_000):
        start = time.perf_counter()
        glyph_digits(count)
        print(f"glyph_digits({count}): {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if len(sys.argv) > 1:
        import matplotlib.pyplot as plt

        images, labels = glyph_digits(160, seed=1)
        order = torch.argsort(labels, stable=True).reshape(10, 16)  # one row per digit
        grid = images[order, 0].permute(0, 2, 1, 3).reshape(10 * 28, 16 * 28)
        grid = grid.repeat_interleave(2, 0).repeat_interleave(2, 1)  # 2x, pixels kept sharp
        plt.imsave(sys.argv[1], grid.numpy(), cmap="gray", vmin=-1, vmax=1)
