"""nucleilib: segment and count cell nuclei in fluorescence microscopy with a U-Net.

A thin library behind the teaching notebooks in ``notebooks/``. Small flat modules:

- ``data``: load/validate ``.npz`` data sets, normalize, read images, import and download real data.
- ``synth``: the built-in synthetic nuclei generator with exact ground truth.
- ``model``, ``losses``, ``train``: the U-Net, its losses, and training with checkpoints.
- ``predict``, ``count``, ``metrics``: probabilities, nucleus counts, and evaluation.
- ``viz``, ``widgets``, ``cli``: figures, the threshold explorer, and the command line.
"""

__version__ = "0.1.0"
