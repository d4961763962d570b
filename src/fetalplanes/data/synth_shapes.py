"""Geometry and per-class anatomy of the SYNTHETIC ultrasound phantoms (tests/demo only).

This module is the drawing half of :mod:`fetalplanes.data.synth`. Nothing here is real
anatomy or real patient data: it paints simple, plausible-looking structures into a float
*echogenicity* map so that tests and demos have FETAL_PLANES_DB-shaped data to run on.

A :class:`Canvas` holds the pixel grid, its polar coordinates relative to the transducer
apex of the fan (:class:`Fan`), the echogenicity map (``echo``; ~0.5 is soft tissue, ~0
is fluid, >1.5 is bone) and a multiplicative acoustic-shadow map. Each ``draw_*``
function paints one class's key structure at a class-independent placement
``(cx, cy, a)`` (centre and size) and returns its boolean mask, which is what an
explanation (Grad-CAM) should point at. All work is vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

Placement = tuple[float, float, float]  # (cx, cy, a): centre (px) and size unit (px)
# Size unit of the key structure as a fraction of the fan depth (a skull is ~2a x 1.6a).
SIZE_RANGE = (0.14, 0.26)
# How far (in units of a) the centre stays from the fan's edges: a structure may be cut by the
# edge, as in real scans when the probe is off-centre; its mask is cut with it.
EDGE_MARGIN = 0.6


@dataclass(frozen=True)
class Fan:
    """Sector field of view: apex (ax, ay), near/far radii and half opening angle (rad)."""

    ax: float
    ay: float
    r_near: float
    r_far: float
    half: float

    @property
    def depth(self) -> float:
        return self.r_far - self.r_near

    def point(self, r: float, theta: float) -> tuple[float, float]:
        """Pixel (x, y) at range ``r`` along the beam at angle ``theta`` (0 = straight down)."""
        return self.ax + r * float(np.sin(theta)), self.ay + r * float(np.cos(theta))


def random_fan(rng: np.random.Generator, width: int, height: int) -> Fan:
    """Draw a fan geometry; its distribution never depends on the class."""
    top = height * rng.uniform(0.03, 0.08)
    bottom = height * rng.uniform(0.93, 0.99)
    apex_back = height * rng.uniform(0.2, 0.9)
    ay = top - apex_back
    r_far = bottom - ay
    far_width = width * rng.uniform(0.72, 0.98)
    half = float(np.clip(np.arcsin(min(1.0, far_width / 2 / r_far)), np.radians(28), np.radians(50)))
    ax = width / 2 + width * rng.uniform(-0.03, 0.03)
    return Fan(ax=ax, ay=ay, r_near=apex_back, r_far=r_far, half=half)


def blur121(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (a small PSF), edge-padded; ``passes`` times."""
    out = a.astype(np.float32, copy=True)
    for _ in range(passes):
        p = np.pad(out, 1, mode="edge")
        out = (p[:-2] + 2 * p[1:-1] + p[2:])[:, 1:-1] * np.float32(0.25)
        p = np.pad(out, 1, mode="edge")
        out = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:])[1:-1] * np.float32(0.25)
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, aspect: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-ish-std smooth noise, features ~``cell`` px tall, ``aspect`` x wider."""
    h, w = shape
    small = rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell / aspect) + 2)))
    img = Image.fromarray(small.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    return arr / (float(arr.std()) + 1e-6)


def hypot(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """sqrt(x**2 + y**2); several times faster than ``np.hypot`` on float32 arrays."""
    return np.sqrt(x * x + y * y)


def soft_fill(rho: np.ndarray, edge: float) -> np.ndarray:
    """Alpha of a filled shape given a normalised radius ``rho`` (inside < 1), soft edge."""
    return np.clip((1.0 - rho) / max(edge, 1e-3) + 0.5, 0.0, 1.0)


def gauss(d: np.ndarray, width: float) -> np.ndarray:
    x = d * np.float32(1.0 / max(width, 1e-3))
    return np.exp(np.float32(-0.5) * x * x)


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 14) -> np.ndarray:
    """Points (n, 2) of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


