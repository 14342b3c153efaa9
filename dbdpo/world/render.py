"""Vectorised numpy renderer of world scenes: `render(batch, size=32) -> uint8 (N, H, W, 3)`.

Geometry is defined at 32 px and scaled, so a 64 px image is a sharper version of the 32 px one.
Shapes are signed distance functions (anti-aliased by clipping the distance in pixels); pattern periods
(6 px stripes/checks/zigzags/rings, 5 px dots of radius 1.6 px) do not divide a 2x or 4x latent stride.
Everything is deterministic: backgrounds and the grain tile are fixed, seeded textures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dbdpo.errors import ConfigError

from . import attributes as _attributes
from .attributes import (ACCESSORIES, BACKGROUNDS, COLOUR_RGB, COLOURS, HIGHLIGHT_RGB, PATTERNS, POSITIONS,
                         SHAPES, SIZES, STYLES, TINTS, SceneBatch, tint_rgb)

BASE = 32  # geometry is defined in pixels of a 32 px image
SIZE_RADIUS = {"small": 0.25, "large": 0.35}  # object half-extent, fraction of the image
PATTERN_PERIOD = {"stripes": 6.0, "dots": 5.0, "checks": 6.0, "zigzag": 6.0, "rings": 6.0}  # 32-px units
DOT_RADIUS = 1.6
ZIGZAG_AMPLITUDE, ZIGZAG_WAVELENGTH = 1.6, 6.0
OUTLINE_HALF_WIDTH = 1.0  # px at 32
SKETCH_PAPER = np.array(_attributes.SKETCH_PAPER, np.float32)  # shared with the tint-separation rule
SKETCH_WASH = _attributes.SKETCH_WASH
SKETCH_LINE = np.array([60, 55, 50], np.float32)
GRAIN_TILE, GRAIN_SEED, GRAIN_AMPLITUDE = 8, 20240611, 26.0
HAT_RGB, HAT_BAND_RGB = np.array([35, 35, 40], np.float32), np.array([240, 240, 240], np.float32)
HALO_RGB, HALO_RADIUS = np.array([235, 50, 235], np.float32), 1.3
SCARF_RGB = np.array([20, 215, 215], np.float32)
# A hat on a top object: the object moves down by up to HAT_DROP radii, but its centre stays at least
# HAT_MIN_SEP (image fraction, 4.5 px at 32) above the centre position's, so positions stay distinct.
# The hat is drawn in units of min(radius, HAT_MAX_UNIT); its crown may be cropped by up to HAT_MAX_CROP of
# those units at the top edge, and beyond that the hat sinks onto the object instead.
HAT_DROP, HAT_MIN_SEP = 0.6, 0.14
HAT_MAX_UNIT, HAT_MAX_CROP = 0.27, 0.2
HAT_HEIGHT = 0.8  # crown top above the silhouette's top, hat units
# Per shape (local units, radius 1, y down): top of the silhouette (hat), shiny highlight centre.
SHAPE_TOP = {"circle": -0.92, "square": -0.8, "triangle": -0.98, "star": -1.05, "heart": -0.78, "cross": -0.9}
HIGHLIGHT_AT = {"circle": (-0.35, -0.35), "square": (-0.4, -0.4), "triangle": (-0.12, 0.1),
                "star": (0.0, -0.05), "heart": (-0.42, -0.32), "cross": (0.0, -0.55)}


def _offsets() -> np.ndarray:
    """(position, size) -> object centre (x, y) as image fractions."""
    out = np.zeros((len(POSITIONS), len(SIZES), 2), np.float32)
    for j, sz in enumerate(SIZES):
        d = 0.5 - 0.85 * SIZE_RADIUS[sz] - 0.02  # edges may touch the border
        for i, (ox, oy) in enumerate({"center": (0, 0), "left": (-1, 0), "right": (1, 0), "top": (0, -1),
                                      "bottom": (0, 1)}[p] for p in POSITIONS):
            out[i, j] = (0.5 + ox * d, 0.5 + oy * d)
    return out


CENTRES = _offsets()
RADII = np.array([SIZE_RADIUS[s] for s in SIZES], np.float32)
COLOUR_TABLE = np.array([COLOUR_RGB[c] for c in COLOURS], np.float32)


# ---- signed distance functions, local units (object radius 1) ----

def _sd_box(u, v, hx, hy):
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _sd_polygon(u, v, pts):
    """Exact SDF of a simple polygon (Inigo Quilez's formulation), vectorised over points."""
    pts = np.asarray(pts, np.float32)
    d = (u - pts[0, 0]) ** 2 + (v - pts[0, 1]) ** 2
    inside = np.zeros(u.shape, bool)
    for i in range(len(pts)):
        (ax, ay), (bx, by) = pts[i], pts[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = u - ax, v - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        c1, c2, c3 = v >= ay, v < by, ex * wy > ey * wx
        inside ^= (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
    return np.where(inside, -1, 1) * np.sqrt(d)


def _star_points(n=5, outer=1.05, inner=0.45):
    a = -np.pi / 2 + np.arange(2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a) + 0.06], 1)


_TRIANGLE = [(0.0, -0.98), (1.0, 0.74), (-1.0, 0.74)]
_STAR = _star_points()
_HEART_TIP = [(-0.87, -0.14), (0.0, -0.4), (0.87, -0.14), (0.0, 0.95)]

SHAPE_SDF = {
    "circle": lambda u, v: np.hypot(u, v) - 0.92,
    "square": lambda u, v: _sd_box(u, v, 0.8, 0.8),
    "triangle": lambda u, v: _sd_polygon(u, v, _TRIANGLE),
    "star": lambda u, v: _sd_polygon(u, v, _STAR),
    "heart": lambda u, v: np.minimum(np.minimum(np.hypot(u + 0.42, v + 0.3) - 0.48, np.hypot(u - 0.42, v + 0.3) - 0.48),
                                     _sd_polygon(u, v, _HEART_TIP)),
    "cross": lambda u, v: np.minimum(_sd_box(u, v, 0.92, 0.3), _sd_box(u, v, 0.3, 0.92)),
}


# ---- patterns: signed distance in 32-px units (negative = pattern colour) ----

def _sd_bands(t, period):
    """Bands of half the period, centred on t = period/2 (mod period)."""
    return np.abs(np.mod(t / period, 1.0) - 0.5) * period - period / 4


def _pattern_sd(name, X, Y, period):
    if name == "stripes":
        return _sd_bands(X, period)
    if name == "dots":
        qx, qy = X - period * np.round(X / period), Y - period * np.round(Y / period)
        return np.hypot(qx, qy) - DOT_RADIUS * period / PATTERN_PERIOD["dots"]
    if name == "zigzag":
        tri = 2 * np.abs(np.mod(X / ZIGZAG_WAVELENGTH, 1.0) - 0.5) * 2 - 1
        return _sd_bands(Y + ZIGZAG_AMPLITUDE * tri, period)
    if name == "rings":
        return _sd_bands(np.hypot(X, Y), period)
    raise ValueError(name)


def _pattern_alpha(name, X, Y, period, s):
    if name == "solid":
        return np.zeros(X.shape, np.float32)
    if name == "checks":
        a = np.clip(0.5 - _sd_bands(X, period) * s, 0, 1)
        b = np.clip(0.5 - _sd_bands(Y, period) * s, 0, 1)
        return a + b - 2 * a * b
    return np.clip(0.5 - _pattern_sd(name, X, Y, period) * s, 0, 1)


# ---- fixed textures ----

def _soft_dots(Xp, Yp, pts, radius, s):
    """Coverage of fixed dots at `pts` (32-px units)."""
    a = np.zeros(Xp.shape, np.float32)
    for x, y in pts:
        a = np.maximum(a, np.clip(0.5 - (np.hypot(Xp - x, Yp - y) - radius) * s, 0, 1))
    return a


def _mix(img, rgb, a):
    return img * (1 - a[..., None]) + np.asarray(rgb, np.float32) * a[..., None]


@lru_cache(maxsize=8)
def backgrounds(size: int) -> np.ndarray:
    """(len(BACKGROUNDS), size, size, 3) float32: the fixed background images."""
    s = size / BASE
    c = (np.arange(size, dtype=np.float32) + 0.5) / s  # pixel centres in 32-px units
    Yp, Xp = np.meshgrid(c, c, indexing="ij")
    g = (Yp / BASE)[..., None]  # vertical gradient 0..1
    rng = np.random.default_rng(7)
    out = {}

    out["sky"] = (1 - g) * np.float32([110, 170, 235]) + g * np.float32([192, 222, 248])

    img = np.broadcast_to(np.float32([72, 142, 50]), (size, size, 3)).copy()
    for k, colour in enumerate(([48, 108, 34], [105, 175, 72])):
        xs = rng.uniform(0, BASE, 26)
        y0 = rng.uniform(0, BASE, 26)
        for x, y in zip(xs, y0):  # short slanted blades
            u = Xp - x - 0.25 * (Yp - y)
            a = np.clip(0.5 - (np.abs(u) - 0.45) * s, 0, 1) * ((Yp > y - 5) & (Yp < y)).astype(np.float32)
            img = _mix(img, colour, a)
    out["grass"] = img

    img = np.broadcast_to(np.float32([224, 196, 138]), (size, size, 3)).copy()
    ripple = np.clip(0.5 - _sd_bands(Yp + 1.2 * np.sin(Xp / 4.0), 7.0) * s, 0, 1) * 0.45
    img = _mix(img, [240, 216, 162], ripple)
    img = _mix(img, [186, 156, 102], _soft_dots(Xp, Yp, rng.uniform(0, BASE, (28, 2)), 0.55, s))
    out["sand"] = img

    img = (1 - g) * np.float32([14, 18, 52]) + g * np.float32([30, 38, 88])
    out["night"] = _mix(img, [245, 240, 200], _soft_dots(Xp, Yp, rng.uniform(1, BASE - 1, (14, 2)), 0.6, s))

    row = np.floor(Yp / 5.0)
    bx = Xp + 5.0 * np.mod(row, 2)
    col = np.floor(bx / 10.0)
    shade = rng.uniform(-14, 14, (16, 16)).astype(np.float32)[row.astype(int) % 16, col.astype(int) % 16]
    img = np.float32([165, 74, 54]) + shade[..., None]
    mortar = np.minimum(np.abs(Yp - 5.0 * np.round(Yp / 5.0)), np.abs(bx - 10.0 * np.round(bx / 10.0)))
    out["brick"] = _mix(img, [208, 198, 182], np.clip(0.5 - (mortar - 0.5) * s, 0, 1))

    img = np.broadcast_to(np.float32([238, 242, 250]), (size, size, 3)).copy()
    drift = np.clip(0.5 - (22.0 + 2.5 * np.sin(Xp / 5.0) - Yp) * s, 0, 1) * 0.6
    img = _mix(img, [205, 216, 236], drift)
    out["snow"] = _mix(img, [255, 255, 255], _soft_dots(Xp, Yp, rng.uniform(0, BASE, (18, 2)), 0.7, s))

    img = np.broadcast_to(np.float32([226, 138, 176]), (size, size, 3)).copy()
    twill = np.clip(0.5 - _sd_bands(Xp + Yp, 3.5) * s, 0, 1) * 0.5
    img = _mix(img, [242, 166, 198], twill)
    fold = (0.5 + 0.5 * np.sin((Xp - 0.6 * Yp) / 6.0))[..., None]
    out["fabric"] = img * (0.9 + 0.1 * fold)

    return np.stack([np.asarray(out[b], np.float32) for b in BACKGROUNDS])


@lru_cache(maxsize=8)
def grain(size: int) -> np.ndarray:
    """(size, size) float32: the fixed grain texture (a seeded 8 px tile, repeated), in [-1, 1]."""
    tile = np.clip(np.random.default_rng(GRAIN_SEED).normal(0, 0.6, (GRAIN_TILE, GRAIN_TILE)), -1, 1)
    i = (np.floor((np.arange(size) + 0.5) * BASE / size).astype(int)) % GRAIN_TILE
    return tile[i[:, None], i[None, :]].astype(np.float32)


def _wash(img: np.ndarray) -> np.ndarray:
    """The sketch style's whole-frame wash toward paper."""
    return img * (1 - SKETCH_WASH) + SKETCH_PAPER * SKETCH_WASH


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def bare_scenes(size: int) -> np.ndarray:
    """(len(BACKGROUNDS), len(STYLES), size, size, 3) uint8: each background as `render` draws it in each style
    with no object on it (sketch and grainy restyle the whole frame)."""
    out = np.repeat(backgrounds(size)[:, None], len(STYLES), axis=1)
    out[:, STYLES.index("sketch")] = _wash(out[:, STYLES.index("sketch")])
    out[:, STYLES.index("grainy")] += GRAIN_AMPLITUDE * grain(size)[None, :, :, None]
    return _to_uint8(out)


# ---- object specs (novel concepts) ----

@dataclass(frozen=True)
class ObjectSpec:
    """A concept's look: replaces the scenes' shape, pattern and colours."""

    shape: str
    pattern: str
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int] | None
    period: float | None = None


