"""Regenerate the README's pictures: `python docs/make_figures.py` (from the repository root)."""

from __future__ import annotations

from pathlib import Path

from ddpm_teach import NoiseSchedule
from ddpm_teach.data import glyph_digits
from ddpm_teach.viz import filmstrip, forward_frames

OUT = Path(__file__).parent / "img"


def forward_process() -> Path:
    """Sixteen glyph digits at eight points of the forward process (eq. 4), one noise draw."""
    images, _ = glyph_digits(16, seed=1)
    schedule = NoiseSchedule.linear()
    frames, ts = forward_frames(images, schedule, ts=[0, 49, 99, 199, 299, 499, 699, 999])
    fig = filmstrip(frames, ts, n=len(ts), schedule=schedule, panel_size=1.6)
    path = OUT / "forward.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print(forward_process())