@dataclass
class Canvas:
    """Pixel grid + polar coordinates + echogenicity and shadow maps of one image."""

    fan: Fan
    xx: np.ndarray
    yy: np.ndarray
    r: np.ndarray
    theta: np.ndarray
    echo: np.ndarray
    shadow: np.ndarray

    @classmethod
    def create(cls, fan: Fan, width: int, height: int) -> "Canvas":
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        dx, dy = xx - fan.ax, yy - fan.ay
        return cls(
            fan=fan, xx=xx, yy=yy, r=hypot(dx, dy), theta=np.arctan2(dx, dy),
            echo=np.zeros((height, width), np.float32), shadow=np.ones((height, width), np.float32),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.echo.shape  # type: ignore[return-value]

    @property
    def inside(self) -> np.ndarray:
        f = self.fan
        return (self.r >= f.r_near) & (self.r <= f.r_far) & (np.abs(self.theta) <= f.half)

    def noise(self, rng: np.random.Generator, cell: float, aspect: float = 1.0) -> np.ndarray:
        return smooth_noise(rng, self.shape, cell, aspect)

    def place(self, rng: np.random.Generator) -> Placement:
        """Class-independent centre and size of the key structure: anywhere inside the fan.

        The size unit ``a`` (a skull's semi-major axis) is drawn per image (``SIZE_RANGE`` of
        the fan depth); the centre is uniform over the AREA of the fan less a border of
        ``EDGE_MARGIN * a`` (range drawn with density proportional to r, angle uniform), so no
        depth or side of the fan is preferred and an "always look at the middle" map gains
        little over chance. Rotation is drawn by each ``draw_*`` function.
        """
        f = self.fan
        a = f.depth * rng.uniform(*SIZE_RANGE)
        lo, hi = f.r_near + EDGE_MARGIN * a, f.r_far - EDGE_MARGIN * a
        for _ in range(8):
            r_c = float(np.sqrt(rng.uniform(lo * lo, hi * hi)))
            th_room = f.half - EDGE_MARGIN * a / r_c
            if th_room > 0:
                break
            a *= 0.85  # a fan too narrow for this size: shrink and redraw
            lo, hi = f.r_near + EDGE_MARGIN * a, f.r_far - EDGE_MARGIN * a
        th_c = rng.uniform(-1.0, 1.0) * max(th_room, 0.0)
        cx, cy = f.point(r_c, th_c)
        return cx, cy, a

    def spot_away(self, rng: np.random.Generator, at: Placement, clearance: float, tries: int = 12) -> tuple[float, float]:
        """A random point inside the fan at least ``clearance`` x ``a`` from the structure's centre.

        For distractors that must sit *elsewhere*; after ``tries`` misses the last draw is kept.
        """
        f, (cx, cy, a) = self.fan, at
        px, py = cx, cy
        for _ in range(tries):
            px, py = f.point(f.r_near + rng.uniform(0.04, 0.96) * f.depth, rng.uniform(-0.92, 0.92) * f.half)
            if (px - cx) ** 2 + (py - cy) ** 2 >= (clearance * a) ** 2:
                break
        return px, py

    def dist_to(self, px: float, py: float) -> np.ndarray:
        return hypot(self.xx - np.float32(px), self.yy - np.float32(py))

    def rotated(self, cx: float, cy: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates (u along ``phi``, v across) centred on (cx, cy)."""
        c, s = np.float32(np.cos(phi)), np.float32(np.sin(phi))
        dx, dy = self.xx - np.float32(cx), self.yy - np.float32(cy)
        return c * dx + s * dy, -s * dx + c * dy

    def paint(self, alpha: np.ndarray, value: float | np.ndarray) -> None:
        """Composite ``value`` over the echo map with opacity ``alpha``."""
        self.echo = self.echo * (1 - alpha) + value * alpha

    def seg_dist(self, pts: np.ndarray, reach: float) -> np.ndarray:
        """Distance to the polyline ``pts`` (n, 2); +inf farther than ~``reach`` from its box."""
        h, w = self.shape
        out = np.full((h, w), np.inf, np.float32)
        x0, x1 = max(0, int(pts[:, 0].min() - reach)), min(w, int(pts[:, 0].max() + reach) + 2)
        y0, y1 = max(0, int(pts[:, 1].min() - reach)), min(h, int(pts[:, 1].max() + reach) + 2)
        if x0 >= x1 or y0 >= y1:
            return out
        xs, ys = self.xx[y0:y1, x0:x1], self.yy[y0:y1, x0:x1]
        best = np.full(xs.shape, np.inf, np.float32)
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
            ex, ey = np.float32(bx - ax), np.float32(by - ay)
            dx, dy = xs - np.float32(ax), ys - np.float32(ay)
            t = np.clip((dx * ex + dy * ey) / max(float(ex * ex + ey * ey), 1e-6), 0.0, 1.0)
            best = np.minimum(best, hypot(dx - t * ex, dy - t * ey))
        out[y0:y1, x0:x1] = best
        return out

    def cast_shadow(self, pts: np.ndarray, strength: float, soft: float = 6.0, max_gap: int = 4) -> None:
        """Darken everything beyond the far side of ``pts`` (n, 2) along the beam lines."""
        f, k = self.fan, 128
        th = np.arctan2(pts[:, 0] - f.ax, pts[:, 1] - f.ay)
        rr = hypot(pts[:, 0] - f.ax, pts[:, 1] - f.ay)
        lo, hi = -1.2 * f.half, 1.2 * f.half
        rmax = np.full(k, -np.inf)
        np.maximum.at(rmax, np.clip(((th - lo) / (hi - lo) * k).astype(int), 0, k - 1), rr)
        hit = np.isfinite(rmax)
        occ = np.flatnonzero(hit)
        if occ.size == 0:
            return
        near = np.convolve(hit.astype(float), np.ones(2 * max_gap + 1), mode="same") > 0  # bridge small gaps only
        rb = np.where(near, np.interp(np.arange(k), occ, rmax[occ]), np.inf)
        pix = np.clip(((self.theta - lo) / (hi - lo) * k).astype(int), 0, k - 1)
        behind = np.clip((self.r - rb[pix].astype(np.float32)) / soft, 0.0, 1.0)
        self.shadow *= 1.0 - np.float32(strength) * behind


def ellipse_points(cx: float, cy: float, a: float, b: float, phi: float, n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    u, v = a * np.cos(t), b * np.sin(t)
    c, s = np.cos(phi), np.sin(phi)
    return np.stack([cx + c * u - s * v, cy + s * u + c * v], axis=1)


def blob_rho(cv: Canvas, rng: np.random.Generator, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Normalised radius of an irregular blob (random low harmonics of the outline)."""
    phi = rng.uniform(0, np.pi)
    u, v = cv.rotated(cx, cy, phi)
    psi = np.arctan2(v / b, u / a)
    wobble = 1.0 + sum(rng.uniform(0, 0.12) * np.cos(k * psi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return hypot(u / a, v / b) / wobble


def ring_echo(cv: Canvas, rho: np.ndarray, scale: float, thick: float, cx: float, cy: float) -> np.ndarray:
    """Bright ring along rho == 1, strongest where its normal is parallel to the beam."""
    ny = np.abs(cv.yy - cy) / (hypot(cv.xx - cx, cv.yy - cy) + 1e-3)
    return gauss((rho - 1.0) * scale, thick) * (0.35 + 0.65 * ny)


# --------------------------------------------------------------------- fetal brain
def _thalamic(cv: Canvas, u: np.ndarray, v: np.ndarray, a: float, b: float) -> None:
    for side in (-1.0, 1.0):
        rho = hypot((u - 0.06 * a) / (0.19 * a), (v - side * 0.12 * b) / (0.1 * b))
        cv.paint(soft_fill(rho, 0.3), 0.1)
    csp = np.maximum(np.abs(u + 0.36 * a) / (0.09 * a), np.abs(v) / (0.05 * b))
    cv.paint(soft_fill(csp, 0.3), 0.03)
    cv.echo += 0.9 * gauss(np.abs(csp - 1.0) * 0.05 * b, 0.012 * a)


def _cerebellum(cv: Canvas, u: np.ndarray, v: np.ndarray, a: float, b: float) -> None:
    cm = hypot((u - 0.74 * a) / (0.1 * a), v / (0.3 * b))
    cv.paint(soft_fill(cm, 0.3), 0.03)
    for side in (-1.0, 1.0):
        rho = hypot((u - 0.5 * a) / (0.13 * a), (v - side * 0.15 * b) / (0.14 * b))
        cv.paint(soft_fill(rho, 0.3), 0.18)
        cv.echo += 1.2 * gauss((rho - 1.0) * 0.13 * a, 0.015 * a)
    vermis = hypot((u - 0.5 * a) / (0.1 * a), v / (0.06 * b))
    cv.paint(soft_fill(vermis, 0.4), 1.3)


def _ventricular(cv: Canvas, u: np.ndarray, v: np.ndarray, a: float, b: float, side: float) -> None:
    rho = hypot((u - 0.2 * a) / (0.45 * a), (v - side * 0.38 * b) / (0.09 * b))
    cv.paint(soft_fill(rho, 0.3), 0.04)
    cv.echo += 1.0 * gauss((rho - 1.0) * 0.09 * b, 0.012 * a)
    plexus = hypot((u - 0.4 * a) / (0.16 * a), (v - side * 0.38 * b) / (0.06 * b))
    cv.paint(soft_fill(plexus, 0.4), 1.5)
    horn = hypot((u + 0.42 * a) / (0.12 * a), (np.abs(v) - 0.13 * b) / (0.04 * b))
    cv.paint(soft_fill(horn, 0.4), 0.05)


def draw_brain(cv: Canvas, rng: np.random.Generator, at: Placement, brain_plane: str) -> np.ndarray:
    """Skull ellipse + midline echo + sub-plane landmarks. Mask: the filled skull."""
    cx, cy, a = at
    b = a * rng.uniform(0.74, 0.86)
    phi = rng.uniform(-0.45, 0.45) + (np.pi if rng.random() < 0.5 else 0.0)
    u, v = cv.rotated(cx, cy, phi)
    rho = hypot(u / a, v / b)
    cv.paint(soft_fill(rho, 0.04), rng.uniform(0.28, 0.4) * (1 + 0.15 * cv.noise(rng, a / 6)))
    mid = gauss(v, 0.012 * a) * soft_fill(np.abs(u) / (0.86 * a), 0.1)
    cv.echo += rng.uniform(0.7, 1.1) * mid
    if brain_plane == "Trans-thalamic":
        _thalamic(cv, u, v, a, b)
    elif brain_plane == "Trans-cerebellum":
        _cerebellum(cv, u, v, a, b)
    elif brain_plane == "Trans-ventricular":
        _ventricular(cv, u, v, a, b, 1.0 if rng.random() < 0.5 else -1.0)
    thick = a * rng.uniform(0.035, 0.055)
    cv.echo += rng.uniform(1.8, 2.6) * ring_echo(cv, rho, 0.5 * (a + b), thick, cx, cy)
    cv.cast_shadow(ellipse_points(cx, cy, a, b, phi), rng.uniform(0.15, 0.35), soft=0.3 * a)
    return rho <= 1.0 + 2.0 * thick / b


# --------------------------------------------------------------------- fetal trunk
def _trunk(cv: Canvas, rng: np.random.Generator, at: Placement, fill: float) -> tuple:
    cx, cy, a = at
    b = a * rng.uniform(0.84, 1.0)
    phi = rng.uniform(0, 2 * np.pi)
    u, v = cv.rotated(cx, cy, phi)
    rho = hypot(u / a, v / b)
    cv.paint(soft_fill(rho, 0.04), fill * (1 + 0.12 * cv.noise(rng, a / 5)))
    cv.echo += rng.uniform(0.5, 0.9) * ring_echo(cv, rho, a, 0.018 * a, cx, cy)
    return u, v, rho, b, phi


def _spine(cv: Canvas, rng: np.random.Generator, at: Placement, psi: float) -> None:
    """Three bright ossification centres (body + laminae) at the trunk's edge + shadow."""
    cx, cy, a = at
    pts = []
    for rad, tang in ((0.6, 0.0), (0.82, 0.13), (0.82, -0.13)):
        pts.append((cx + a * (rad * np.cos(psi) - tang * np.sin(psi)), cy + a * (rad * np.sin(psi) + tang * np.cos(psi))))
    level = rng.uniform(1.8, 2.6)
    for px, py in pts:
        cv.echo += level * gauss(cv.dist_to(px, py), 0.05 * a)
    cv.cast_shadow(np.array(pts), rng.uniform(0.3, 0.55), soft=0.1 * a)


def draw_abdomen(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """Round abdomen, dark stomach bubble, umbilical vein, bright spine. Mask: abdomen."""
    cx, cy, a = at
    u, v, rho, b, _ = _trunk(cv, rng, at, rng.uniform(0.4, 0.55))
    psi = rng.uniform(0, 2 * np.pi)
    sx, sy = cx + 0.32 * a * np.cos(psi), cy + 0.32 * a * np.sin(psi)
    cv.paint(soft_fill(blob_rho(cv, rng, sx, sy, a * rng.uniform(0.2, 0.28), a * rng.uniform(0.13, 0.18)), 0.15), 0.02)
    vein_dir = psi + np.pi * rng.uniform(0.45, 0.7) * (1 if rng.random() < 0.5 else -1)
    p0 = np.array([cx, cy]) + 0.05 * a * np.array([np.cos(vein_dir), np.sin(vein_dir)])
    p2 = np.array([cx, cy]) + 0.55 * a * np.array([np.cos(vein_dir), np.sin(vein_dir)])
    p1 = (p0 + p2) / 2 + 0.12 * a * np.array([np.cos(psi), np.sin(psi)])
    cv.paint(gauss(cv.seg_dist(bezier(p0, p1, p2, 8), 0.15 * a), 0.035 * a), 0.06)
    _spine(cv, rng, at, psi + np.pi + rng.uniform(-0.6, 0.6))
    return rho <= 1.0


def draw_thorax(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """Round thorax: four-chamber heart with bright septum cross, rib arcs. Mask: thorax."""
    cx, cy, a = at
    u, v, rho, b, phi = _trunk(cv, rng, at, rng.uniform(0.6, 0.8))
    psi = rng.uniform(0, 2 * np.pi)
    hx, hy = cx + 0.2 * a * np.cos(psi), cy + 0.2 * a * np.sin(psi)
    hu, hv = cv.rotated(hx, hy, rng.uniform(0, np.pi))
    ha, hb = a * rng.uniform(0.48, 0.58), a * rng.uniform(0.4, 0.48)
    heart = hypot(hu / ha, hv / hb)
    cv.paint(soft_fill(heart, 0.08), rng.uniform(0.7, 0.95))
    av = rng.uniform(-0.25, -0.1) * ha  # atrioventricular plane: atria smaller than ventricles
    sep_u = np.clip((np.abs(hu - av) - 0.045 * ha) / (0.04 * ha), 0, 1)
    sep_v = np.clip((np.abs(hv) - 0.05 * hb) / (0.04 * hb), 0, 1)
    inner = soft_fill(heart / 0.8, 0.15)
    cv.paint(inner * sep_u * sep_v, 0.04)
    cv.echo += 0.6 * inner * (1 - sep_u * sep_v)
    psi_ribs = rng.uniform(0, 2 * np.pi) + np.arange(rng.integers(3, 6)) * rng.uniform(0.7, 1.0)
    ang = np.arctan2(v / b, u / a)
    shell = gauss((rho - 1.02) * a, 0.03 * a)
    pts = ellipse_points(cx, cy, a * 1.02, b * 1.02, phi, 192)
    tt = np.linspace(0, 2 * np.pi, 192, endpoint=False)
    near = np.zeros(tt.shape, bool)
    for p in psi_ribs.tolist():
        arc = shell * soft_fill(np.abs((ang - p + np.pi) % (2 * np.pi) - np.pi) / 0.22, 0.4)
        cv.echo += rng.uniform(1.8, 2.5) * arc
        near |= np.abs((tt - p + np.pi) % (2 * np.pi) - np.pi) < 0.18
    cv.cast_shadow(pts[near], rng.uniform(0.3, 0.5), soft=0.1 * a, max_gap=2)
    if rng.random() < 0.5:
        _spine(cv, rng, at, psi + np.pi + rng.uniform(-0.5, 0.5))
    return rho <= 1.0


# --------------------------------------------------------------------- femur, cervix
def _curve(rng: np.random.Generator, at: Placement, length: float, phi: float, bend: float) -> np.ndarray:
    cx, cy, _ = at
    d = np.array([np.cos(phi), np.sin(phi)])
    n = np.array([-d[1], d[0]])
    c = np.array([cx, cy])
    return bezier(c - d * length / 2, c + n * bend * length, c + d * length / 2)


def draw_femur(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """Bright, thick, slightly curved shaft with an acoustic shadow. Mask: dilated shaft."""
    cx, cy, a = at
    length, w = a * rng.uniform(2.0, 2.6), a * rng.uniform(0.085, 0.13)
    phi = rng.uniform(-0.5, 0.5) + (np.pi if rng.random() < 0.5 else 0.0)
    pts = _curve(rng, at, length, phi, rng.uniform(-0.07, 0.07))
    u, v = cv.rotated(cx, cy, phi)
    thigh = hypot(u / (0.62 * length), v / (0.24 * length))
    cv.paint(0.7 * soft_fill(thigh, 0.2), rng.uniform(0.35, 0.5))
    d = cv.seg_dist(pts, 2.5 * w)
    cv.echo += rng.uniform(1.8, 2.6) * gauss(np.maximum(d - 0.4 * w, 0), 0.25 * w)
    for end in (pts[0], pts[-1]):
        cv.echo += rng.uniform(0.5, 1.0) * gauss(cv.dist_to(end[0], end[1]), 0.7 * w)
    cv.cast_shadow(pts, rng.uniform(0.6, 0.85), soft=1.5 * w)
    return d <= 1.8 * w


def draw_cervix(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """Elongated cervical stroma band with a bright canal line in a dark mucosa. Mask: band."""
    _, _, a = at
    length, t = a * rng.uniform(2.3, 3.0), a * rng.uniform(0.7, 0.95)
    pts = _curve(rng, at, length, rng.uniform(-0.6, 0.6), rng.uniform(-0.12, 0.12))
    d = cv.seg_dist(pts, 0.6 * t)
    band = soft_fill(d / (0.5 * t), 0.25)
    cv.paint(band, rng.uniform(1.4, 1.9) * (1 + 0.2 * cv.noise(rng, t / 4, 2.0)))
    cv.echo += rng.uniform(0.3, 0.6) * gauss(d - 0.5 * t, 0.03 * t)
    di = cv.seg_dist(pts[2:-2], 0.6 * t)
    cv.echo *= 1 - 0.5 * gauss(di, 0.17 * t)
    cv.paint(soft_fill(di / (0.05 * t), 0.4), 0.06)
    cv.echo += rng.uniform(2.0, 2.8) * gauss(di, 0.016 * t + 0.5)
    return d <= 0.5 * t


# --------------------------------------------------------------------- other
def _other_blobs(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    cx, cy, a = at
    rho = blob_rho(cv, rng, cx, cy, a * rng.uniform(0.6, 1.0), a * rng.uniform(0.4, 0.8))
    cv.paint(soft_fill(rho, 0.1), rng.uniform(0.02, 0.15) if rng.random() < 0.5 else rng.uniform(0.9, 1.3))
    for _ in range(rng.integers(0, 3)):
        ox, oy = cx + rng.uniform(-1.2, 1.2) * a, cy + rng.uniform(-0.9, 0.9) * a
        small = blob_rho(cv, rng, ox, oy, a * rng.uniform(0.2, 0.4), a * rng.uniform(0.15, 0.3))
        cv.paint(soft_fill(small, 0.15) * (rho > 1.05), rng.uniform(0.05, 1.2))
    return rho <= 1.0


def _other_placenta(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    _, _, a = at
    pts = _curve(rng, at, a * rng.uniform(2.6, 3.4), rng.uniform(-0.4, 0.4), rng.uniform(-0.15, 0.15))
    t = a * rng.uniform(0.5, 0.8)
    d = cv.seg_dist(pts, 0.6 * t)
    cv.paint(soft_fill(d / (0.5 * t), 0.1), rng.uniform(0.85, 1.1) * (1 + 0.35 * cv.noise(rng, t / 5)))
    side = cv.seg_dist(pts + np.array([0.0, -0.5 * t if rng.random() < 0.5 else 0.5 * t]), 0.15 * a)
    cv.echo += rng.uniform(0.7, 1.2) * gauss(side, 0.025 * a + 0.5)
    return d <= 0.5 * t


def _other_limb(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    cx, cy, a = at
    phi, length = rng.uniform(0, np.pi), a * rng.uniform(1.1, 1.6)
    u, v = cv.rotated(cx, cy, phi)
    cv.paint(soft_fill(hypot(u / (0.65 * length), v / (0.3 * length)), 0.15), rng.uniform(0.35, 0.5))
    w, gap = a * rng.uniform(0.035, 0.05), a * rng.uniform(0.16, 0.24)
    dist = np.full(cv.shape, np.inf, np.float32)
    for off in (-gap / 2, gap / 2):
        shift = np.array([-np.sin(phi), np.cos(phi)]) * off
        bone = _curve(rng, (cx + shift[0], cy + shift[1], a), length * rng.uniform(0.85, 1.0), phi, 0.02)
        dist = np.minimum(dist, cv.seg_dist(bone, 3 * w))
        cv.cast_shadow(bone, rng.uniform(0.3, 0.5), soft=2 * w)
    cv.echo += rng.uniform(1.3, 2.0) * gauss(np.maximum(dist - 0.3 * w, 0), 0.35 * w)
    return hypot(u / (0.6 * length), v / (0.22 * length)) <= 1.0


def _other_profile(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    cx, cy, a = at
    phi = rng.uniform(-0.5, 0.5) + np.pi / 2
    u, v = cv.rotated(cx, cy, phi)
    bumps = (0.12 * gauss(u + 0.1 * a, 0.1 * a) + 0.06 * gauss(u - 0.25 * a, 0.05 * a)
             + 0.07 * gauss(u - 0.45 * a, 0.07 * a) - 0.05 * gauss(u - 0.35 * a, 0.04 * a))
    edge = v - a * (bumps - 0.15 * (u / a) ** 2)
    span = soft_fill(np.abs(u) / (1.1 * a), 0.2)
    cv.paint(span * soft_fill(np.clip(-edge / (0.8 * a), 0, 9), 0.1), rng.uniform(0.03, 0.1))
    cv.paint(span * np.clip(edge / (0.05 * a), 0, 1), rng.uniform(0.45, 0.65))
    cv.echo += rng.uniform(1.0, 1.6) * span * gauss(edge, 0.03 * a)
    return (np.abs(edge) <= 0.15 * a) & (np.abs(u) <= 1.0 * a)


def _other_tissue(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    cx, cy, a = at
    rho = blob_rho(cv, rng, cx, cy, a * rng.uniform(0.5, 0.9), a * rng.uniform(0.4, 0.7))
    cv.echo *= 1 + rng.uniform(0.2, 0.4) * soft_fill(rho, 0.3) * np.clip(1 + 0.5 * cv.noise(rng, a / 4), 0, 3)
    return rho <= 1.0


OTHER_KINDS: dict[str, Callable[[Canvas, np.random.Generator, Placement], np.ndarray]] = {
    "blobs": _other_blobs,
    "placenta": _other_placenta,
    "limb": _other_limb,
    "profile": _other_profile,
    "tissue": _other_tissue,
}


def draw_other(cv: Canvas, rng: np.random.Generator, at: Placement) -> np.ndarray:
    """A varied non-standard view; the mask is the main object drawn."""
    kind = list(OTHER_KINDS)[int(rng.integers(len(OTHER_KINDS)))]
    return OTHER_KINDS[kind](cv, rng, at)
