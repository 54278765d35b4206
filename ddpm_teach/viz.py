"""Pictures of diffusion: image grids, 2-D scatter plots, and sliders over the step t.

The forward process (eq. 4 of Ho et al. 2020) is easiest to understand by watching it:

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps

as t runs from 0 to T-1 the data fades and the noise takes over. This module turns a stack of
frames x_t (images (B, C, H, W) or 2-D points (B, 2)) into

    image_grid / show_images / show_points    one picture of one batch
    frames_slider                             a Play button and a slider over t, for any frames
    forward_slider                            ... for the frames of q(x_t | x_0), one noise draw
    compare_schedules_slider                  ... for two schedules side by side, one slider
    save_gif / filmstrip                      the same frames as an animation or for print
    plot_schedules                            alpha_bar_t and log-SNR against t

How the slider works. Every frame is rendered once, to PNG bytes, when the slider is built. In
JupyterLab (ipywidgets 8) each frame is an ``Image`` widget inside a ``Stack``; the stack's
``selected_index`` is linked in the browser (``jslink``) to the slider, which is linked to a
``Play`` button. Moving the slider therefore runs no Python at all: it plays with the kernel gone,
in a notebook saved with its widget state (``jupyter nbconvert --execute`` stores it; in
JupyterLab, Settings > Save Widget State Automatically) and on the static HTML made from it. ipywidgets 7 (Colab) has no ``Stack``, so there
a single ``Image`` is swapped by a kernel-side ``observe`` callback, which needs the kernel. Either
way the displayed output also carries a static filmstrip PNG (``image/png``) and a short, stable
``text/plain``, for viewers without widgets (GitHub, nbconvert to Markdown) and for ``nbval``,
which compares the text but not the PNG.

Functions that return a matplotlib ``Figure`` build it without pyplot, so it is shown once when it
is the last value of a cell and never leaks; functions that take ``ax=`` draw into it (or into a
new pyplot figure when it is omitted) and return the axes.
"""

from __future__ import annotations

import base64
import html
import io
import math
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = [
    "KINDS",
    "FrameSlider",
    "caption",
    "compare_schedules_slider",
    "filmstrip",
    "forward_frames",
    "forward_slider",
    "frames_slider",
    "image_grid",
    "plot_schedules",
    "save_gif",
    "show_images",
    "show_points",
]

#: What a batch can be drawn as: "auto" picks "image" for (B, C, H, W) and "points" for (B, 2).
KINDS = ("auto", "image", "points")

ArrayLike = Tensor | np.ndarray
Frames = ArrayLike | Sequence[ArrayLike]

_TARGET_PX = 256  # frames are enlarged (nearest neighbour) until about this many pixels across


# ---------------------------------------------------------------------------- input checks
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """A float32 numpy copy of a tensor or array, rejecting NaN/inf with a clear message."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    elif isinstance(x, np.ndarray):
        x = x.astype(np.float32)
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf, which cannot be drawn")
    return x


def _resolve_kind(shape: tuple[int, ...], kind: str, name: str) -> str:
    """Check that a batch of this shape can be drawn as ``kind`` and return "image" or "points"."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    is_image = len(shape) == 4 and shape[1] in (1, 3)
    is_points = len(shape) == 2 and shape[1] == 2
    if kind == "auto":
        kind = "image" if is_image else "points" if is_points else "unknown"
    if kind == "image" and not is_image:
        raise ValueError(
            f"{name}: expected images of shape (B, C, H, W) with C = 1 or 3, got {shape}"
        )
    if kind == "points" and not is_points:
        raise ValueError(f"{name}: expected 2-D points of shape (B, 2), got {shape}")
    if kind == "unknown":
        raise ValueError(
            f"{name}: expected images (B, C, H, W) with C = 1 or 3 or 2-D points (B, 2), "
            f"got shape {shape}"
        )
    return kind


