"""Tests of the threshold explorer: its pure logic, then the widget driven without a browser."""

import numpy as np
import pytest

from nucleilib import widgets
from nucleilib.count import CountSettings

ipywidgets = pytest.importorskip("ipywidgets")


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def graded_blobs():
    """Three separate 7x7 blobs with peak probabilities 0.9, 0.6 and 0.3 on a 0.02 background."""
    prob = np.full((20, 40), 0.02, np.float32)
    for x, peak in zip((2, 16, 30), (0.9, 0.6, 0.3)):
        prob[6:13, x : x + 7] = peak
    return prob


def touching_discs():
    """Two touching discs of radius 8 as a one-channel probability map."""
    mask = disc((20, 34), (10, 10), 8) | disc((20, 34), (10, 23), 8)
    return np.where(mask, 0.95, 0.01).astype(np.float32)


def test_count_falls_as_the_threshold_passes_each_peak():
    prob = graded_blobs()
    counts = [widgets.explorer_state(prob, threshold=t, min_area=1)["count"] for t in (0.1, 0.5, 0.7, 0.95)]
    assert counts == [3, 2, 1, 0]


def test_state_has_mask_labels_and_text():
    prob = graded_blobs()
    truth = np.zeros(prob.shape, np.int32)
    truth[0, 0], truth[5, 5], truth[9, 9] = 4, 9, 9  # non-sequential ids: two true nuclei
    state = widgets.explorer_state(prob, threshold=0.5, min_area=1, true_labels=truth)
    assert state["true_count"] == 2 and state["count"] == 2
    assert state["text"] == "count: 2 (true 2)"
    assert state["mask"].dtype == np.uint8 and int(state["mask"].sum()) == 2 * 49
    assert state["labels"].max() == 2 and state["labels"].shape == prob.shape
    assert state["settings"] == CountSettings(threshold=0.5, min_area=1)


def test_min_area_removes_specks():
    prob = graded_blobs()
    prob[1, 1] = prob[18, 38] = prob[1, 20] = 0.99  # three one-pixel specks
    assert widgets.explorer_state(prob, threshold=0.5, min_area=0)["count"] == 5
    assert widgets.explorer_state(prob, threshold=0.5, min_area=10)["count"] == 2
    assert widgets.explorer_state(prob, threshold=0.5, min_area=50)["count"] == 0  # a 7x7 blob is 49 px


def test_split_toggle_separates_two_touching_discs():
    prob = touching_discs()
    assert widgets.explorer_state(prob, threshold=0.5, split=False)["count"] == 1
    assert widgets.explorer_state(prob, threshold=0.5, split=True)["count"] == 2


def test_split_uses_the_interior_channel_when_there_is_one():
    mask = touching_discs() > 0.5
    interior = np.zeros_like(mask)
    interior[8:13, 6:11] = True  # only one interior seed: the model says "one nucleus"
    prob = np.stack([np.where(mask, 0.95, 0.01), np.where(interior, 0.9, 0.01)]).astype(np.float32)
    assert widgets.explorer_state(prob, threshold=0.5, split=True)["count"] == 1
    interior[8:13, 22:27] = True  # a second seed: two nuclei
    prob[1] = np.where(interior, 0.9, 0.01)
    assert widgets.explorer_state(prob, threshold=0.5, split=True)["count"] == 2


def test_curve_of_separate_blobs_never_rises():
    curve = widgets.count_curve(graded_blobs(), widgets.DEFAULT_THRESHOLDS, min_area=1)
    assert len(curve) == len(widgets.DEFAULT_THRESHOLDS)
    assert curve[0] == 3 and curve[-1] == 0
    assert (np.diff(curve) <= 0).all()


def test_curve_rises_where_a_faint_bridge_breaks():
    """Two blobs joined by a faint bridge: one blob at low thresholds, two above the bridge, none at the top."""
    prob = np.full((12, 30), 0.02, np.float32)
    prob[3:9, 2:12] = prob[3:9, 18:28] = 0.8
    prob[5:7, 12:18] = 0.3
    curve = widgets.count_curve(prob, [0.1, 0.2, 0.4, 0.6, 0.9], min_area=1, split=False)
    assert curve.tolist() == [1, 1, 2, 2, 0]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="shape"):
        widgets.explorer_state(np.zeros((2, 2, 3, 4)))
    with pytest.raises(ValueError, match="true_labels"):
        widgets.explorer_state(np.zeros((4, 4)), true_labels=np.zeros((5, 5), int))
    with pytest.raises(ValueError, match="probabilities or a model"):
        widgets.threshold_explorer([np.zeros((4, 4))])
    with pytest.raises(ValueError, match="1 images but 2"):
        widgets.threshold_explorer([np.zeros((4, 4))], [np.zeros((4, 4))] * 2)


