"""A small SVG writer for the report's plots: frames, paths, text and one PNG image, written directly.

Why not matplotlib: a report draws about 40 plots per product, and matplotlib's figure, text layout
and SVG backend cost as much CPU as gating the product; these plots only need lines, polygons,
text and one raster, which this module writes as SVG elements itself.

Conventions:
- Units are SVG user units = points (1/72 inch); y grows downwards (SVG), data y upwards (:class:`Frame`).
- Coordinates are written to 0.01 pt; the output is deterministic (same calls, same bytes).
- Text stays text (DejaVu Sans, the family set once on the root element), XML-escaped; never parsed.
  Widths (for placing and fitting labels) are the sum of the glyph advances of DejaVu Sans
  (regular or bold, read once per character from the font file matplotlib ships; kerning ignored);
  a line's box is ``ASCENT`` above and ``DESCENT`` below the baseline, in font sizes.
- Ids are local names prefixed by ``p`` + 8 hex digits of the SHA-256 of the plot's markup, so
  several plots can share a page; no ``<style>``, no metadata, no XML prolog.
- Images: RGBA arrays as PNG (numpy + zlib), inline ``data:`` URIs, ``image-rendering: pixelated``.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from markupsafe import escape

ASCENT = 0.76    # baseline to the top of a line's box, in font sizes ("l" of DejaVu Sans)
DESCENT = 0.24   # baseline to the bottom of a line's box, in font sizes
FAMILY = "'DejaVu Sans', sans-serif"
_ID = "\x00"     # placeholder for the id prefix until the markup is complete

_ADVANCES: dict[tuple[bool, str], float] = {}
_FONT_LOCK = threading.Lock()   # an FT2Font is not thread-safe


@lru_cache(maxsize=2)
def _font(bold: bool):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    font = FT2Font(path)
    font.set_size(100.0, 72.0)   # 100 pt at 72 dpi: advances in 1/100 em
    return font


def _advance(bold: bool, char: str) -> float:
    with _FONT_LOCK:
        font = _font(bold)
        advance = font.load_char(ord(char)).linearHoriAdvance / 65536.0 / 100.0
    _ADVANCES[(bold, char)] = advance
    return advance


def text_width(s: str, size: float, bold: bool = False) -> float:
    """Width (points) of one line of text at ``size`` points: the sum of its glyphs' advances."""
    get = _ADVANCES.get
    return size * sum(get((bold, c)) or _advance(bold, c) for c in s)


def line_pitch(size: float, spacing: float = 1.1) -> float:
    """Baseline-to-baseline distance of multi-line text (matplotlib's: descent + spacing x ascent)."""
    return size * (DESCENT + spacing * ASCENT)


def text_height(lines: int, size: float, spacing: float = 1.1) -> float:
    return size * (ASCENT + DESCENT) + (lines - 1) * line_pitch(size, spacing)


@dataclass(frozen=True)
class Box:
    """A rectangle in SVG units (x0 <= x1, y0 <= y1; y down)."""

    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def padded(self, pad: float) -> Box:
        return Box(self.x0 - pad, self.x1 + pad, self.y0 - pad, self.y1 + pad)

    def translated(self, dx: float, dy: float) -> Box:
        return Box(self.x0 + dx, self.x1 + dx, self.y0 + dy, self.y1 + dy)

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