def _frame_list(frames: Frames, name: str) -> list[np.ndarray]:
    """Split (F, B, ...) or a sequence of F tensors (B, ...) into F numpy arrays of one shape."""
    if isinstance(frames, Tensor | np.ndarray):
        if frames.ndim < 2:
            raise ValueError(
                f"{name}: expected a stack (F, B, ...), got shape {tuple(frames.shape)}"
            )
        frames = list(frames)
    if not isinstance(frames, Sequence) or len(frames) == 0:
        raise ValueError(f"{name}: expected a non-empty stack (F, B, ...) or sequence of batches")
    out = [_to_numpy(f, f"{name}[{i}]") for i, f in enumerate(frames)]
    for i, f in enumerate(out):
        if f.shape != out[0].shape:
            raise ValueError(
                f"{name}: every frame must have the same shape; frame 0 is {out[0].shape}, "
                f"frame {i} is {f.shape}"
            )
    return out


def _check_ts(
    ts: Sequence[int | None], num_frames: int | None, schedule: NoiseSchedule | None
) -> list[int | None]:
    """Validate one step index (or None for the clean data) per frame (any number if None)."""
    if isinstance(ts, str | bytes) or not isinstance(ts, Sequence | Tensor | np.ndarray):
        raise TypeError(f"ts: expected a sequence of step indices, got {type(ts).__name__}")
    if num_frames is not None and len(ts) != num_frames:
        raise ValueError(f"ts: expected one step per frame ({num_frames}), got {len(ts)}")
    out: list[int | None] = []
    for t in ts:
        if t is None:
            out.append(None)
            continue
        if isinstance(t, bool | float):
            raise TypeError(f"ts: expected ints (or None for the data), got {t!r}")
        t = operator.index(t.item() if isinstance(t, Tensor | np.generic) else t)
        limit = schedule.num_steps if schedule is not None else None
        if t < -1 or (limit is not None and t >= limit):
            raise ValueError(
                f"ts: step indices must lie in 0..{'T-1' if limit is None else limit - 1} "
                f"(or -1 for a sampler's final x_0, None for the data), got {t}"
            )
        out.append(t)
    return out


