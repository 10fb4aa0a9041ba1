"""nucleilib: segment and count cell nuclei in fluorescence microscopy with a U-Net.

A thin library behind the teaching notebooks in ``notebooks/``; one job per module, bottom to top:

- ``io``, ``synth``, ``data``, ``datasets``: files, the synthetic generator, arrays and the ``.npz`` contract,
  the public real data sets.
- ``augment``, ``model``, ``losses``, ``checkpoint``, ``runtime``, ``train``: the U-Net and its training.
- ``predict``, ``count``, ``metrics``, ``evaluate``: probabilities, nucleus counts, scores, files in and out.
- ``viz``, ``widgets``, ``bench``, ``cli``: figures, the threshold explorer, speed, and the command line.
"""

__version__ = "0.1.0"