@pytest.fixture
def explorer():
    probs = [graded_blobs(), touching_discs()]
    truth = [np.zeros((20, 40), np.int32), np.zeros((20, 34), np.int32)]
    truth[0][6:13, 2:9], truth[0][6:13, 16:23], truth[0][6:13, 30:37] = 1, 2, 3
    truth[1][disc((20, 34), (10, 10), 8)], truth[1][disc((20, 34), (10, 23), 8)] = 1, 2
    settings = CountSettings(min_area=1)
    return widgets.threshold_explorer(probs, probs, truth, settings=settings, thresholds=(0.2, 0.5, 0.8))


def test_widget_has_the_classes_a_browser_test_looks_for(explorer):
    assert isinstance(explorer, ipywidgets.VBox)
    count = widgets.find_by_class(explorer, widgets.COUNT_CLASS)
    slider = widgets.find_by_class(explorer, widgets.THRESHOLD_CLASS)
    assert isinstance(count, ipywidgets.HTML) and isinstance(slider, ipywidgets.FloatSlider)
    assert count.value == "<b>count: 2 (true 3)</b>"
    assert slider.value == 0.5


def test_moving_the_slider_updates_the_count_and_the_picture(explorer):
    count = widgets.find_by_class(explorer, widgets.COUNT_CLASS)
    slider = widgets.find_by_class(explorer, widgets.THRESHOLD_CLASS)
    picture = next(w for w in explorer.children if isinstance(w, ipywidgets.Image))
    before = picture.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 0.2
    assert count.value == "<b>count: 3 (true 3)</b>"
    slider.value = 0.95
    assert count.value == "<b>count: 0 (true 3)</b>"
    assert picture.value != before


def test_image_choice_and_split_toggle_drive_the_count(explorer):
    count = widgets.find_by_class(explorer, widgets.COUNT_CLASS)
    controls = explorer.children[0]
    choose, split = controls.children[0].children[0], controls.children[1].children[1]
    area = controls.children[1].children[0]
    choose.value = 1
    assert count.value == "<b>count: 2 (true 2)</b>"
    split.value = False
    assert count.value == "<b>count: 1 (true 2)</b>"
    area.value = 50
    assert count.value == "<b>count: 1 (true 2)</b>"  # the merged blob (~400 px) stays
    choose.value = 0
    assert count.value == "<b>count: 0 (true 3)</b>"  # 49 px blobs go


def test_widget_runs_the_model_once_per_image():
    torch = pytest.importorskip("torch")
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return (x - 0.5) * 40  # bright pixels -> nucleus

    image = np.zeros((16, 16), np.uint8)
    image[2:8, 2:8] = image[10:15, 9:15] = 200
    explorer = widgets.threshold_explorer([image, image], model=Counting(), settings=CountSettings(min_area=1),
                                          thresholds=(0.5,))
    assert len(calls) == 2
    slider = widgets.find_by_class(explorer, widgets.THRESHOLD_CLASS)
    slider.value = 0.3
    slider.value = 0.7
    assert len(calls) == 2  # slider moves only re-count
    assert widgets.find_by_class(explorer, widgets.COUNT_CLASS).value == "<b>count: 2</b>"


def test_static_figure_has_one_row_per_threshold():
    import matplotlib.pyplot as plt

    fig = widgets.static_threshold_figure(graded_blobs(), graded_blobs(), thresholds=(0.1, 0.5, 0.7),
                                          settings=CountSettings(min_area=1), curve_thresholds=(0.1, 0.5))
    titles = [ax.get_title() for ax in fig.axes[3::5]]
    assert titles == ["nuclei: count: 3", "nuclei: count: 2", "nuclei: count: 1"]
    plt.close(fig)