# ---------------------------------------------------------------------------- one batch
def image_grid(
    images: ArrayLike, nrow: int | None = None, pad: int = 2, pad_value: float = 1.0
) -> np.ndarray:
    """Tile a batch of images into one picture.

    Args:
        images: (N, C, H, W) with C = 1 or 3, values in [-1, 1] (the model's data range);
            values outside are clipped, so noisy x_t saturate rather than wrap.
        nrow: images per row (at most N); default ceil(sqrt(N)), a near-square grid.
        pad: pixels of border around and between images.
        pad_value: colour of the border, in the same [-1, 1] units (1 = white).
    Returns:
        uint8 array (H', W', C) with H' = rows*H + (rows+1)*pad, W' = n*W + (n+1)*pad for
        n = min(nrow, N) images per row;
        -1 maps to 0 and 1 to 255.
    """
    x = _to_numpy(images, "images")
    _resolve_kind(x.shape, "image", "images")
    n, c, h, w = x.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow: expected a positive int (images per row), got {nrow!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad: expected a non-negative int (pixels), got {pad!r}")
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = np.full((rows * h + (rows + 1) * pad, nrow * w + (nrow + 1) * pad, c), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    # [-1, 1] -> [0, 255], rounding half up so that 0 lands on 128.
    return np.floor((np.clip(grid, -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8)


def _new_axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt  # only here: pyplot picks a backend when imported

    return plt.subplots(figsize=(4, 4))[1]


def show_images(
    images: ArrayLike, nrow: int | None = None, title: str | None = None, ax: Axes | None = None
) -> Axes:
    """Draw a batch of images (N, C, H, W) in [-1, 1] as one grid (see :func:`image_grid`)."""
    ax = _new_axes(ax)
    grid = image_grid(images, nrow=nrow)
    if grid.shape[2] == 1:
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def show_points(
    points: ArrayLike,
    lim: float = 3.0,
    title: str | None = None,
    ax: Axes | None = None,
    size: float = 4.0,
    color: str = "C0",
) -> Axes:
    """Scatter a batch of 2-D points (N, 2) on fixed, square axes [-lim, lim]^2.

    Fixed limits matter: with autoscaling every frame of the forward process would look alike,
    because the axes would grow with the noise.
    """
    x = _to_numpy(points, "points")
    _resolve_kind(x.shape, "points", "points")
    if not lim > 0:
        raise ValueError(f"lim: expected a positive half-width of the axes, got {lim!r}")
    ax = _new_axes(ax)
    ax.scatter(x[:, 0], x[:, 1], s=size, alpha=0.5, color=color, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    if title is not None:
        ax.set_title(title)
    return ax


def _points_lim(frames: Sequence[np.ndarray]) -> float:
    """One axis half-width for all frames: the 99.5% quantile of |x| plus 5%, rounded up to 0.5."""
    q = max(float(np.quantile(np.abs(f), 0.995)) for f in frames)
    return max(1.0, math.ceil(q * 1.05 * 2) / 2)


# ---------------------------------------------------------------------------- captions
def caption(t: int | None, schedule: NoiseSchedule | None = None) -> str:
    """The line under a frame: "t = 250   alpha_bar_t = 0.5214   SNR = 1.09" (linear, T = 1000).

    ``t`` is the code's step index 0..T-1 (the paper's t + 1); ``None`` is the clean data x_0 and
    -1 the x_0 a sampler ends on (as in ``Trajectory.timesteps``). Without a schedule only t is shown.
    """
    if t is None:
        return "x_0 = data (no noise)"
    if t == -1:
        return "x_0 = sample (no noise left)"
    if schedule is None:
        return f"t = {t}"
    t = int(schedule.check_t(t)[0])
    alpha_bar = float(schedule.alpha_bars[t])
    digits = 4 if alpha_bar < 0.9995 else 6  # so that 0.99997 does not print as 1
    return f"t = {t}   alpha_bar_t = {alpha_bar:.{digits}g}   SNR = {float(schedule.snr(t)[0]):.3g}"


def _label(t: int | None) -> str:
    """The slider readout: the step index, "data" for the clean data, "x_0" for a final sample."""
    return "data" if t is None else "x_0" if t == -1 else str(t)


# ---------------------------------------------------------------------------- rendering
def _render(frames: Sequence[np.ndarray], kind: str, lim: float | None) -> list[Image.Image]:
    """Render every frame once, at its native size: L/RGB image grids or RGB scatter plots."""
    if kind == "image":
        grids = [image_grid(f) for f in frames]
        return [Image.fromarray(g[:, :, 0] if g.shape[2] == 1 else g) for g in grids]
    # Points: draw the empty axes once, then per frame paste that background back and draw only
    # the dots (blitting: 4x faster than redrawing the figure). 64 colours lose nothing visible
    # and halve the PNG.
    lim = lim if lim is not None else _points_lim(frames)
    dpi = 80
    fig = Figure(figsize=(_TARGET_PX / dpi, _TARGET_PX / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.08, 0.87, 0.87))
    show_points(frames[0], lim=lim, ax=ax)
    ax.tick_params(labelsize=7)
    dots = ax.collections[0]
    dots.set_visible(False)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    dots.set_visible(True)
    out = []
    for f in frames:
        canvas.restore_region(background)
        dots.set_offsets(f)
        ax.draw_artist(dots)
        out.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[:, :, :3]).quantize(64))
    return out


def _scale(img: Image.Image, scale: int | None) -> int:
    """Integer enlargement for display: given, or enough to make a small grid ~256 px across."""
    if scale is None:
        return min(8, max(1, math.ceil(_TARGET_PX / max(img.size))))
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale: expected a positive int (enlargement factor), got {scale!r}")
    return scale


def _enlarge(img: Image.Image, scale: int) -> Image.Image:
    if scale == 1:
        return img
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _captioned(images: Sequence[Image.Image], texts: Sequence[str], size: int = 12) -> list:
    """Each image with its text above it on white; all outputs have one size (a GIF needs that).

    Captions too wide for the image are broken at their triple spaces, all of them or none.
    """
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pairs = zip(images, texts, strict=True)
    too_wide = any(probe.textlength(t, font=font) > im.width - 4 for im, t in pairs)
    lines = [t.split("   ") if too_wide else [t] for t in texts]
    top = max(map(len, lines)) * (size + 3) + 4
    out = []
    for im, text_lines in zip(images, lines, strict=True):
        cell = Image.new("RGB", (im.width, im.height + top), "white")
        draw = ImageDraw.Draw(cell)
        for i, line in enumerate(text_lines):
            draw.text((2, 2 + i * (size + 3)), line, fill="black", font=font)
        cell.paste(im.convert("RGB"), (0, top))
        out.append(cell)
    return out


def _pick(num_frames: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over 0..num_frames-1, first and last included."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int (frames to show), got {n!r}")
    if n >= num_frames:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / max(n - 1, 1)) for i in range(n)})


