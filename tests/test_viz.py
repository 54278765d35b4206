"""Tests for ddpm_teach.viz: grids, captions, sliders (both ipywidgets paths), GIF, filmstrip."""

from __future__ import annotations

import base64
import io
import itertools
import math
import re
import time

import ipywidgets as widgets
import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from ddpm_teach import viz
from ddpm_teach.schedule import NoiseSchedule

matplotlib.use("Agg")


def _ring(n: int = 200) -> torch.Tensor:
    angle = torch.linspace(0, 2 * math.pi, n)
    return torch.stack([2 * angle.cos(), 2 * angle.sin()], dim=1)


def _squares(n: int = 4, channels: int = 1, size: int = 8) -> torch.Tensor:
    """n images, image i a bright square of side i + 2 on black, in [-1, 1]."""
    x = -torch.ones(n, channels, size, size)
    for i in range(n):
        x[i, :, : i + 2, : i + 2] = 1.0
    return x


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def linear() -> NoiseSchedule:
    return NoiseSchedule.linear(1000)


# ---------------------------------------------------------------------------- image_grid
def test_image_grid_shape_follows_nrow_and_padding() -> None:
    grid = viz.image_grid(torch.zeros(5, 3, 4, 6), nrow=3, pad=2)
    # 2 rows of 3: H' = 2*4 + 3*2, W' = 3*6 + 4*2.
    assert grid.shape == (14, 26, 3) and grid.dtype == np.uint8
    assert viz.image_grid(torch.zeros(5, 1, 4, 6)).shape == (14, 26, 1)  # default nrow = 3
    assert viz.image_grid(np.zeros((4, 1, 3, 3), np.float32), pad=0).shape == (6, 6, 1)


def test_image_grid_maps_minus_one_to_0_and_one_to_255() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, -3.0, 2.0]).reshape(5, 1, 1, 1)
    grid = viz.image_grid(x, nrow=5, pad=1, pad_value=-1.0)
    assert grid[1, 1::2, 0].tolist() == [0, 255, 128, 0, 255]  # out of range is clipped
    assert grid[0].max() == 0  # the border has pad_value = -1 -> 0
    assert viz.image_grid(x, nrow=5, pad=1)[0].min() == 255  # default white border


def test_image_grid_places_image_i_in_row_major_cell() -> None:
    x = torch.linspace(-1, 1, 6).reshape(6, 1, 1, 1).expand(6, 1, 2, 2)
    grid = viz.image_grid(x, nrow=3, pad=1)[:, :, 0]
    expected = np.floor((np.linspace(-1, 1, 6) + 1) * 127.5 + 0.5)
    for i in range(6):
        r, c = divmod(i, 3)
        top, left = 1 + 3 * r, 1 + 3 * c
        assert (grid[top : top + 2, left : left + 2] == expected[i]).all()


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.zeros(3, 8, 8), {}, r"images: expected images of shape \(B, C, H, W\)"),
        (torch.zeros(2, 2, 8, 8), {}, "C = 1 or 3"),
        (torch.zeros(2, 1, 8, 8), {"nrow": 0}, "nrow: expected a positive int"),
        (torch.zeros(2, 1, 8, 8), {"pad": -1}, "pad: expected a non-negative int"),
        (torch.full((2, 1, 8, 8), float("nan")), {}, "images: contains NaN"),
    ],
)
def test_image_grid_rejects_bad_input(images, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        viz.image_grid(images, **kwargs)


def test_image_grid_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match=r"images: expected a torch\.Tensor or numpy array"):
        viz.image_grid([[0.0]])


def test_show_images_and_points_draw_into_given_axes() -> None:
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert viz.show_images(_squares(), title="sq", ax=ax1) is ax1
    assert ax1.get_images()[0].get_array().shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert ax1.get_title() == "sq"
    assert viz.show_points(_ring(), lim=2.5, ax=ax2) is ax2
    assert ax2.get_xlim() == (-2.5, 2.5) and ax2.get_ylim() == (-2.5, 2.5)
    np.testing.assert_allclose(ax2.collections[0].get_offsets(), _ring().numpy())
    with pytest.raises(ValueError, match=r"points: expected 2-D points of shape \(B, 2\)"):
        viz.show_points(torch.zeros(5, 3), ax=ax2)


