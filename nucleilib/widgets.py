"""The threshold explorer: move the probability threshold and watch the nucleus count change.

For workshops in JupyterLab 4 or on Binder (ipywidgets 8). The model runs once per image
(:func:`precompute_probabilities`); after that every slider move only re-runs the cheap counting
(:func:`nucleilib.count.labels_from_probabilities`) through the pure function :func:`explorer_state`.

- :func:`explorer_state`: probabilities + settings -> mask, labels, count, true count, the count text.
- :func:`count_curve`: the count at many thresholds (the curve beside the images).
- :func:`draw_panels`: the five panels (image, probability, mask, nuclei, curve) on matplotlib axes,
  shared by the widget and by :func:`static_threshold_figure`, the picture that readers of a
  rendered notebook see where widgets cannot run.
- :func:`threshold_explorer`: the widget itself.

For browser tests: the count is shown in the element with CSS class :data:`COUNT_CLASS`
(text such as ``count: 17 (true 19)``), the threshold slider has class :data:`THRESHOLD_CLASS`.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from nucleilib.count import DEFAULT_MIN_AREA, binarize, labels_from_probabilities

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


def _image_2d(image: np.ndarray) -> np.ndarray:
    """A 2-D image from (H, W), (1, H, W) or (H, W, 1); ValueError otherwise."""
    image = np.asarray(image)
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (or 2-D with a singleton axis), got shape {image.shape}")
    return image


def count_text(count: int, true_count: int | None = None) -> str:
    """The count as the explorer shows it: ``count: 17 (true 19)``, or ``count: 17`` without truth.

    Parameters
    ----------
    count : int
        Predicted number of nuclei.
    true_count : int, optional
        True number of nuclei, when known.

    Returns
    -------
    str
        The text.

    Examples
    --------
    >>> count_text(17, 19), count_text(3)
    ('count: 17 (true 19)', 'count: 3')
    """
    return f"count: {int(count)}" + ("" if true_count is None else f" (true {int(true_count)})")


def explorer_state(
    prob: np.ndarray,
    threshold: float = 0.5,
    min_area: int = DEFAULT_MIN_AREA,
    split: bool = True,
    true_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Everything the explorer shows for one setting of its controls (no drawing, no widgets).

    Parameters
    ----------
    prob : np.ndarray
        Probabilities (C, H, W) or (H, W); channel 0 = nucleus, channel 1 (optional) = interior.
    threshold : float, optional
        Probability threshold. Default 0.5.
    min_area : int, optional
        Smallest nucleus kept, pixels. Default ``nucleilib.count.DEFAULT_MIN_AREA``.
    split : bool, optional
        Split touching nuclei (watershed). Default True.
    true_labels : np.ndarray, optional
        True instance labels (H, W), for the true count.

    Returns
    -------
    dict
        ``count`` (int), ``true_count`` (int or None), ``labels`` (int32 H, W), ``mask`` (uint8
        H, W, the binarized channel 0), ``threshold``, ``min_area``, ``split`` and ``text``
        (see :func:`count_text`).

    Raises
    ------
    ValueError
        If ``prob`` is not 2-D/3-D or ``true_labels`` has another height and width.

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> state = explorer_state(prob, threshold=0.5, min_area=1)
    >>> state["count"], explorer_state(prob, threshold=0.7, min_area=1)["text"]
    (2, 'count: 1')
    """
    prob = _as_prob(prob)
    true_count = None
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        if true_labels.shape != prob.shape[1:]:
            raise ValueError(f"explorer_state: true_labels shape {true_labels.shape} differs from {prob.shape[1:]}")
        true_count = int(np.count_nonzero(np.unique(true_labels)))
    labels = labels_from_probabilities(prob, threshold=threshold, min_area=min_area, split=split)
    count = int(labels.max())
    return {
        "count": count,
        "true_count": true_count,
        "labels": labels,
        "mask": binarize(prob[0], threshold),
        "threshold": float(threshold),
        "min_area": int(min_area),
        "split": bool(split),
        "text": count_text(count, true_count),
    }