# ---------------------------------------------------------------------------- the slider
def _ipywidgets_major() -> int:
    """Major version of ipywidgets: 8 in JupyterLab 4, 7 on Colab (which lacks ``Stack``)."""
    return int(widgets.__version__.split(".")[0])


# Frames are stored at native size and enlarged by the browser; this keeps pixels square and sharp
# (the default smoothing blurs a 28x28 digit). It rides along in every caption because a Stack
# shows only its selected page.
_PIXELATED = "<style>img.ddpm-frame { image-rendering: pixelated; }</style>"


def _caption_html(text: str) -> str:
    # white-space: pre keeps the aligned triple spaces of the caption.
    return (
        f'{_PIXELATED}<div class="ddpm-caption" style="font-family: monospace; white-space: pre">'
        f"{html.escape(text)}</div>"
    )


class FrameSlider(widgets.VBox):
    """A Play button and a slider over frames, each frame pre-rendered; one or more panels.

    Built by :func:`frames_slider` (and hence :func:`forward_slider`); not usually made by hand.

    Attributes:
        play: the ``Play`` widget (value = frame index).
        slider: a ``SelectionSlider`` whose ``index`` is the frame index and whose readout shows t.
        stack: (ipywidgets 8) the ``Stack`` of frames, ``selected_index`` linked to the slider.
        images, captions: (ipywidgets 7) the one ``Image`` / ``HTML`` per panel that the kernel
            swaps; ``None`` on the browser-side path.
        links: the ``jslink`` objects (front-end links, no kernel involved).
        pngs: pngs[f][p] is the PNG of frame f in panel p (native size); texts[f][p] its caption.
        scale: how much the browser enlarges each PNG (all frames share one size).
        browser_side: True when moving the slider runs in the browser alone.
    """

    def __init__(
        self,
        pngs: list[list[bytes]],
        texts: list[list[str]],
        labels: list[str],
        titles: Sequence[str] = ("",),
        fps: float = 10.0,
        heading: str | None = None,
        scale: int = 1,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps: expected a positive number of frames per second, got {fps!r}")
        n = len(labels)
        self.pngs, self.texts, self.labels, self.titles = pngs, texts, labels, list(titles)
        self.scale = scale
        self._size = Image.open(io.BytesIO(pngs[0][0])).size
        # Every widget is a model in the saved notebook, and each would bring its own Layout (and
        # Style) model; frames share one of each, which roughly halves the stored widget state.
        self._layout = widgets.Layout()
        self._html_style = widgets.HTML().style
        self.play = widgets.Play(value=0, min=0, max=n - 1, step=1, interval=round(1000 / fps))
        self.slider = widgets.SelectionSlider(
            options=[(label, i) for i, label in enumerate(labels)],
            index=0,
            description="t",
            continuous_update=True,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="460px"),
        )
        self.links = [widgets.jslink((self.play, "value"), (self.slider, "index"))]
        self.browser_side = _ipywidgets_major() >= 8
        self.stack: Any = None
        self.images: list[widgets.Image] | None = None
        self.captions: list[widgets.HTML] | None = None
        if self.browser_side:
            pages = [self._page([self._image(p) for p in pngs[f]], texts[f]) for f in range(n)]
            self.stack = widgets.Stack(pages, selected_index=0)
            self.links.append(
                widgets.jslink((self.slider, "index"), (self.stack, "selected_index"))
            )
            view = self.stack
        else:
            self.images = [self._image(p) for p in pngs[0]]
            self.captions = []
            view = self._page(self.images, texts[0], self.captions)
            self.slider.observe(self._on_index, names="index")
        top = [widgets.HTML(f"<b>{html.escape(heading)}</b>")] if heading else []
        super().__init__([*top, widgets.HBox([self.play, self.slider]), view])

    def _image(self, png: bytes) -> widgets.Image:
        w, h = self._size
        image = widgets.Image(
            value=png,
            format="png",
            width=str(w * self.scale),
            height=str(h * self.scale),
            layout=self._layout,
        )
        image.add_class("ddpm-frame")  # enlarged without smoothing, see _PIXELATED
        return image

    def _page(
        self, images: list[widgets.Image], texts: list[str], keep: list | None = None
    ) -> widgets.Box:
        """One frame: a panel (title, picture, caption), or a row of them.

        Every widget here is a model in the saved notebook, 50 frames over, so none is spare.
        """
        shared = {"layout": self._layout, "style": self._html_style}
        panels = []
        for image, text, title in zip(images, texts, self.titles, strict=True):
            cap = widgets.HTML(_caption_html(text), **shared)
            if keep is not None:
                keep.append(cap)
            head = [widgets.HTML(f"<b>{html.escape(title)}</b>", **shared)] if title else []
            panels.append(widgets.VBox([*head, image, cap], layout=self._layout))
        return panels[0] if len(panels) == 1 else widgets.HBox(panels, layout=self._layout)

    def _on_index(self, change: dict) -> None:
        """ipywidgets 7 path: swap the pictures' bytes and captions (nothing is re-rendered)."""
        f = change["new"]
        for p, (image, cap) in enumerate(zip(self.images, self.captions, strict=True)):
            image.value = self.pngs[f][p]
            cap.value = _caption_html(self.texts[f][p])

    @property
    def num_frames(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"<slider over t: {self.num_frames} frames>"

    def filmstrip_png(self, n: int = 8) -> bytes:
        """A static PNG of ``n`` frames spread over the slider: one row per panel, captioned.

        Kept small, since it is stored in the notebook next to the widget: frames are enlarged
        only to about 128 px and the sheet is reduced to 256 colours.
        """
        cols = _pick(self.num_frames, n)
        scale = min(self.scale, max(1, math.ceil(128 / max(self._size))))
        images, texts = [], []
        for p, title in enumerate(self.titles):
            for f in cols:
                images.append(_enlarge(Image.open(io.BytesIO(self.pngs[f][p])), scale))
                texts.append(f"{title}   {self.texts[f][p]}" if title else self.texts[f][p])
        cells = _captioned(images, texts, 11)
        w, h = cells[0].size
        sheet = Image.new("RGB", (len(cols) * (w + 4) - 4, len(self.titles) * (h + 4) - 4), "white")
        for i, cell in enumerate(cells):
            row, col = divmod(i, len(cols))
            sheet.paste(cell, (col * (w + 4), row * (h + 4)))
        return _png(sheet.quantize(256))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view, plus a filmstrip PNG and a stable text for viewers without widgets.

        Front ends that render widgets (JupyterLab, nbconvert HTML with saved widget state)
        prefer the widget mimetype; GitHub and nbconvert to Markdown fall back to the PNG.
        """
        base = getattr(super(), "_repr_mimebundle_", None)  # ipywidgets 7 displays otherwise
        data = dict(base(**kwargs) or {}) if base is not None else {}
        data["text/plain"] = repr(self)
        data["image/png"] = base64.b64encode(self.filmstrip_png()).decode("ascii")
        return data


def frames_slider(
    frames: Frames | Mapping[str, Frames],
    ts: Sequence[int | None],
    schedule: NoiseSchedule | Mapping[str, NoiseSchedule] | None = None,
    *,
    kind: str = "auto",
    fps: float = 10.0,
    lim: float | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> FrameSlider:
    """A slider over precomputed frames, e.g. a reverse trajectory or x_0-predictions along t.

    Args:
        frames: a stack (F, B, ...) or a sequence of F batches (B, ...), each batch images
            (B, C, H, W) in [-1, 1] or 2-D points (B, 2). A mapping name -> stack shows several
            panels side by side, driven by the one slider (e.g. forward vs reverse).
        ts: the step index (0..T-1) of each frame, F entries; ``None`` marks the clean data x_0
            and -1 the x_0 a sampler ends on. A reverse trajectory x_T, ..., x_1, x_0 is
            ``[T-1, ..., 0, -1]``, as in ``Trajectory.timesteps``.
        schedule: adds alpha_bar_t and the SNR to the captions; a mapping gives each panel its
            own schedule (same keys as ``frames``).
        kind: "auto", "image" or "points" (see :data:`KINDS`).
        fps: frames per second of the Play button.
        lim: half-width of the fixed axes for points; default from the data (all frames).
        scale: integer enlargement of image frames; default so a frame is about 256 px.
        title: a heading above the slider.
    Returns:
        a :class:`FrameSlider` widget; display it (last line of a cell) to play it.
    """
    panels = dict(frames) if isinstance(frames, Mapping) else {"": frames}
    if not panels:
        raise ValueError("frames: expected at least one panel, got an empty mapping")
    if isinstance(schedule, Mapping):
        if set(schedule) != set(panels):
            raise ValueError(
                f"schedule: a mapping must have the keys of frames {sorted(panels)}, "
                f"got {sorted(schedule)}"
            )
        schedules = dict(schedule)
    else:
        schedules = dict.fromkeys(panels, schedule)
    stacks = {
        name: _frame_list(f, f"frames[{name!r}]" if name else "frames")
        for name, f in panels.items()
    }
    counts = {len(s) for s in stacks.values()}
    if len(counts) != 1:
        raise ValueError(f"frames: every panel needs the same number of frames, got {counts}")
    num_frames = counts.pop()
    kinds = {
        name: _resolve_kind(s[0].shape, kind, f"frames[{name!r}]" if name else "frames")
        for name, s in stacks.items()
    }
    if len(set(kinds.values())) != 1:
        raise ValueError(
            f"frames: every panel must hold the same kind of data (images or 2-D points), got "
            f"{kinds}"
        )
    kind = next(iter(kinds.values()))
    if kind == "points" and lim is None:
        lim = _points_lim([f for s in stacks.values() for f in s])  # shared by all panels
    checked = {name: _check_ts(ts, num_frames, schedules[name]) for name in panels}
    ts = next(iter(checked.values()))
    rendered = {name: _render(s, kind, lim) for name, s in stacks.items()}
    names = list(panels)
    scale = _scale(rendered[names[0]][0], scale)
    pngs = [[_png(rendered[name][f]) for name in names] for f in range(num_frames)]
    texts = [[caption(ts[f], schedules[name]) for name in names] for f in range(num_frames)]
    labels = [_label(t) for t in ts]
    return FrameSlider(pngs, texts, labels, names, fps=fps, heading=title, scale=scale)


def _spread_ts(num_steps: int, n: int) -> list[int]:
    """``n`` step indices spread evenly over 0..num_steps-1, both ends included, no repeats."""
    return _pick(num_steps, n)


def forward_frames(
    x0: ArrayLike,
    schedule: NoiseSchedule,
    ts: Sequence[int] | None = None,
    num_frames: int = 50,
    seed: int = 0,
    include_data: bool = True,
) -> tuple[Tensor, list[int | None]]:
    """Frames of the forward process: x_t = q_sample(x_0, t, eps) for one fixed noise draw eps.

    Because the same eps is used at every t, each frame is an exact sample of q(x_t | x_0)
    (eq. 4), and moving along t slides each x_t smoothly from x_0 towards eps; the frames are not
    one sample path of the Markov chain (eq. 2), whose noise would differ step to step.

    Args:
        x0: clean data (B, ...), images in [-1, 1] or 2-D points.
        ts: the step indices; default ``num_frames - 1`` of them (``num_frames`` without the
            data frame) spread evenly over 0..T-1, from 0 to T-1 whenever there are two or more.
        seed: seeds the noise draw, so the same call gives the same frames.
        include_data: put the clean data first, with t = None ("data").
    Returns:
        (frames (F, B, ...) float32, ts: F step indices with None for the data frame).
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")
    x0 = torch.as_tensor(_to_numpy(x0, "x0"))
    if x0.ndim < 2:
        raise ValueError(f"x0: expected a batch (B, ...), got shape {tuple(x0.shape)}")
    if ts is None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"num_frames: expected an int >= 2, got {num_frames!r}")
        ts = _spread_ts(schedule.num_steps, num_frames - 1 if include_data else num_frames)
    steps = [t for t in _check_ts(ts, None, schedule) if t is not None]
    if not steps:
        raise ValueError("ts: expected at least one step index")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    frames = [schedule.q_sample(x0, t, noise) for t in steps]
    labels: list[int | None] = list(steps)
    if include_data:
        frames, labels = [x0, *frames], [None, *labels]
    return torch.stack(frames), labels


