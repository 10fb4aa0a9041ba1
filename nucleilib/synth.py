"""Synthetic fluorescence nuclei with exact instance labels: the project's built-in data set.

Each image is drawn in the order a microscope forms it:

1. **Geometry.** A per-image size scale (nuclei in one field have similar sizes) and density; nuclei are ellipses
   with a low-frequency wobbly boundary (radial harmonics 1-5) and a random orientation, plus a few compact, very
   bright mitotic nuclei and tiny micronuclei. Many nuclei are placed next to an earlier one, so clusters form.
2. **Labels.** Each pixel belongs to the nucleus whose scaled radial distance ``rho`` (0 at the centre, 1 on the
   boundary) is smallest, and is foreground where that ``rho < 1``: slight overlaps are split along a smooth curve
   and the labels stay disjoint. The label image is exactly the boundary the intensity is drawn from.
3. **Intensity.** A flat-topped profile with a soft edge, per-nucleus brightness (dim and bright nuclei in one
   field), chromatin texture (smoothed noise at two scales), optional dark nucleoli or bright chromocentres, and a
   darker seam where two nuclei press against each other.
4. **Optics and background.** Gaussian point-spread blur, a low uneven background (gradient and vignetting),
   optional cytoplasmic glow, out-of-focus nuclei and debris (none of them labelled).
5. **Camera.** Poisson photon counts, per-image gain and offset, Gaussian read noise, rounding and clipping: like
   an 8-bit camera (values up to 255, often only a few tens of grey levels, as in most 2018 Data Science Bowl
   images) or a 12-bit one (an offset of about 100-200 and a maximum of 4095, as in BBBC039).

Images are ``uint16`` so that both camera kinds fit one array; the loader normalizes each image by its own
percentiles, so a model sees the same [0, 1] range either way.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import relabel_sequential

_HARMONICS = np.arange(1, 6)  # low radial frequencies: egg, bean and lobed shapes with smooth boundaries
_MAX_NUCLEI = 42  # per 128 x 128 pixels
_MIN_SIZE = 16
_INTERPHASE, _MITOTIC, _MICRONUCLEUS = 0, 1, 2


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One sample spread evenly in log space between ``low`` and ``high``."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _field(rng: np.random.Generator, size: int) -> dict[str, float]:
    """Per-image choices: nucleus size and number, clustering, and the shares of mitotic nuclei and micronuclei."""
    # A third of the fields have small-to-medium nuclei (many DSB2018 images), the rest large ones (BBBC039-like).
    median_radius = _log_uniform(rng, 4.0, 11.0) if rng.random() < 0.35 else rng.uniform(9.0, 18.0)
    radius_spread = rng.uniform(0.08, 0.25)
    # Fraction of the field covered; fields of small nuclei are rarely as full as fields of large ones.
    # About 3% of the fields are empty, as in real tiles, so a model learns that noise is not a nucleus.
    fill = _log_uniform(rng, 0.035, 0.14 + 0.34 * np.clip((median_radius - 4.0) / 8.0, 0.0, 1.0))
    n_target = 0 if rng.random() < 0.03 else round(fill * size**2 / (np.pi * median_radius**2))
    n_target = int(np.clip(n_target, 0, round(_MAX_NUCLEI * (size / 128) ** 2)))
    cluster_prob = rng.uniform(0.1, 0.8) if rng.random() < 0.45 else 0.0
    min_gap = rng.uniform(0.78, 1.0)  # smallest centre distance / (r1 + r2) a placement may have
    mitotic_prob = 0.0 if rng.random() < 0.5 else rng.uniform(0.02, 0.12)
    micronucleus_prob = 0.0 if rng.random() < 0.7 else rng.uniform(0.03, 0.12)
    return {"median_radius": median_radius, "radius_spread": radius_spread, "n_target": n_target,
            "cluster_prob": cluster_prob, "min_gap": min_gap, "mitotic_prob": mitotic_prob,
            "micronucleus_prob": micronucleus_prob}


def _place_nuclei(rng: np.random.Generator, size: int, field: dict[str, float]) -> tuple[list, list, list, list]:
    """Centres ``xs``, ``ys``, ``radii`` and ``kinds`` of the nuclei, many next to an earlier one (clusters)."""
    min_gap, cluster_prob = field["min_gap"], field["cluster_prob"]
    xs, ys, radii, kinds = [], [], [], []  # type: ignore[var-annotated]
    for _ in range(int(field["n_target"])):
        kind = _MITOTIC if rng.random() < field["mitotic_prob"] else _INTERPHASE
        if kind == _INTERPHASE and rng.random() < field["micronucleus_prob"]:
            kind = _MICRONUCLEUS
        radius = field["median_radius"] * np.exp(rng.normal(0.0, field["radius_spread"]))
        if kind == _MITOTIC:
            radius *= rng.uniform(0.5, 0.75)
        elif kind == _MICRONUCLEUS:
            radius = rng.uniform(1.6, 3.2)
        radius = float(np.clip(radius, 1.5, 24.0))
        for _attempt in range(25):
            if xs and rng.random() < (0.95 if kind == _MICRONUCLEUS else cluster_prob):
                j = int(rng.integers(len(xs)))
                angle = rng.uniform(0.0, 2 * np.pi)
                dist = (radius + radii[j]) * rng.uniform(min_gap, 1.25)
                x, y = xs[j] + dist * np.cos(angle), ys[j] + dist * np.sin(angle)
            else:
                x, y = rng.uniform(-0.4 * radius, size + 0.4 * radius, 2)
            if not (-radius < x < size + radius and -radius < y < size + radius):
                continue
            if xs and (np.hypot(np.subtract(xs, x), np.subtract(ys, y)) / np.add(radii, radius)).min() < min_gap:
                continue
            xs.append(float(x))
            ys.append(float(y))
            radii.append(radius)
            kinds.append(kind)
            break
    return xs, ys, radii, kinds


def _sample_nuclei(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Per-image nucleus geometry, kinds and brightness, placed in clusters with limited overlap."""
    xs, ys, radii, kinds = _place_nuclei(rng, size, _field(rng, size))
    n = len(xs)
    kind_arr = np.array(kinds, dtype=np.int64)
    mitotic = kind_arr == _MITOTIC
    # Aspect ratio (long / short axis): interphase nuclei are mildly elongated; metaphase plates are bars.
    aspect = 1.0 + rng.gamma(2.0, (rng.uniform(1.15, 1.9) - 1.0) / 2.0, n)
    metaphase = rng.random(n) < 0.3
    aspect = np.where(mitotic, np.where(metaphase, rng.uniform(1.8, 3.0, n), rng.uniform(1.0, 1.3, n)), aspect)
    aspect = np.where(kind_arr == _MICRONUCLEUS, rng.uniform(1.0, 1.3, n), np.clip(aspect, 1.0, 3.0))
    irregularity = _log_uniform(rng, 0.015, 0.1)
    decay = (np.maximum(_HARMONICS, 2) / 2.0) ** 1.2  # higher harmonics are weaker: smooth boundaries
    harmonic_amp = rng.normal(0.0, 1.0, (n, len(_HARMONICS))) * irregularity / decay
    harmonic_amp[:, 0] *= 0.6  # the first harmonic makes eggs; too much of it just moves the nucleus
    harmonic_phase = rng.uniform(0.0, 2 * np.pi, (n, len(_HARMONICS)))

    brightness = np.exp(rng.normal(0.0, rng.uniform(0.06, 0.35), n))
    if rng.random() < 0.4:  # a dim subpopulation (e.g. G1 cells or weakly stained ones)
        dim = rng.random(n) < rng.uniform(0.05, 0.35)
        brightness = np.where(dim, brightness * rng.uniform(0.25, 0.55, n), brightness)
    brightness = np.where(mitotic, brightness * rng.uniform(1.8, 3.5, n), brightness)
    coarse_texture = np.full(n, _log_uniform(rng, 0.04, 0.35))
    fine_texture = np.where(mitotic, rng.uniform(0.15, 0.35, n), rng.uniform(0.02, 0.12))
    return {"x": np.array(xs), "y": np.array(ys), "radius": np.array(radii), "kind": kind_arr, "aspect": aspect,
            "angle": rng.uniform(0.0, np.pi, n), "harmonic_amp": harmonic_amp, "harmonic_phase": harmonic_phase,
            "brightness": brightness, "coarse_texture": coarse_texture, "fine_texture": fine_texture}


