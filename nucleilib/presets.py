"""Run presets shared by the notebooks and the command line.

Three sizes of the same story:

- ``fast``: what CI and ``make test`` use (``NUCLEILIB_FAST=1``): small data, a few epochs.
- ``default``: what ``make run`` uses: every chapter in a few minutes on a laptop CPU.
- ``full``: the source project's run (``NUCLEILIB_PRESET=full``): 2000 images, up to 300 epochs.
"""

from __future__ import annotations

import os

PRESETS: dict[str, dict[str, int]] = {
    "fast": {"n_images": 200, "epochs": 3, "max_minutes": 2},
    "default": {"n_images": 600, "epochs": 12, "max_minutes": 4},
    "full": {"n_images": 2000, "epochs": 300, "max_minutes": 24 * 60},
}


def preset_name() -> str:
    """Name of the active preset, from the environment.

    ``NUCLEILIB_FAST=1`` selects ``"fast"``; otherwise ``NUCLEILIB_PRESET`` (``fast``,
    ``default`` or ``full``) is used, and ``"default"`` when neither is set.

    Returns
    -------
    str
        One of the keys of :data:`PRESETS`.

    Examples
    --------
    >>> preset_name() in PRESETS
    True
    """
    if os.environ.get("NUCLEILIB_FAST", "") not in ("", "0"):
        return "fast"
    name = os.environ.get("NUCLEILIB_PRESET", "default").strip().lower() or "default"
    if name not in PRESETS:
        raise ValueError(f"NUCLEILIB_PRESET={name!r} is not one of {sorted(PRESETS)}")
    return name


def preset() -> dict[str, int]:
    """Settings of the active preset (a copy; see :func:`preset_name`).

    Returns
    -------
    dict
        ``n_images``, ``epochs`` and ``max_minutes`` for the notebooks.

    Examples
    --------
    >>> sorted(preset())
    ['epochs', 'max_minutes', 'n_images']
    """
    return dict(PRESETS[preset_name()])