def count_curve(
    prob: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_area: int = DEFAULT_MIN_AREA,
    split: bool = True,
) -> np.ndarray:
    """The nucleus count at each threshold.

    Parameters
    ----------
    prob : np.ndarray
        Probabilities (C, H, W) or (H, W).
    thresholds : sequence of float, optional
        Thresholds to count at. Default :data:`DEFAULT_THRESHOLDS`.
    min_area : int, optional
        Smallest nucleus kept, pixels.
    split : bool, optional
        Split touching nuclei.

    Returns
    -------
    np.ndarray
        int64 counts, one per threshold.

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> count_curve(prob, [0.3, 0.7, 0.95], min_area=1).tolist()
    [2, 1, 0]
    """
    prob = _as_prob(prob)
    return np.array(
        [labels_from_probabilities(prob, threshold=t, min_area=min_area, split=split).max() for t in thresholds],
        dtype=np.int64,
    )


def precompute_probabilities(images: Sequence[np.ndarray], model: Any, info: dict | None = None) -> list[np.ndarray]:
    """Run the model once per image: the explorer then only re-counts.

    Parameters
    ----------
    images : sequence of np.ndarray
        2-D images of any dtype (or (1, H, W)); normalized inside as in training.
    model : torch.nn.Module
        The trained network.
    info : dict, optional
        Checkpoint info (its normalization settings).

    Returns
    -------
    list of np.ndarray
        float32 (C, H, W) probabilities per image.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Conv2d(1, 2, 1)
    >>> probs = precompute_probabilities([np.zeros((8, 8)), np.ones((1, 6, 6))], model)
    >>> [p.shape for p in probs]
    [(2, 8, 8), (2, 6, 6)]
    """
    from nucleilib.predict import probabilities

    return [probabilities(model, _image_2d(image), info=info) for image in images]


def draw_panels(
    axes: Sequence[Any],
    image: np.ndarray,
    prob: np.ndarray,
    state: dict[str, Any],
    true_labels: np.ndarray | None = None,
    thresholds: Sequence[float] | None = None,
    curve: Sequence[int] | None = None,
) -> None:
    """Draw the explorer's five panels on five matplotlib axes.

    Panels: the image (true outlines if given), the nucleus probability, the binary mask at the
    threshold, the counted nuclei (one colour each), and the count against the threshold with the
    current threshold marked (and the true count as a horizontal line).

    Parameters
    ----------
    axes : sequence of matplotlib Axes
        Five axes.
    image : np.ndarray
        2-D image (any dtype; shown contrast-stretched).
    prob : np.ndarray
        Probabilities (C, H, W) or (H, W).
    state : dict
        From :func:`explorer_state`.
    true_labels : np.ndarray, optional
        True instance labels, outlined on the image.
    thresholds, curve : optional
        The count curve (:func:`count_curve`); computed here when not given.

    Raises
    ------
    ValueError
        If there are not five axes.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9
    >>> fig, axes = plt.subplots(1, 5)
    >>> draw_panels(axes, prob, prob, explorer_state(prob, min_area=1), thresholds=[0.5], curve=[1])
    >>> axes[3].get_title()
    'nuclei: count: 1'
    >>> plt.close(fig)
    """
    from nucleilib.data import normalize_image
    from nucleilib.viz import labels_rgb, outline_rgb

    if len(axes) != 5:
        raise ValueError(f"draw_panels: need 5 axes, got {len(axes)}")
    prob = _as_prob(prob)
    if curve is None or thresholds is None:
        thresholds = DEFAULT_THRESHOLDS
        curve = count_curve(prob, thresholds, state["min_area"], state["split"])
    ax_image, ax_prob, ax_mask, ax_labels, ax_curve = axes
    ax_image.imshow(outline_rgb(normalize_image(_image_2d(image)), true_labels))
    ax_image.set_title("image" + (" + true outlines" if true_labels is not None else ""), fontsize=9)
    ax_prob.imshow(prob[0], cmap="magma", vmin=0, vmax=1)
    ax_prob.set_title("P(nucleus)", fontsize=9)
    ax_mask.imshow(state["mask"], cmap="gray", vmin=0, vmax=1)
    ax_mask.set_title(f"mask: P >= {state['threshold']:.2f}", fontsize=9)
    ax_labels.imshow(labels_rgb(state["labels"]))
    ax_labels.set_title(f"nuclei: {state['text']}", fontsize=9)
    for ax in (ax_image, ax_prob, ax_mask, ax_labels):
        ax.axis("off")
    ax_curve.plot(thresholds, curve, marker=".", color="tab:blue")
    ax_curve.axvline(state["threshold"], color="tab:red", linewidth=1)
    ax_curve.plot([state["threshold"]], [state["count"]], "o", color="tab:red")
    if state["true_count"] is not None:
        ax_curve.axhline(state["true_count"], color="gray", linestyle="--", linewidth=0.8, label="true count")
        ax_curve.legend(fontsize=7, loc="lower right")
    ax_curve.set(xlim=(0, 1), ylim=(0, max(max(curve, default=0), state["true_count"] or 0) * 1.15 + 1))
    ax_curve.set_xlabel("threshold", fontsize=8)
    ax_curve.set_ylabel("count", fontsize=8)
    ax_curve.tick_params(labelsize=7)
    ax_curve.set_title("count vs threshold", fontsize=9)


