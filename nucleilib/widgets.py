"""The threshold explorer: move the probability threshold and watch the nucleus count change.

For workshops in JupyterLab 4 or on Binder (ipywidgets 8). The model runs once per image; after that every
slider move only re-runs the cheap counting through the pure function :func:`explorer_state`.
One drawing of the five panels (image, probability, mask, nuclei, count curve) for both the widget
(:func:`threshold_explorer`) and :func:`static_threshold_figure`, the picture readers of a rendered notebook see.

For browser tests: the count is shown in the element with CSS class :data:`COUNT_CLASS` (text such as
``count: 17 (true 19)``), the threshold slider has class :data:`THRESHOLD_CLASS`.
"""

from __future__ import annotations

from dataclasses import replace
from io import BytesIO
from typing import Any, Sequence

import numpy as np

from nucleilib.count import CountSettings, binarize, labels_from_probabilities
from nucleilib.data import normalize_image
from nucleilib.io import image_2d

COUNT_CLASS: str = "nucleilib-count"
"""CSS class of the widget that shows the count."""

THRESHOLD_CLASS: str = "nucleilib-threshold"
"""CSS class of the threshold slider."""

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Thresholds of the count curve: 0.05, 0.10, ..., 0.95."""


def _as_prob(prob: np.ndarray) -> np.ndarray:
    """Probabilities as (C, H, W) float32; ValueError for anything else."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim == 2:
        prob = prob[None]
    if prob.ndim != 3 or prob.size == 0:
        raise ValueError(f"probabilities must be (C, H, W) or (H, W), got shape {prob.shape}")
    return prob


def explorer_state(prob: np.ndarray, settings: CountSettings | None = None, true_labels: np.ndarray | None = None,
                   **changes) -> dict[str, Any]:
    """Everything the explorer shows for one setting of its controls (no drawing, no widgets).

    ``prob`` is (C, H, W) or (H, W) (channel 0 nucleus, channel 1 interior if there is one); ``settings`` (default
    :class:`~nucleilib.count.CountSettings`, with keyword ``changes``) says how to count; ``true_labels`` (H, W)
    give the true count. Returns ``count``, ``true_count`` (or None), ``labels`` (int32), ``mask`` (uint8, the
    binarized channel 0), ``settings`` and ``text`` (``count: 17 (true 19)``, or ``count: 17``).

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> explorer_state(prob, min_area=1)["count"], explorer_state(prob, threshold=0.7, min_area=1)["text"]
    (2, 'count: 1')
    """
    settings = replace(settings or CountSettings(), **changes)
    prob = _as_prob(prob)
    true_count = None
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        if true_labels.shape != prob.shape[1:]:
            raise ValueError(f"explorer_state: true_labels shape {true_labels.shape} differs from {prob.shape[1:]}")
        true_count = int(np.count_nonzero(np.unique(true_labels)))
    labels = labels_from_probabilities(prob, settings)
    count = int(labels.max())
    return {"count": count, "true_count": true_count, "labels": labels, "mask": binarize(prob[0], settings.threshold),
            "settings": settings, "text": f"count: {count}" + ("" if true_count is None else f" (true {true_count})")}


def count_curve(prob: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                settings: CountSettings | None = None, **changes) -> np.ndarray:
    """The nucleus count (int64) at each of ``thresholds``, the other settings as for :func:`explorer_state`.

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> count_curve(prob, [0.3, 0.7, 0.95], min_area=1).tolist()
    [2, 1, 0]
    """
    settings, prob = replace(settings or CountSettings(), **changes), _as_prob(prob)
    counts = [labels_from_probabilities(prob, settings, threshold=t).max() for t in thresholds]
    return np.array(counts, dtype=np.int64)