def _colour(value, key: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        if value not in COLOUR_RGB:
            raise ConfigError(f"{key}: unknown colour {value!r}; use one of {', '.join(COLOURS)} or [r, g, b]")
        return COLOUR_RGB[value]
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ConfigError(f"{key}: {value!r} is not a colour; use one of {', '.join(COLOURS)} or [r, g, b] in 0-255")
    return rgb


def parse_object_spec(spec, key: str = "object_spec") -> ObjectSpec:
    """Validate a look given as {shape, pattern, colours: [c1, c2?], params: {period}}; errors name `key.field`."""
    if isinstance(spec, ObjectSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key} must be a mapping with shape, pattern and colours (got {spec!r})")
    shape, pattern = spec.get("shape"), spec.get("pattern", "solid")
    if shape not in SHAPES:
        raise ConfigError(f"{key}.shape: unknown shape {shape!r}; valid values: {', '.join(SHAPES)}")
    if pattern not in PATTERNS:
        raise ConfigError(f"{key}.pattern: unknown pattern {pattern!r}; valid values: {', '.join(PATTERNS)}")
    colours = spec.get("colours")
    if isinstance(colours, str) or colours is None or not hasattr(colours, "__len__"):
        raise ConfigError(f"{key}.colours must be a list of 1-2 colours ({', '.join(COLOURS)} or [r, g, b]); "
                          f"got {colours!r}")
    colours = list(colours)
    need = 1 if pattern == "solid" else 2
    if not need <= len(colours) <= 2:
        raise ConfigError(f"{key}.colours: pattern {pattern!r} needs {'1 or 2 colours' if need == 1 else '2 colours'}"
                          f" (primary, pattern colour); got {len(colours)}")
    rgb = [_colour(c, f"{key}.colours[{i}]") for i, c in enumerate(colours)]
    params = spec.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{key}.params must be a mapping (e.g. {{period: 6}}); got {params!r}")
    unknown = set(params) - {"period"}
    if unknown:
        raise ConfigError(f"{key}.params: unknown key(s) {sorted(map(str, unknown))}; valid keys: period")
    period = params.get("period")
    if period is not None:
        try:
            period = float(period)
        except (TypeError, ValueError):
            period = -1.0
        if not 3.0 <= period <= 16.0:
            raise ConfigError(f"{key}.params.period must be a number of pixels (at 32 px) in [3, 16]; "
                              f"got {params.get('period')!r}")
    return ObjectSpec(shape, pattern, rgb[0], rgb[1] if pattern != "solid" else None, period)


# ---- the renderer ----

def render(batch: SceneBatch, size: int = 32, object_spec=None) -> np.ndarray:
    """Render `batch` to uint8 (N, size, size, 3). `object_spec` (dict or ObjectSpec) overrides the look."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16 (got {size!r})")
    n, s = len(batch), size / BASE
    spec = parse_object_spec(object_spec) if object_spec is not None else None
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)

    shape = np.full(n, SHAPES.index(spec.shape)) if spec else batch.shape
    pattern = np.full(n, PATTERNS.index(spec.pattern)) if spec else batch.pattern
    if spec:
        rgb1 = np.broadcast_to(np.float32(spec.rgb), (n, 3))
        rgb2 = np.broadcast_to(np.float32(spec.rgb2 if spec.rgb2 else spec.rgb), (n, 3))
    else:
        rgb1 = COLOUR_TABLE[batch.colour]
        rgb2 = np.where((batch.colour2 >= 0)[:, None], COLOUR_TABLE[np.maximum(batch.colour2, 0)], rgb1)
    for t in ("faded", "dark"):
        m = batch.tint == TINTS.index(t)
        if m.any():
            rgb1 = np.where(m[:, None], tint_rgb(rgb1, t), rgb1)
            rgb2 = np.where(m[:, None], tint_rgb(rgb2, t), rgb2)

    img = backgrounds(size)[batch.background]  # fancy indexing copies

    # Geometry: local coordinates (object radius 1) and 32-px offsets from the object centre.
    r = (RADII[batch.size] * batch.scale).astype(np.float32)
    cen = CENTRES[batch.position, batch.size]
    cx = (cen[:, 0] + batch.dx).astype(np.float32)
    # A hat at the top would leave the image: move such objects down, but never near the centre position.
    drop = np.clip(CENTRES[POSITIONS.index("center"), batch.size, 1] - HAT_MIN_SEP - cen[:, 1], 0, HAT_DROP * r)
    hat_top = (batch.accessory == ACCESSORIES.index("hat")) & (batch.position == POSITIONS.index("top"))
    cy = (cen[:, 1] + batch.dy + np.where(hat_top, drop, 0)).astype(np.float32)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = grid[None, None, :] - cx[:, None, None]  # (n, 1, W) image fractions
    ys = grid[None, :, None] - cy[:, None, None]  # (n, H, 1)
    rr = r[:, None, None]
    u = np.broadcast_to(xs / rr, (n, size, size))
    v = np.broadcast_to(ys / rr, (n, size, size))
    px = (r * size)[:, None, None]  # pixels per local unit

    sd = np.empty((n, size, size), np.float32)
    for k, name in enumerate(SHAPES):
        idx = np.flatnonzero(shape == k)
        if len(idx):
            sd[idx] = SHAPE_SDF[name](u[idx], v[idx])
    dpx = sd * px  # signed distance in output pixels
    alpha = np.clip(0.5 - dpx, 0, 1)

    # Halo: behind the object.
    halo = batch.accessory == ACCESSORIES.index("halo")
    if halo.any():
        i = np.flatnonzero(halo)
        ring = np.abs(np.hypot(u[i], v[i]) - HALO_RADIUS) * px[i] - 0.85 * s
        img[i] = _mix(img[i], HALO_RGB, np.clip(0.5 - ring, 0, 1))

    # Fill: primary colour, pattern colour where the pattern is.
    X = np.broadcast_to(xs * BASE, (n, size, size))
    Y = np.broadcast_to(ys * BASE, (n, size, size))
    pa = np.zeros((n, size, size), np.float32)
    for k, name in enumerate(PATTERNS):
        if name == "solid":
            continue
        idx = np.flatnonzero(pattern == k)
        if len(idx):
            period = spec.period if spec and spec.period else PATTERN_PERIOD[name]
            pa[idx] = _pattern_alpha(name, X[idx], Y[idx], period, s)
    fill = rgb1[:, None, None, :] + pa[..., None] * (rgb2 - rgb1)[:, None, None, :]

    shiny = batch.tint == TINTS.index("shiny")
    if shiny.any():
        i = np.flatnonzero(shiny)
        hx = np.array([HIGHLIGHT_AT[SHAPES[k]][0] for k in shape[i]], np.float32)[:, None, None]
        hy = np.array([HIGHLIGHT_AT[SHAPES[k]][1] for k in shape[i]], np.float32)[:, None, None]
        hr = np.maximum(0.24 * px[i], 1.3 * s)
        d = np.hypot(u[i] - hx, v[i] - hy) * px[i] - hr
        fill[i] = _mix(fill[i], HIGHLIGHT_RGB, 0.9 * np.clip(0.5 - d, 0, 1))
    img = img + alpha[..., None] * (fill - img)

    outlined = batch.style == STYLES.index("outlined")
    if outlined.any():
        i = np.flatnonzero(outlined)
        dark = (rgb1[i] @ np.float32([0.299, 0.587, 0.114])) < 70
        line = np.where(dark[:, None], np.float32([245, 245, 245]), np.float32([15, 15, 15]))
        a = np.clip(0.5 - (np.abs(dpx[i]) - OUTLINE_HALF_WIDTH * s), 0, 1)
        img[i] = img[i] + a[..., None] * (line[:, None, None, :] - img[i])

    scarf = batch.accessory == ACCESSORIES.index("scarf")
    if scarf.any():
        i = np.flatnonzero(scarf)
        band = np.maximum(np.abs(v[i] - 0.3) - 0.17, sd[i] - 0.12) * px[i]
        img[i] = _mix(img[i], SCARF_RGB, np.clip(0.5 - band, 0, 1))

    hat = batch.accessory == ACCESSORIES.index("hat")
    if hat.any():
        i = np.flatnonzero(hat)
        top = np.array([SHAPE_TOP[SHAPES[k]] for k in shape[i]], np.float32)
        hu = np.minimum(r[i], HAT_MAX_UNIT)  # hat unit, image fractions
        anchor = cy[i] + top * r[i]  # silhouette top, image fraction
        anchor = anchor + np.maximum(0, -HAT_MAX_CROP * hu - (anchor - HAT_HEIGHT * hu))  # sink if cropped too much
        hu3 = hu[:, None, None]
        ui = xs[i] / hu3
        vi = (grid[None, :, None] - anchor[:, None, None]) / hu3
        ui, vi = np.broadcast_to(ui, (len(i), size, size)), np.broadcast_to(vi, (len(i), size, size))
        p = hu3 * size
        crown = _sd_box(ui, vi + 0.42, 0.3, 0.38)
        brim = _sd_box(ui, vi + 0.02, 0.56, 0.08)
        img[i] = _mix(img[i], HAT_RGB, np.clip(0.5 - np.minimum(crown, brim) * p, 0, 1))
        band = _sd_box(ui, vi + 0.17, 0.3, 0.07)
        img[i] = _mix(img[i], HAT_BAND_RGB, np.clip(0.5 - band * p, 0, 1))

    sketch = batch.style == STYLES.index("sketch")
    if sketch.any():
        i = np.flatnonzero(sketch)
        a = np.clip(0.5 - (np.abs(dpx[i]) - 0.6 * s), 0, 1)
        img[i] = _mix(_wash(img[i]), SKETCH_LINE, a)

    grainy = batch.style == STYLES.index("grainy")
    if grainy.any():
        i = np.flatnonzero(grainy)
        img[i] = img[i] + GRAIN_AMPLITUDE * grain(size)[None, :, :, None]

    return _to_uint8(img)