def _rasterize(nuclei: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smallest and second-smallest scaled radial distance ``rho`` per pixel, and the nearest nucleus.

    Returns ``(best_rho, second_rho, owner)``; ``owner`` is -1 where no nucleus is near.
    """
    best_rho = np.full((size, size), np.inf, dtype=np.float32)
    second_rho = np.full((size, size), np.inf, dtype=np.float32)
    owner = np.full((size, size), -1, dtype=np.int64)
    for k in range(len(nuclei["x"])):
        cx, cy, radius, aspect = nuclei["x"][k], nuclei["y"][k], nuclei["radius"][k], nuclei["aspect"][k]
        amp = nuclei["harmonic_amp"][k]
        # Boundary 1 + sum_h amp_h cos(h theta + phase_h) = 1 + Re(sum_h coef_h e^{i h theta}); powers of the
        # unit vector e^{i theta} by Horner's rule are much faster than arctan2 and one cos per harmonic.
        coef = (amp * np.exp(1j * nuclei["harmonic_phase"][k])).astype(np.complex64)
        semi_long, semi_short = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
        reach = semi_long * (1.0 + np.abs(amp).sum()) * 1.3 + 2.0  # covers rho up to ~1.3: the soft edge
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        cos, sin = np.cos(nuclei["angle"][k]), np.sin(nuclei["angle"][k])
        u = (dx * cos + dy * sin) / semi_long
        v = (dy * cos - dx * sin) / semi_short
        radial = np.hypot(u, v)
        direction = (u + 1j * v).astype(np.complex64) / np.maximum(radial, 1e-6)
        series = np.full(u.shape, coef[-1], np.complex64)
        for c in coef[-2::-1]:
            series = series * direction + c
        rho = radial / (1.0 + (series * direction).real)
        best, second, own = best_rho[y0:y1, x0:x1], second_rho[y0:y1, x0:x1], owner[y0:y1, x0:x1]
        closer = rho < best
        np.copyto(second, np.where(closer, best, np.minimum(second, rho)))
        np.copyto(best, np.where(closer, rho, best))
        own[closer] = k
    return best_rho, second_rho, owner


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
    return field / max(float(field.std()), 1e-6)


def _spots(size: int, ys: np.ndarray, xs: np.ndarray, heights: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of Gaussian spots of peak ``heights`` (a blurred impulse image: fast for many spots)."""
    impulses = np.zeros((size, size), np.float32)
    inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    np.add.at(impulses, (ys[inside].astype(int), xs[inside].astype(int)), heights[inside] * 2 * np.pi * sigma**2)
    return cv2.GaussianBlur(impulses, (0, 0), sigma)


def _per_pixel(values: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per-nucleus ``values`` spread to the pixels each nucleus owns; 0 where ``owner`` is -1."""
    return np.append(values, 0.0).astype(np.float32)[owner]


def _points_inside(rng: np.random.Generator, nuclei: dict[str, np.ndarray], which: np.ndarray,
                   per_nucleus: tuple[int, int], reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Random points (ys, xs) in the nuclei ``which``: ``per_nucleus`` low..high-1 each, within ``reach`` x radius."""
    k = np.repeat(which, rng.integers(*per_nucleus, len(which)))
    offset_r = nuclei["radius"][k] * reach * np.sqrt(rng.random(len(k)))
    offset_a = rng.uniform(0.0, 2 * np.pi, len(k))
    return nuclei["y"][k] + offset_r * np.sin(offset_a), nuclei["x"][k] + offset_r * np.cos(offset_a)


def _nucleus_signal(rng: np.random.Generator, nuclei: dict[str, np.ndarray], best_rho: np.ndarray,
                    second_rho: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Noise-free, unblurred nucleus intensity (1 = a typical nucleus)."""
    size = owner.shape[0]
    radius = _per_pixel(nuclei["radius"], owner)
    rho = np.minimum(best_rho, 4.0)
    second = np.minimum(second_rho, 4.0)
    # Soft edge: about one pixel wide around rho = 1 (partial-volume sampling of the true boundary).
    signal = np.clip((1.0 - rho) * radius + 0.5, 0.0, 1.0)
    dome = rng.uniform(0.0, 0.35)  # some nuclei are flat, some brighter in the middle
    signal *= 1.0 - dome * np.minimum(rho, 1.0) ** 2
    # Darker seam where two nuclei press together: the second nucleus is almost as close.
    seam_depth = rng.uniform(0.0, 0.6)
    gap_px = (second - rho) * radius
    signal *= 1.0 - seam_depth * np.exp(-0.5 * (gap_px / 1.2) ** 2)
    # Chromatin texture: log-normal modulation by smoothed noise at two scales.
    texture = (_per_pixel(nuclei["coarse_texture"], owner) * _smooth_noise(rng, size, rng.uniform(1.8, 3.5))
               + _per_pixel(nuclei["fine_texture"], owner) * _smooth_noise(rng, size, rng.uniform(0.6, 1.1)))
    signal *= np.exp(texture)
    big = np.flatnonzero((nuclei["radius"] >= 6.0) & (nuclei["kind"] == _INTERPHASE))
    if len(big) and rng.random() < 0.5:  # dark nucleoli, 1-3 per large nucleus
        ys, xs = _points_inside(rng, nuclei, big, (1, 4), 0.55)
        sigma = rng.uniform(1.0, 2.2)
        signal *= np.clip(1.0 - _spots(size, ys, xs, rng.uniform(0.15, 0.45, len(ys)), sigma), 0.3, 1.0)
    elif len(big) and rng.random() < 0.2:  # bright chromocentres (mouse cells)
        ys, xs = _points_inside(rng, nuclei, big, (3, 9), 0.75)
        signal *= 1.0 + _spots(size, ys, xs, rng.uniform(0.3, 1.0, len(ys)), rng.uniform(0.7, 1.3))
    return signal * _per_pixel(nuclei["brightness"], owner)


def _background(rng: np.random.Generator, size: int, signal: np.ndarray) -> np.ndarray:
    """Unlabelled light that is not in-focus nucleus: offset, gradient, glow, haze and debris."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    level = _log_uniform(rng, 0.005, 0.12)
    tilt = rng.normal(0.0, 0.5, 2)
    vignetting = rng.uniform(0.0, 0.8)
    background = level * np.clip(1.0 + tilt[0] * yy + tilt[1] * xx - vignetting * (yy**2 + xx**2), 0.2, None)
    if rng.random() < 0.5:  # glow of the cytoplasm around nuclei
        glow = cv2.GaussianBlur(signal, (0, 0), rng.uniform(4.0, 10.0))
        background += rng.uniform(0.03, 0.15) * glow
    if rng.random() < 0.12:  # out-of-focus nuclei from another plane: diffuse haze
        count = int(rng.integers(1, 5))
        sigma = rng.uniform(10.0, 18.0)
        background += _spots(size, rng.uniform(0, size, count), rng.uniform(0, size, count),
                              rng.uniform(0.04, 0.15, count), sigma)
    if rng.random() < 0.1:  # bright point-like debris, smaller than a micronucleus
        count = int(rng.integers(1, 6))
        background += _spots(size, rng.uniform(0, size, count), rng.uniform(0, size, count),
                              rng.uniform(0.3, 1.5, count), rng.uniform(0.5, 0.8))
    return background


def _camera(rng: np.random.Generator, light: np.ndarray) -> np.ndarray:
    """Photon noise, gain, offset, read noise and quantization of an 8-bit or 12-bit camera."""
    photons_per_nucleus = _log_uniform(rng, 80.0, 15000.0)
    expected = light * np.float32(photons_per_nucleus)
    flat = expected.ravel()
    kth = int(0.998 * (flat.size - 1))
    bright = max(float(np.partition(flat, kth)[kth]), 1.0)
    if rng.random() < 0.45:
        # 8-bit: dark offset, often only a few tens of grey levels, slight saturation now and then.
        max_value, offset, read_noise = 255, rng.uniform(0.0, 12.0), rng.uniform(0.2, 1.5)
        target = _log_uniform(rng, 25.0, 270.0)
    else:
        # 12-bit: offset of a scientific camera, from a narrow range (e.g. 150..600) to nearly full.
        max_value, offset, read_noise = 4095, rng.uniform(90.0, 200.0), rng.uniform(1.0, 6.0)
        target = _log_uniform(rng, 300.0, 4200.0)
    gain = np.float32(target / bright)
    # Above 20 photons, Poisson plus Gaussian read noise is one Gaussian (as good, several times faster);
    # below, photons are drawn exactly and the same normal draw gives the read noise.
    normal = rng.standard_normal(light.shape, dtype=np.float32)
    counts = gain * expected + np.sqrt(gain**2 * expected + np.float32(read_noise) ** 2) * normal
    few = expected < 20.0
    counts[few] = gain * rng.poisson(expected[few]) + np.float32(read_noise) * normal[few]
    return np.clip(np.rint(counts + np.float32(offset)), 0, max_value).astype(np.uint16)


def make_image(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic fluorescence image of nuclei and its exact instance labels.

    Every random choice comes from ``rng``: the same generator state gives the same image. ``size`` (an
    integer of at least 16, else ValueError) is the height and width in pixels; nucleus sizes are in pixels
    and do not scale with it.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` (size, size): 8-bit-like (at most 255) or 12-bit-like (at most 4095) camera values.
    labels : numpy.ndarray
        ``int32`` (size, size): 0 for background, 1..n for the nuclei (consecutive ids).

    Examples
    --------
    >>> image, labels = make_image(np.random.default_rng(3), size=64)
    >>> image.shape, image.dtype, labels.dtype, bool((np.unique(labels) == np.arange(labels.max() + 1)).all())
    ((64, 64), dtype('uint16'), dtype('int32'), True)
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"synth.make_image: size must be an integer >= {_MIN_SIZE}, got {size!r}")
    size = int(size)
    nuclei = _sample_nuclei(rng, size)
    best_rho, second_rho, owner = _rasterize(nuclei, size)
    signal = _nucleus_signal(rng, nuclei, best_rho, second_rho, owner)
    signal = cv2.GaussianBlur(signal, (0, 0), rng.uniform(0.6, 2.0))  # point-spread function
    light = np.maximum(signal + _background(rng, size, signal), 0.0)
    image = _camera(rng, light)
    # Consecutive ids 1..n: nuclei hidden under others or outside the image leave no gap.
    return image, relabel_sequential(np.where(best_rho < 1.0, owner + 1, 0))[0].astype(np.int32)


def make_dataset(n: int = 2000, size: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw a synthetic data set in the project's ``.npz`` layout.

    ``n`` images (0 or more) of ``size`` x ``size`` pixels (at least 16) as :func:`make_image` draws them;
    image ``i`` from ``np.random.default_rng([seed, i])``, so it is the same whatever ``n`` is: a small set
    is the start of a large one. ValueError for a negative ``n`` or ``seed``, or ``size`` below 16.

    Returns
    -------
    dict
        ``images`` ``uint16`` (n, size, size); ``masks`` ``uint8`` (n, size, size) in {0, 1};
        ``labels`` ``int32`` (n, size, size) instance labels with ``masks == (labels > 0)``.

    Examples
    --------
    >>> data = make_dataset(n=3, size=32, seed=7)
    >>> data["images"].shape, data["labels"].dtype, bool(np.all(data["masks"] == (data["labels"] > 0)))
    ((3, 32, 32), dtype('int32'), True)
    >>> bool((make_dataset(n=1, size=32, seed=7)["images"][0] == data["images"][0]).all())   # the start of a larger set
    True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"synth.make_dataset: n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synth.make_dataset: seed must be a non-negative integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"synth.make_dataset: size must be an integer >= {_MIN_SIZE}, got {size!r}")
    images = np.empty((n, size, size), np.uint16)
    labels = np.empty((n, size, size), np.int32)
    for i in range(n):
        images[i], labels[i] = make_image(np.random.default_rng([int(seed), i]), int(size))
    return {"images": images, "masks": (labels > 0).astype(np.uint8), "labels": labels}