def _draw_panels(axes, image, prob, state, true_labels, thresholds, curve) -> None:
    """Draw the explorer's five panels: the image (true outlines if given), P(nucleus), the mask at the threshold,
    the counted nuclei, and the count curve with the threshold and the true count marked."""
    from nucleilib.viz import labels_rgb, outline_rgb
    settings = state["settings"]
    ax_image, ax_prob, ax_mask, ax_labels, ax_curve = axes
    ax_image.imshow(outline_rgb(normalize_image(image_2d(image)), true_labels))
    ax_image.set_title("image" + (" + true outlines" if true_labels is not None else ""), fontsize=9)
    ax_prob.imshow(prob[0], cmap="magma", vmin=0, vmax=1)
    ax_prob.set_title("P(nucleus)", fontsize=9)
    ax_mask.imshow(state["mask"], cmap="gray", vmin=0, vmax=1)
    ax_mask.set_title(f"mask: P >= {settings.threshold:.2f}", fontsize=9)
    ax_labels.imshow(labels_rgb(state["labels"]))
    ax_labels.set_title(f"nuclei: {state['text']}", fontsize=9)
    for ax in (ax_image, ax_prob, ax_mask, ax_labels):
        ax.axis("off")
    ax_curve.plot(thresholds, curve, marker=".", color="tab:blue")
    ax_curve.axvline(settings.threshold, color="tab:red", linewidth=1)
    ax_curve.plot([settings.threshold], [state["count"]], "o", color="tab:red")
    if state["true_count"] is not None:
        ax_curve.axhline(state["true_count"], color="gray", linestyle="--", linewidth=0.8, label="true count")
        ax_curve.legend(fontsize=7, loc="lower right")
    ax_curve.set(xlim=(0, 1), ylim=(0, max(max(curve, default=0), state["true_count"] or 0) * 1.15 + 1))
    ax_curve.set_xlabel("threshold", fontsize=8)
    ax_curve.set_ylabel("count", fontsize=8)
    ax_curve.tick_params(labelsize=7)
    ax_curve.set_title("count vs threshold", fontsize=9)