# ---------------------------------------------------------------------------- captions
def test_caption_numbers_for_a_hand_computable_schedule() -> None:
    s = NoiseSchedule([0.5, 0.5])  # alpha_bar = 0.5, 0.25; SNR = 1, 1/3
    assert viz.caption(0, s) == "t = 0   alpha_bar_t = 0.5   SNR = 1"
    assert viz.caption(1, s) == "t = 1   alpha_bar_t = 0.25   SNR = 0.333"
    assert viz.caption(1) == "t = 1"
    assert viz.caption(None, s) == "x_0 = data (no noise)"
    assert viz.caption(-1, s) == "x_0 = sample (no noise left)"  # a sampler's last state
    with pytest.raises(ValueError, match=r"t: step indices must lie in 0\.\.1"):
        viz.caption(2, s)


@pytest.mark.parametrize("t", [0, 250, 999])
def test_caption_numbers_for_the_linear_schedule(linear: NoiseSchedule, t: int) -> None:
    betas = np.linspace(1e-4, 0.02, 1000)  # the paper's schedule, computed independently
    alpha_bar = np.prod(1.0 - betas[: t + 1])
    text = viz.caption(t, linear)
    got = re.fullmatch(r"t = (\d+)   alpha_bar_t = (\S+)   SNR = (\S+)", text)
    assert got is not None, text
    assert int(got[1]) == t
    assert float(got[2]) == pytest.approx(alpha_bar, rel=1e-3)  # printed to 4 digits
    assert float(got[3]) == pytest.approx(alpha_bar / (1 - alpha_bar), rel=5e-3)


# ---------------------------------------------------------------------------- forward frames
def test_forward_frames_are_eq4_with_one_noise_draw(linear: NoiseSchedule) -> None:
    x0 = _ring(50)
    frames, ts = viz.forward_frames(x0, linear, num_frames=6, seed=3)
    assert ts == [None, 0, 250, 500, 749, 999]  # 0 and T-1 always included
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(frames[0], x0)
    for frame, t in zip(frames[1:], ts[1:], strict=True):
        ab = float(np.prod(1.0 - np.linspace(1e-4, 0.02, 1000)[: t + 1]))
        torch.testing.assert_close(frame, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)
    again, _ = viz.forward_frames(x0, linear, num_frames=6, seed=3)
    torch.testing.assert_close(again, frames)


def test_forward_frames_with_given_ts_and_few_steps() -> None:
    short = NoiseSchedule.linear(5)
    _, ts = viz.forward_frames(_ring(10), short, num_frames=50)
    assert ts == [None, 0, 1, 2, 3, 4]  # no repeated steps when T < num_frames
    frames, ts = viz.forward_frames(_ring(10), short, ts=[4, 1], include_data=False)
    assert ts == [4, 1] and frames.shape == (2, 10, 2)
    with pytest.raises(ValueError, match=r"ts: step indices must lie in 0\.\.4"):
        viz.forward_frames(_ring(10), short, ts=[5])
    with pytest.raises(ValueError, match="num_frames: expected an int >= 2"):
        viz.forward_frames(_ring(10), short, num_frames=1)
    with pytest.raises(TypeError, match="schedule: expected a NoiseSchedule"):
        viz.forward_frames(_ring(10), "linear")


# ---------------------------------------------------------------------------- the slider
def _links(w: viz.FrameSlider) -> set[tuple]:
    return {(link.source[0], link.source[1], link.target[0], link.target[1]) for link in w.links}


def test_forward_slider_for_points(linear: NoiseSchedule) -> None:
    w = viz.forward_slider(_ring(), linear, num_frames=6)
    assert w.num_frames == 6 and w.labels == ["data", "0", "250", "500", "749", "999"]
    assert [texts[0] for texts in w.texts] == [
        viz.caption(t, linear) for t in [None, 0, 250, 500, 749, 999]
    ]
    assert w.play.max == 5 and w.slider.options == tuple((lab, i) for i, lab in enumerate(w.labels))
    pictures = [_decode(pngs[0]) for pngs in w.pngs]
    assert len({p.tobytes() for p in pictures}) == 6  # every frame is a different picture
    assert all(p.shape == pictures[0].shape for p in pictures)