@dataclass(frozen=True)
class Frame:
    """An axes rectangle (``box``, SVG units) showing data ``xlim`` x ``ylim`` (data y up)."""

    box: Box
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def sx(self, v):
        return self.box.x0 + (np.asarray(v, float) - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * self.box.width

    def sy(self, v):
        return self.box.y1 - (np.asarray(v, float) - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * self.box.height

    def data_x(self, sx: float) -> float:
        return self.xlim[0] + (sx - self.box.x0) / self.box.width * (self.xlim[1] - self.xlim[0])

    def data_y(self, sy: float) -> float:
        return self.ylim[0] + (self.box.y1 - sy) / self.box.height * (self.ylim[1] - self.ylim[0])


def num(v: float) -> str:
    """A coordinate to 0.01 pt, without trailing zeros."""
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def nums(values) -> list[str]:
    return [num(v) for v in np.round(np.asarray(values, float), 2).tolist()]


def polyline(xs, ys, close: bool = False) -> str:
    """Path data through the points (SVG units)."""
    pts = [f"{a} {b}" for a, b in zip(nums(xs), nums(ys))]
    return "M" + "L".join(pts) + ("Z" if close else "")


def attrs(**kw) -> str:
    """XML attributes (``stroke_width`` -> ``stroke-width``), None left out, values escaped."""
    return "".join(f' {k.replace("_", "-")}="{escape(str(v))}"' for k, v in kw.items() if v is not None)


def path(d: str, *, stroke: str | None = None, width: float | None = None, fill: str = "none",
         opacity: float | None = None, dash: str | None = None, cap: str | None = None) -> str:
    """A ``<path>`` (``opacity``: of its fill and stroke; ``dash``: stroke-dasharray, points)."""
    return f'<path d="{d}"' + attrs(fill=fill, fill_opacity=opacity if fill != "none" else None, stroke=stroke,
                                    stroke_opacity=opacity if stroke else None,
                                    stroke_width=None if width is None else num(width), stroke_dasharray=dash,
                                    stroke_linecap=cap) + "/>"


def text(x: float, y: float, lines: list[str] | str, *, size: float, anchor: str = "middle", bold: bool = False,
         fill: str | None = None, rotate: bool = False, spacing: float = 1.1) -> str:
    """Text with its first baseline at (x, y), one ``<text>`` per line (a line reads as one text),
    each next line down by :func:`line_pitch`; ``rotate``: turned 90 degrees counter-clockwise about
    its (x, y)."""
    lines = [lines] if isinstance(lines, str) else lines
    out = []
    for k, line in enumerate(lines):
        yk = num(y + k * line_pitch(size, spacing))
        out.append("<text" + attrs(x=num(x), y=yk, font_size=num(size), font_weight="bold" if bold else None,
                                   text_anchor=None if anchor == "start" else anchor, fill=fill,
                                   transform=f"rotate(-90 {num(x)} {yk})" if rotate else None)
                   + f">{escape(line)}</text>")
    return "".join(out)


def group(gid: str | None, *parts: str) -> str:
    """Parts in a ``<g>`` whose id is ``gid`` (prefixed when the plot is written)."""
    return f'<g id="{_ID}{gid}">' + "".join(parts) + "</g>" if gid else "".join(parts)


PNG_LEVEL = 4
"""zlib level of the density images: on the benchmark folder's 128 x 128 images (CPU per image,
bytes per image) level 6 takes 0.75 ms for 3,394 B, level 4 0.32 ms for 3,755 B (+11 %, a report
+2 %), level 1 0.18 ms for 4,755 B (+40 %); level 9 costs 8x level 6 for 9 % fewer bytes. The
decoded pixels are the same at every level."""


def png(rgba: np.ndarray) -> bytes:
    """An (rows, columns, 4) uint8 RGBA array as a PNG file (no filter; zlib :data:`PNG_LEVEL`)."""
    h, w, _ = rgba.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(rgba, np.uint8).reshape(h, w * 4)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), PNG_LEVEL)) + chunk(b"IEND", b""))


class Canvas:
    """One plot being written: layers drawn in order (``under``: images; ``data``: clipped to the
    frame given to :meth:`clip`; ``frame``: spines and ticks; ``text``), then :meth:`svg`."""

    def __init__(self, width: float, height: float):
        self.width, self.height = width, height
        self.under: list[str] = []
        self.data: list[str] = []
        self.frame: list[str] = []
        self.text: list[str] = []
        self.defs: list[str] = []
        self._clip: Box | None = None

    def clip(self, box: Box) -> None:
        """Clip the ``data`` layer to ``box`` (the axes)."""
        self._clip = box

    def image(self, rgba: np.ndarray, box: Box) -> None:
        """An RGBA array (row 0 at the top) stretched over ``box``, pixels kept square-edged."""
        uri = "data:image/png;base64," + base64.b64encode(png(rgba)).decode("ascii")
        self.under.append(f'<image x="{num(box.x0)}" y="{num(box.y0)}" width="{num(box.width)}" '
                          f'height="{num(box.height)}" preserveAspectRatio="none" '
                          f'style="image-rendering:crisp-edges;image-rendering:pixelated" xlink:href="{uri}"/>')

    def svg(self, alt: str) -> str:
        """The plot as one inline-ready ``<svg>`` element."""
        clipped = ""
        if self.data:
            if self._clip is not None:
                b = self._clip
                self.defs.append(f'<clipPath id="{_ID}frame"><rect x="{num(b.x0)}" y="{num(b.y0)}" '
                                 f'width="{num(b.width)}" height="{num(b.height)}"/></clipPath>')
                clipped = f'<g clip-path="url(#{_ID}frame)">\n' + "\n".join(self.data) + "\n</g>"
            else:
                clipped = "\n".join(self.data)
        body = "\n".join(p for p in (
            f'<rect width="{num(self.width)}" height="{num(self.height)}" fill="#ffffff"/>',
            *self.under, clipped, *self.frame, *self.text) if p)
        defs = ("<defs>\n" + "\n".join(self.defs) + "\n</defs>\n") if self.defs else ""
        text = (f' xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" '
                f'viewBox="0 0 {num(self.width)} {num(self.height)}" font-family="{FAMILY}">\n{defs}{body}\n</svg>\n')
        prefix = "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8] + "-"
        return f'<svg class="plot" role="img" aria-label="{escape(alt)}"' + text.replace(_ID, prefix)