def static_threshold_figure(image: np.ndarray, prob: np.ndarray, true_labels: np.ndarray | None = None,
                            thresholds: Sequence[float] = (0.2, 0.5, 0.8), settings: CountSettings | None = None,
                            curve_thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> "matplotlib.figure.Figure":
    """The explorer's panels as a still figure, one row per threshold (where widgets cannot run).

    The panels: the image (``true_labels`` outlined if given), P(nucleus), the mask at the threshold, the counted
    nuclei, and the count at ``curve_thresholds`` with the threshold and the true count marked.

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9
    >>> fig = static_threshold_figure(prob, prob, None, (0.5, 0.95), CountSettings(min_area=1), (0.5,))
    >>> len(fig.axes), fig.axes[8].get_title()
    (10, 'nuclei: count: 0')
    """
    import matplotlib.pyplot as plt
    prob, settings = _as_prob(prob), settings or CountSettings()
    curve = count_curve(prob, curve_thresholds, settings)
    fig, axes = plt.subplots(len(thresholds), 5, figsize=(11, 2.3 * len(thresholds)), squeeze=False)
    for row, threshold in zip(axes, thresholds):
        state = explorer_state(prob, settings, true_labels, threshold=threshold)
        _draw_panels(row, image, prob, state, true_labels, curve_thresholds, curve)
    fig.tight_layout()
    return fig


def _render_png(image, prob, state, true_labels, thresholds, curve, dpi: int) -> bytes:
    """The five panels as PNG bytes (Agg canvas, so nothing is displayed twice in a notebook)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(13, 2.8))
    FigureCanvasAgg(figure)
    _draw_panels(figure.subplots(1, 5), image, prob, state, true_labels, thresholds, curve)
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def find_by_class(widget: Any, css_class: str) -> Any:
    """The first widget inside ``widget`` (itself included) that carries ``css_class``, or None.

    Examples
    --------
    >>> import ipywidgets
    >>> box = ipywidgets.VBox([ipywidgets.HTML("a"), ipywidgets.HTML("b").add_class("x")])
    >>> find_by_class(box, "x").value
    'b'
    """
    if css_class in getattr(widget, "_dom_classes", ()):
        return widget
    for child in getattr(widget, "children", ()):
        found = find_by_class(child, css_class)
        if found is not None:
            return found
    return None


def threshold_explorer(images: Sequence[np.ndarray], probabilities: Sequence[np.ndarray] | None = None,
                       true_labels: Sequence[np.ndarray] | None = None, model: Any = None, info: dict | None = None,
                       settings: CountSettings | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                       dpi: int = 72) -> Any:
    """An interactive explorer: pick an image, move the threshold, the minimum area and the split toggle.

    It shows the panels of :func:`static_threshold_figure` for the current controls. The model (with checkpoint
    ``info``) runs once per image, unless ``probabilities`` are given; a control change re-runs only the counting,
    and the count curve (at ``thresholds``) is cached per image, minimum area and split. ``settings`` gives the
    controls' first values and the other counting settings; ``dpi`` the panels' resolution. The count is in the
    child with CSS class :data:`COUNT_CLASS`, the threshold slider has :data:`THRESHOLD_CLASS` (see
    :func:`find_by_class`).

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> explorer = threshold_explorer([prob], [prob], settings=CountSettings(min_area=1), thresholds=(0.5, 0.7))
    >>> find_by_class(explorer, COUNT_CLASS).value
    '<b>count: 2</b>'
    >>> find_by_class(explorer, THRESHOLD_CLASS).value = 0.7
    >>> find_by_class(explorer, COUNT_CLASS).value
    '<b>count: 1</b>'
    """
    import ipywidgets
    images, settings = list(images), settings or CountSettings()
    if not images:
        raise ValueError("threshold_explorer: no images given")
    if probabilities is None:
        if model is None:
            raise ValueError("threshold_explorer: give probabilities or a model to compute them")
        from nucleilib import predict
        probabilities = [predict.probabilities(model, image, info=info) for image in images]
    probabilities = [_as_prob(p) for p in probabilities]
    if len(probabilities) != len(images) or (true_labels is not None and len(true_labels) != len(images)):
        raise ValueError(f"threshold_explorer: {len(images)} images but {len(probabilities)} probability maps"
                         + ("" if true_labels is None else f" and {len(true_labels)} label images"))
    thresholds = tuple(float(t) for t in thresholds)
    curves: dict[tuple[int, int, bool], np.ndarray] = {}

    def truth(index: int) -> np.ndarray | None:
        return None if true_labels is None else np.asarray(true_labels[index])

    choose = ipywidgets.Dropdown(options=[(f"image {i}", i) for i in range(len(images))], value=0,
                                 description="image")
    threshold_slider = ipywidgets.FloatSlider(value=settings.threshold, min=0.05, max=0.95, step=0.01,
                                              readout_format=".2f", description="threshold", continuous_update=False)
    threshold_slider.add_class(THRESHOLD_CLASS)
    area_slider = ipywidgets.IntSlider(value=settings.min_area, min=0, max=100, step=1, description="min area (px)",
                                       continuous_update=False, style={"description_width": "initial"})
    split_box = ipywidgets.Checkbox(value=settings.split, description="split touching nuclei")
    count_label = ipywidgets.HTML().add_class(COUNT_CLASS)
    picture = ipywidgets.Image(format="png")

    def update(_change: Any = None) -> None:
        index, now = choose.value, replace(settings, min_area=area_slider.value, split=split_box.value)
        state = explorer_state(probabilities[index], now, truth(index), threshold=threshold_slider.value)
        key = (index, now.min_area, now.split)
        if key not in curves:
            curves[key] = count_curve(probabilities[index], thresholds, now)
        count_label.value = f"<b>{state['text']}</b>"
        picture.value = _render_png(images[index], probabilities[index], state, truth(index), thresholds,
                                    curves[key], dpi)

    for control in (choose, threshold_slider, area_slider, split_box):
        control.observe(update, names="value")
    update()
    controls = ipywidgets.HBox([ipywidgets.VBox([choose, threshold_slider]), ipywidgets.VBox([area_slider, split_box])])
    return ipywidgets.VBox([controls, count_label, picture])