def static_threshold_figure(
    image: np.ndarray,
    prob: np.ndarray,
    true_labels: np.ndarray | None = None,
    thresholds: Sequence[float] = (0.2, 0.5, 0.8),
    min_area: int = DEFAULT_MIN_AREA,
    split: bool = True,
    curve_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> "matplotlib.figure.Figure":
    """The explorer's panels as a still figure: one row per threshold (where widgets cannot run).

    Parameters
    ----------
    image : np.ndarray
        2-D image.
    prob : np.ndarray
        Its probabilities (C, H, W) or (H, W).
    true_labels : np.ndarray, optional
        True instance labels.
    thresholds : sequence of float, optional
        One row per threshold. Default (0.2, 0.5, 0.8).
    min_area : int, optional
        Smallest nucleus kept, pixels.
    split : bool, optional
        Split touching nuclei.
    curve_thresholds : sequence of float, optional
        Thresholds of the count curve.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9
    >>> fig = static_threshold_figure(prob, prob, thresholds=(0.5, 0.95), min_area=1, curve_thresholds=(0.5,))
    >>> len(fig.axes), fig.axes[8].get_title()
    (10, 'nuclei: count: 0')
    """
    import matplotlib.pyplot as plt

    prob = _as_prob(prob)
    curve = count_curve(prob, curve_thresholds, min_area, split)
    fig, axes = plt.subplots(len(thresholds), 5, figsize=(11, 2.3 * len(thresholds)), squeeze=False)
    for row, threshold in zip(axes, thresholds):
        state = explorer_state(prob, threshold, min_area, split, true_labels)
        draw_panels(row, image, prob, state, true_labels, curve_thresholds, curve)
    fig.tight_layout()
    return fig


def _render_png(image, prob, state, true_labels, thresholds, curve, dpi: int) -> bytes:
    """The five panels as PNG bytes (Agg canvas, so nothing is displayed twice in a notebook)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 2.8))
    FigureCanvasAgg(figure)
    draw_panels(figure.subplots(1, 5), image, prob, state, true_labels, thresholds, curve)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def find_by_class(widget: Any, css_class: str) -> Any:
    """The first widget inside ``widget`` (itself included) that carries a CSS class.

    Parameters
    ----------
    widget : ipywidgets.Widget
        A widget or a box of widgets.
    css_class : str
        Class added with ``add_class``, e.g. :data:`COUNT_CLASS`.

    Returns
    -------
    ipywidgets.Widget or None
        The widget, or None when no descendant has the class.

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


def threshold_explorer(
    images: Sequence[np.ndarray],
    probabilities: Sequence[np.ndarray] | None = None,
    true_labels: Sequence[np.ndarray] | None = None,
    model: Any = None,
    info: dict | None = None,
    threshold: float = 0.5,
    min_area: int = DEFAULT_MIN_AREA,
    split: bool = True,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    dpi: int = 72,
) -> Any:
    """An interactive explorer: pick an image, move the threshold, minimum area and split toggle.

    Shows at once the image, the probability map, the binary mask, the counted nuclei, the count
    against the true count, and the count-versus-threshold curve with the current threshold marked.
    The model runs once per image (here, unless ``probabilities`` are given); a control change
    re-runs only the counting, and the curve is cached per image, minimum area and split setting.

    Parameters
    ----------
    images : sequence of np.ndarray
        2-D images (any dtype) or (1, H, W) arrays.
    probabilities : sequence of np.ndarray, optional
        Precomputed (C, H, W) probabilities per image; otherwise ``model`` computes them.
    true_labels : sequence of np.ndarray, optional
        True instance labels per image (for the true count and outlines).
    model : torch.nn.Module, optional
        Used when ``probabilities`` is None.
    info : dict, optional
        Checkpoint info for the model's normalization.
    threshold, min_area, split : optional
        Initial values of the controls.
    thresholds : sequence of float, optional
        Thresholds of the count curve.
    dpi : int, optional
        Resolution of the drawn panels. Default 72.

    Returns
    -------
    ipywidgets.VBox
        The explorer. The count is in the child with CSS class :data:`COUNT_CLASS`, the threshold
        slider has class :data:`THRESHOLD_CLASS` (see :func:`find_by_class`).

    Raises
    ------
    ValueError
        If there are no images, neither probabilities nor a model, or the lengths disagree.

    Examples
    --------
    >>> prob = np.zeros((10, 10)); prob[1:4, 1:4] = 0.9; prob[6:9, 6:9] = 0.6
    >>> explorer = threshold_explorer([prob], [prob], min_area=1, thresholds=(0.5, 0.7))
    >>> find_by_class(explorer, COUNT_CLASS).value
    '<b>count: 2</b>'
    >>> find_by_class(explorer, THRESHOLD_CLASS).value = 0.7
    >>> find_by_class(explorer, COUNT_CLASS).value
    '<b>count: 1</b>'
    """
    import ipywidgets

    images = list(images)
    if not images:
        raise ValueError("threshold_explorer: no images given")
    if probabilities is None:
        if model is None:
            raise ValueError("threshold_explorer: give probabilities or a model to compute them")
        probabilities = precompute_probabilities(images, model, info)
    probabilities = [_as_prob(p) for p in probabilities]
    if len(probabilities) != len(images) or (true_labels is not None and len(true_labels) != len(images)):
        raise ValueError(
            f"threshold_explorer: {len(images)} images but {len(probabilities)} probability maps"
            + ("" if true_labels is None else f" and {len(true_labels)} label images")
        )
    thresholds = tuple(float(t) for t in thresholds)
    curves: dict[tuple[int, int, bool], np.ndarray] = {}

    def truth(index: int) -> np.ndarray | None:
        return None if true_labels is None else np.asarray(true_labels[index])

    choose = ipywidgets.Dropdown(options=[(f"image {i}", i) for i in range(len(images))], value=0,
                                 description="image")
    threshold_slider = ipywidgets.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.01, readout_format=".2f",
                                              description="threshold", continuous_update=False)
    threshold_slider.add_class(THRESHOLD_CLASS)
    area_slider = ipywidgets.IntSlider(value=min_area, min=0, max=100, step=1, description="min area (px)",
                                       continuous_update=False, style={"description_width": "initial"})
    split_box = ipywidgets.Checkbox(value=split, description="split touching nuclei")
    count_label = ipywidgets.HTML().add_class(COUNT_CLASS)
    picture = ipywidgets.Image(format="png")

    def update(_change: Any = None) -> None:
        index, area, split_now = choose.value, area_slider.value, split_box.value
        state = explorer_state(probabilities[index], threshold_slider.value, area, split_now, truth(index))
        key = (index, area, split_now)
        if key not in curves:
            curves[key] = count_curve(probabilities[index], thresholds, area, split_now)
        count_label.value = f"<b>{state['text']}</b>"
        picture.value = _render_png(images[index], probabilities[index], state, truth(index), thresholds,
                                    curves[key], dpi)

    for control in (choose, threshold_slider, area_slider, split_box):
        control.observe(update, names="value")
    update()
    controls = ipywidgets.HBox([ipywidgets.VBox([choose, threshold_slider]), ipywidgets.VBox([area_slider, split_box])])
    return ipywidgets.VBox([controls, count_label, picture])