def test_forward_slider_for_images_links_slider_to_stack(linear: NoiseSchedule) -> None:
    x0 = _squares(channels=3)
    w = viz.forward_slider(x0, linear, num_frames=4)
    assert w.browser_side and isinstance(w.stack, widgets.Stack)
    # ipywidgets 8: the picture is switched in the browser, play -> slider -> stack.
    assert (w.play, "value", w.slider, "index") in _links(w)
    assert (w.slider, "index", w.stack, "selected_index") in _links(w)
    assert len(w.stack.children) == 4 and w.stack.selected_index == 0
    for f, page in enumerate(w.stack.children):
        image, cap = page.children  # one panel: (picture, caption)
        assert image.value == w.pngs[f][0] and "ddpm-frame" in image._dom_classes
        assert w.texts[f][0] in cap.value
    # The data frame is the data: a 2x2 grid of 8x8 squares, decoded back exactly.
    data = np.asarray(Image.open(io.BytesIO(w.pngs[0][0])))
    np.testing.assert_array_equal(data, viz.image_grid(x0))
    # Noise grows with t: each frame is further from the data than the one before.
    dist = [np.abs(_decode(p[0]) - _decode(w.pngs[0][0])).mean() for p in w.pngs]
    assert dist[0] == 0 and all(a < b for a, b in itertools.pairwise(dist))
    # Browser-enlarged, not stored enlarged: 22 px grid -> x12 would exceed 8, so x8.
    assert w.scale == 8 and w.stack.children[0].children[0].width == str(22 * 8)


def test_kernel_fallback_for_ipywidgets_7_swaps_the_picture(
    linear: NoiseSchedule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(viz, "_ipywidgets_major", lambda: 7)
    monkeypatch.delattr(viz.widgets, "Stack")  # Colab's ipywidgets 7.7 has no Stack
    w = viz.forward_slider(_squares(), linear, num_frames=5)
    assert not w.browser_side and w.stack is None
    assert _links(w) == {(w.play, "value", w.slider, "index")}
    (image,), (cap,) = w.images, w.captions
    assert image.value == w.pngs[0][0] and "x_0 = data" in cap.value
    start = time.perf_counter()
    w.slider.index = 3
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert image.value == w.pngs[3][0] != w.pngs[0][0]
    assert "t = 666   alpha_bar_t = 0.01098" in cap.value
    print(f"kernel-side slider step: {elapsed_ms:.2f} ms")


def test_displayed_bundle_has_widget_static_png_and_stable_text(linear: NoiseSchedule) -> None:
    w = viz.forward_slider(_ring(100), linear, num_frames=10)
    bundle = w._repr_mimebundle_()
    assert bundle["text/plain"] == "<slider over t: 10 frames>"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == w.model_id
    strip = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    cell = Image.open(io.BytesIO(w.pngs[0][0]))
    assert strip.width > 8 * cell.width > strip.height > cell.height  # 8 frames in a row


def test_compare_schedules_slider_shares_data_and_noise(linear: NoiseSchedule) -> None:
    cosine = NoiseSchedule.cosine(1000)
    w = viz.compare_schedules_slider(_squares(), {"linear": linear, "cosine": cosine}, num_frames=3)
    assert w.titles == ["linear", "cosine"] and w.labels == ["data", "0", "999"]
    assert w.texts[2] == [viz.caption(999, linear), viz.caption(999, cosine)]
    assert w.pngs[0][0] == w.pngs[0][1]  # the same data ...
    assert w.pngs[1][0] != w.pngs[1][1]  # ... noised differently by the two schedules
    page = w.stack.children[1]
    assert [p.children[0].value for p in page.children] == ["<b>linear</b>", "<b>cosine</b>"]
    with pytest.raises(ValueError, match="schedules: expected the same number of steps T"):
        viz.compare_schedules_slider(_squares(), {"a": linear, "b": NoiseSchedule.linear(10)})


def test_frames_slider_for_a_reverse_trajectory() -> None:
    s = NoiseSchedule.linear(4)
    traj = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0))  # x_T .. x_0
    w = viz.frames_slider(traj, [3, 2, 1, 0, None], s, title="reverse")
    assert w.labels == ["3", "2", "1", "0", "data"]
    assert w.children[0].value == "<b>reverse</b>"
    both = viz.frames_slider({"fwd": traj.flip(0), "rev": traj}, [0, 1, 2, 3, 4])
    assert both.texts[4] == ["t = 4", "t = 4"]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: viz.forward_slider(_ring(), s, kind="blob"), ValueError, "kind: expected one"),
        (lambda s: viz.forward_slider(_ring(), s, kind="image"), ValueError, r"x0: expected imag"),
        (lambda s: viz.forward_slider(_squares(), s, kind="points"), ValueError, "x0: expected 2"),
        (lambda s: viz.forward_slider(torch.zeros(4, 3), s), ValueError, r"x0: .* got shape"),
        (lambda s: viz.frames_slider(torch.zeros(2, 4, 2), [0]), ValueError, "ts: expected one"),
        (lambda s: viz.forward_slider(_ring(), s, ts=5), TypeError, "ts: expected a sequence"),
        (lambda s: viz.frames_slider(torch.zeros(2, 4, 2), [0, 1.5]), TypeError, "ts: expected in"),
        (lambda s: viz.frames_slider(torch.zeros(1, 4, 2), [1000], s), ValueError, r"0\.\.999"),
        (
            lambda s: viz.frames_slider([torch.zeros(4, 2), torch.zeros(5, 2)], [0, 1]),
            ValueError,
            "frames: every frame must have the same shape",
        ),
        (
            lambda s: viz.frames_slider({"a": torch.zeros(1, 4, 2)}, [0], {"b": s}),
            ValueError,
            "schedule: a mapping must have the keys",
        ),
        (lambda s: viz.frames_slider(torch.zeros(1, 4, 2), [0], fps=0), ValueError, "fps:"),
        (
            lambda s: viz.frames_slider(
                {"a": [torch.zeros(4, 1, 8, 8)], "b": [torch.zeros(9, 3)]}, [0]
            ),
            ValueError,
            r"frames\['b'\]: expected images",
        ),
        (
            lambda s: viz.frames_slider(
                {"a": [torch.zeros(4, 1, 8, 8)], "b": [torch.zeros(9, 2)]}, [0]
            ),
            ValueError,
            "every panel must hold the same kind of data",
        ),
        (
            lambda s: viz.frames_slider(torch.zeros(1, 1, 1, 4, 4), [0], scale=0),
            ValueError,
            "scale:",
        ),
    ],
)
def test_sliders_reject_bad_input(linear: NoiseSchedule, call, error, match) -> None:
    with pytest.raises(error, match=match):
        call(linear)


