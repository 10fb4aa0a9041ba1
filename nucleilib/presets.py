"""Run presets: one table of three sizes, for the chapters and for the ``train`` command.

``fast`` is what CI and ``make test`` use (``NUCLEILIB_FAST=1``); ``default`` what ``make run`` uses (every chapter
in a few minutes on a laptop CPU); ``full`` the source project's run (``NUCLEILIB_PRESET=full``). ``chapters``:
the data size and the short training runs inside the notebooks. ``train``: ``python -m nucleilib train --preset``
(``train.TrainSettings.from_preset``), which trains the shipped model: longer, on at most ``max_images`` images.
The CPU presets use a base-8 U-Net, which reaches a higher Dice than base 16 within the same minutes on a CPU.
"""

from __future__ import annotations

import os

PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"chapters": {"n_images": 200, "epochs": 3, "max_minutes": 2},
             "train": {"epochs": 15, "max_minutes": 5.0, "max_images": 600, "base": 8, "depth": 4, "batch_size": 16}},
    "default": {"chapters": {"n_images": 600, "epochs": 12, "max_minutes": 4},
                "train": {"epochs": 40, "max_minutes": 30.0, "max_images": None, "base": 8, "depth": 4,
                          "batch_size": 16}},
    "full": {"chapters": {"n_images": 2000, "epochs": 300, "max_minutes": 24 * 60},
             "train": {"epochs": 300, "max_minutes": None, "max_images": None, "base": 16, "depth": 4,
                       "batch_size": 16}},
}


def preset_name() -> str:
    """The active preset: ``"fast"`` if ``NUCLEILIB_FAST=1``, else ``NUCLEILIB_PRESET``, else ``"default"``.

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
    """The chapters' settings of the active preset (a copy): ``n_images``, ``epochs`` and ``max_minutes``.

    Examples
    --------
    >>> sorted(preset())
    ['epochs', 'max_minutes', 'n_images']
    """
    return dict(PRESETS[preset_name()]["chapters"])