def forward_slider(
    x0: ArrayLike,
    schedule: NoiseSchedule,
    ts: Sequence[int] | None = None,
    num_frames: int = 50,
    seed: int = 0,
    kind: str = "auto",
    *,
    fps: float = 10.0,
    lim: float | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> FrameSlider:
    """Watch q(x_t | x_0) (eq. 4): a slider over t from the clean data to (almost) pure noise.

    The first frame is the data x_0 ("data"), then x_t at ``num_frames - 1`` steps spread over
    0..T-1 (or at ``ts``), all with one noise draw (see :func:`forward_frames`). Each caption
    reads like "t = 250   alpha_bar_t = 0.5214   SNR = 1.09".

    Args:
        x0: images (B, C, H, W) in [-1, 1] or 2-D points (B, 2).
        schedule: the noise schedule; ts are its step indices 0..T-1.
        kind, fps, lim, scale, title: as for :func:`frames_slider`.
    """
    _resolve_kind(_to_numpy(x0, "x0").shape, kind, "x0")
    frames, labels = forward_frames(x0, schedule, ts, num_frames, seed)
    return frames_slider(
        frames, labels, schedule, kind=kind, fps=fps, lim=lim, scale=scale, title=title
    )


def compare_schedules_slider(
    x0: ArrayLike,
    schedules: Mapping[str, NoiseSchedule],
    ts: Sequence[int] | None = None,
    num_frames: int = 50,
    seed: int = 0,
    kind: str = "auto",
    *,
    fps: float = 10.0,
    lim: float | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> FrameSlider:
    """The same data and noise under several schedules, side by side on one slider.

    ``compare_schedules_slider(x0, {"linear": NoiseSchedule.linear(), "cosine":
    NoiseSchedule.cosine()})`` shows how much sooner the linear schedule destroys the signal.
    All schedules must have the same number of steps T, so that one t means one thing.
    """
    if not isinstance(schedules, Mapping) or not schedules:
        raise ValueError("schedules: expected a non-empty mapping name -> NoiseSchedule")
    lengths = {name: len(s) for name, s in schedules.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"schedules: expected the same number of steps T for all, got {lengths}")
    _resolve_kind(_to_numpy(x0, "x0").shape, kind, "x0")
    frames, labels = {}, []
    for name, schedule in schedules.items():
        frames[name], labels = forward_frames(x0, schedule, ts, num_frames, seed)
    return frames_slider(
        frames, labels, dict(schedules), kind=kind, fps=fps, lim=lim, scale=scale, title=title
    )


# ---------------------------------------------------------------------------- animations, print
def save_gif(
    frames: Frames,
    ts: Sequence[int | None],
    path: str | Path,
    fps: float = 10.0,
    schedule: NoiseSchedule | None = None,
    kind: str = "auto",
    lim: float | None = None,
    scale: int | None = None,
    loop: int = 0,
) -> Path:
    """Write the frames as an animated GIF, each captioned like the slider (Pillow, no imageio).

    Args:
        frames, ts, schedule, kind, lim, scale: as for :func:`frames_slider` (one panel).
        path: where to write, e.g. "forward.gif".
        fps: frames per second.
        loop: how many times to repeat; 0 loops forever.
    Returns:
        the path written.
    """
    if not fps > 0:
        raise ValueError(f"fps: expected a positive number of frames per second, got {fps!r}")
    stack = _frame_list(frames, "frames")
    kind = _resolve_kind(stack[0].shape, kind, "frames")
    ts = _check_ts(ts, len(stack), schedule)
    rendered = _render(stack, kind, lim)
    scale = _scale(rendered[0], scale)
    images = _captioned(
        [_enlarge(im, scale) for im in rendered], [caption(t, schedule) for t in ts]
    )
    path = Path(path)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=loop
    )
    return path


def filmstrip(
    frames: Frames,
    ts: Sequence[int | None],
    n: int = 8,
    schedule: NoiseSchedule | None = None,
    kind: str = "auto",
    lim: float | None = None,
    panel_size: float = 1.8,
) -> Figure:
    """A row of ``n`` frames spread evenly over the stack (first and last included), for print.

    Uses all frames when there are fewer than ``n``. Drawn natively by matplotlib (vector axes,
    crisp in a PDF), titled with each frame's caption.

    Returns:
        a Figure with one axes per frame shown.
    """
    stack = _frame_list(frames, "frames")
    kind = _resolve_kind(stack[0].shape, kind, "frames")
    ts = _check_ts(ts, len(stack), schedule)
    picks = _pick(len(stack), n)
    if kind == "points" and lim is None:
        lim = _points_lim(stack)
    fig = Figure(figsize=(panel_size * len(picks), panel_size + 0.6), layout="constrained")
    for ax, f in zip(fig.subplots(1, len(picks), squeeze=False)[0], picks, strict=True):
        title = caption(ts[f], schedule).replace("   ", "\n")
        if kind == "image":
            show_images(stack[f], ax=ax)
        else:
            show_points(stack[f], lim=lim, ax=ax, size=2.0)
            ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=7)
    return fig


def plot_schedules(schedules: Mapping[str, NoiseSchedule] | NoiseSchedule) -> Figure:
    """alpha_bar_t (signal kept, eq. 4) and log SNR(t) against t, one line per schedule."""
    if isinstance(schedules, NoiseSchedule):
        schedules = {"schedule": schedules}
    if not isinstance(schedules, Mapping) or not schedules:
        raise ValueError("schedules: expected a NoiseSchedule or a mapping name -> NoiseSchedule")
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax_ab, ax_snr = fig.subplots(1, 2)
    for name, s in schedules.items():
        if not isinstance(s, NoiseSchedule):
            raise TypeError(f"schedules[{name!r}]: expected a NoiseSchedule, got {type(s)}")
        t = np.arange(s.num_steps)
        ax_ab.plot(t, s.alpha_bars.numpy(), label=name)
        ax_snr.plot(t, s.log_snr(torch.arange(s.num_steps)).numpy(), label=name)
    ax_ab.set(xlabel="t", ylabel="alpha_bar_t", title="signal kept: alpha_bar_t")
    ax_snr.set(xlabel="t", ylabel="log SNR(t)", title="log signal-to-noise ratio")
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