# ---------------------------------------------------------------------------- GIF, filmstrip
def test_save_gif_writes_a_multi_frame_gif(linear: NoiseSchedule, tmp_path) -> None:
    frames, ts = viz.forward_frames(_squares(), linear, num_frames=5)
    path = viz.save_gif(frames, ts, tmp_path / "forward.gif", fps=5, schedule=linear)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames == 5
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
    points, ts = viz.forward_frames(_ring(), linear, num_frames=3)
    with Image.open(viz.save_gif(points, ts, tmp_path / "points.gif")) as gif:
        assert gif.n_frames == 3
    with pytest.raises(ValueError, match="fps: expected a positive"):
        viz.save_gif(points, ts, tmp_path / "x.gif", fps=0)


def test_filmstrip_has_one_axes_per_frame_shown(linear: NoiseSchedule) -> None:
    frames, ts = viz.forward_frames(_ring(), linear, num_frames=11)
    fig = viz.filmstrip(frames, ts, n=4, schedule=linear)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("x_0 = data") and titles[-1].startswith("t = 999\n")
    assert len(viz.filmstrip(frames[:3], ts[:3], n=8).axes) == 3  # fewer frames than n
    images, image_ts = viz.forward_frames(_squares(), linear, num_frames=3)
    assert len(viz.filmstrip(images, image_ts, n=3).axes[0].get_images()) == 1
    with pytest.raises(ValueError, match="n: expected a positive int"):
        viz.filmstrip(frames, ts, n=0)


def test_plot_schedules_draws_alpha_bar_and_log_snr(linear: NoiseSchedule) -> None:
    cosine = NoiseSchedule.cosine(1000)
    fig = viz.plot_schedules({"linear": linear, "cosine": cosine})
    ax_ab, ax_snr = fig.axes
    np.testing.assert_allclose(ax_ab.lines[1].get_ydata(), cosine.alpha_bars.numpy())
    ab = linear.alpha_bars.numpy()
    np.testing.assert_allclose(ax_snr.lines[0].get_ydata(), np.log(ab / (1 - ab)))
    with pytest.raises(ValueError, match="schedules: expected a NoiseSchedule or a mapping"):
        viz.plot_schedules({})
