"""matplotlib set-up (Agg, no fonts to fetch) and turning figures into PNG/SVG bytes.

matplotlib is imported only inside `convladder.report`; everything else in the
package stays importable without it.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit; must happen before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

plt.rcParams.update({
    "figure.dpi": 80,
    "savefig.dpi": 80,  # small files and fast rendering; the report is read on screens
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "path",  # text as paths: an inline SVG needs no font from anywhere
    "svg.hashsalt": None,  # random ids, so several inline SVGs in one page never share clip-path ids
    "image.cmap": "viridis",
})

PNG_DPI = 150  # PNG files written to disk (`convladder concepts`, Figure.save): sharp when printed or zoomed
DEFAULT_CMAP = "viridis"  # the notes' "yellow" MNIST digits: viridis shows ink as yellow on purple


@dataclass
class Figure:
    """A rendered figure: a name (file stem), a caption, and PNG or SVG bytes."""

    name: str
    caption: str
    fig: plt.Figure
    vector: bool = False  # line charts: inline SVG (crisp, small); images: PNG
    wide: bool = False  # spans the whole width of the report's figure grid

    def png(self, dpi: float | None = None) -> bytes:
        """PNG bytes at `dpi` (default: the report's screen resolution, savefig.dpi)."""
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", bbox_inches="tight", **({"dpi": dpi} if dpi else {}))
        return buf.getvalue()

    def svg(self) -> str:
        buf = io.StringIO()
        self.fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        text = buf.getvalue()
        # drop the XML prolog/doctype so the SVG can sit inline in HTML
        text = re.sub(r"^.*?(<svg\b)", r"\1", text, count=1, flags=re.S)
        # the RDF metadata block only names namespaces by URL; drop it so the page holds no URLs at all
        return re.sub(r"<metadata>.*?</metadata>", "", text, count=1, flags=re.S)

    def html(self) -> str:
        """An <img> with a base64 PNG, or the inline <svg>; either needs nothing outside the page."""
        if self.vector:
            svg = self.svg()
            return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(self.caption)}" ', 1)
        data = base64.b64encode(self.png()).decode()
        return f'<img alt="{_attr(self.caption)}" src="data:image/png;base64,{data}">'

    def save(self, folder: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
        """Write `<folder>/<name>.<fmt>` per format, each atomically (rendered in memory, then the one writer)."""
        from convladder.fileio import atomic_write_bytes

        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt in formats:
            path = folder / f"{self.name}.{fmt}"
            extra = {"metadata": {"Date": None}} if fmt == "svg" else {"dpi": PNG_DPI}
            buf = io.BytesIO()
            self.fig.savefig(buf, format=fmt, bbox_inches="tight", **extra)
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
        return paths

    def close(self) -> None:
        plt.close(self.fig)


def epoch_axis(ax) -> None:
    """Ticks at whole epochs only (matplotlib would put them at 1.2, 1.4, … for a short run)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def mosaic(tiles: np.ndarray, cols: int, pad: int = 2, top: int = 0) -> np.ndarray:
    """Tile (N,H,W) images into one (rows*(H+pad+top), cols*(W+pad)) array, NaN in the gaps.

    Colour tiles, (N,3,H,W) in [0, 1], give an RGBA mosaic (rows*(H+pad+top), cols*(W+pad), 4) whose gaps are
    transparent: imshow shows it in its own colours (a colour map applies to one channel only).
    One imshow of a mosaic is far faster than one axes per tile; `top` leaves room for a label.
    """
    if tiles.ndim == 4:
        alpha = np.ones_like(tiles[:, :1])
        planes = [mosaic(np.concatenate([tiles, alpha], 1)[:, i], cols, pad, top) for i in range(tiles.shape[1] + 1)]
        return np.nan_to_num(np.stack(planes, -1), nan=0.0)  # alpha 0 in the gaps: the white page shows
    n, h, w = tiles.shape
    rows = max(1, -(-n // cols))
    out = np.full((rows, top + h + pad, cols, w + pad), np.nan, dtype=np.float32)
    padded = np.full((rows * cols, h, w), np.nan, dtype=np.float32)
    padded[:n] = tiles
    out[:, top:top + h, :, :w] = padded.reshape(rows, cols, h, w).transpose(0, 2, 1, 3)
    return out.reshape(rows * (top + h + pad), cols * (w + pad))


def cmap_with_gaps(name: str = DEFAULT_CMAP):
    """A copy of the colour map that shows NaN (the gaps of a mosaic) as white."""
    return matplotlib.colormaps[name].with_extremes(bad="white")


def normalise_tiles(x: np.ndarray) -> np.ndarray:
    """Scale each tile to [0, 1] on its own (feature maps have very different ranges)."""
    lo = x.reshape(len(x), -1).min(1)[:, None, None]
    hi = x.reshape(len(x), -1).max(1)[:, None, None]
    return (x - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
