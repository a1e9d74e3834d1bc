"""Tests of lunghelpers.plots: each figure has the expected panels, empty bands are stated."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lunghelpers import evaluate, plots  # noqa: E402


def history_frame(with_learning_rate=True):
    frame = pd.DataFrame({
        "epoch": [0, 1, 2],
        "loss": [0.9, 0.5, 0.4],
        "dice": [0.2, 0.6, 0.8],
        "val_loss": [0.8, 0.3, 0.5],
        "val_dice": [0.3, 0.7, 0.6],
        "seconds": [2.0, 1.0, 1.0],
    })
    if with_learning_rate:
        frame["learning_rate"] = [1e-3, 1e-3, 1e-4]
    return frame


def square_batch(count=4, size=8):
    """Images with a bright square and id masks of the square (class 1) and a bar (class 2)."""
    images = np.zeros((count, size, size, 1), np.float32)
    masks = np.zeros((count, size, size, 1), np.int16)
    images[:, 2:5, 2:5] = 1.0
    masks[:, 2:5, 2:5] = 1
    masks[:, 6:, :] = 2
    return images, masks


def all_texts(figure):
    texts = [text.get_text() for ax in figure.axes for text in ax.texts]
    return texts + [ax.get_title() for ax in figure.axes]


def test_learning_curves_has_a_panel_per_metric_and_learning_rate():
    figure = plots.learning_curves(history_frame())
    assert isinstance(figure, matplotlib.figure.Figure)
    assert [ax.get_title() for ax in figure.axes] == ["loss", "dice", "learning rate"]
    loss_axes = figure.axes[0]
    assert len(loss_axes.lines) == 3  # training, validation, best-epoch marker
    # Epochs count from 1 on the axis: history's epoch 0..2 are drawn at 1..3.
    assert list(loss_axes.lines[0].get_xdata()) == [1, 2, 3]
    # The lowest val_loss is in row 1 (epoch column 1), which Keras printed as "Epoch 2/3".
    assert list(loss_axes.lines[2].get_xdata()) == [2, 2]
    assert figure.axes[2].get_yscale() == "log"
    assert "best epoch" in figure.get_suptitle() and "2 of 3" in figure.get_suptitle()
    titled = plots.learning_curves(history_frame(), title="ct-assignment: simple_unet")
    assert titled.get_suptitle().startswith("ct-assignment: simple_unet\n")


def test_learning_curves_without_learning_rate_and_chosen_metrics():
    figure = plots.learning_curves(history_frame(with_learning_rate=False), metrics=["dice"],
                                   best_epoch=3)
    assert len(figure.axes) == 1
    assert list(figure.axes[0].lines[-1].get_xdata()) == [3, 3]  # best_epoch counts from 1
    assert "3 of 3" in figure.get_suptitle()
    with pytest.raises(ValueError, match="iou"):
        plots.learning_curves(history_frame(), metrics=["iou"])


def test_batch_preview_accepts_id_and_one_hot_masks():
    images, masks = square_batch()
    figure = plots.batch_preview(images, masks, n=4)
    assert len(figure.axes) == 8
    legend_names = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_names == ["right lung", "left lung"]
    binary = plots.batch_preview(images, (masks == 1).astype(np.float32), n=1)
    assert [text.get_text() for text in binary.legends[0].get_texts()] == ["lung"]
    one_hot = np.eye(3, dtype=np.float32)[masks[..., 0]]
    assert len(plots.batch_preview(images, one_hot, n=2).axes) == 4
    assert len(plots.batch_preview(images[:3], masks[:3], n=4).axes) == 6
    with pytest.raises(ValueError, match="count"):
        plots.batch_preview(images, masks[:2])


def test_colour_mask_is_clear_on_background_and_coloured_per_class():
    rgba = plots.colour_mask(np.array([[0, 1, 2]]))
    assert rgba[0, 0, 3] == 0.0
    np.testing.assert_allclose(rgba[0, 1], (*plots.CLASS_COLOURS[1], plots.OVERLAY_ALPHA))
    np.testing.assert_allclose(rgba[0, 2], (*plots.CLASS_COLOURS[2], plots.OVERLAY_ALPHA))


def test_overlay_colours_true_false_positives_and_negatives():
    image = np.zeros((1, 4, 1), np.float32)
    mask = np.array([[1, 1, 0, 0]], np.int16)[..., np.newaxis]
    prediction = np.array([[0.9, 0.1, 0.8, 0.0]], np.float32)[..., np.newaxis]
    figure = plots.overlay(image, mask, prediction)
    assert len(figure.axes) == 1
    colours = np.asarray(figure.axes[0].images[1].get_array())
    np.testing.assert_allclose(colours[0, 0, :3], plots.ERROR_COLOURS["true positive"])
    np.testing.assert_allclose(colours[0, 1, :3], plots.ERROR_COLOURS["false negative"])
    np.testing.assert_allclose(colours[0, 2, :3], plots.ERROR_COLOURS["false positive"])
    assert colours[0, 3, 3] == 0.0


def test_gallery_by_band_states_an_empty_band():
    images, masks = square_batch(count=2)
    probabilities = masks.astype(np.float32) * 0.9
    table = pd.DataFrame({"name": ["a", "b"], "iou": [0.87, 0.97]})
    selection = {(0.85, 0.9): ["a"], (0.9, 0.95): [], (0.95, 1.0): ["b"]}
    figure = plots.gallery_by_band(images, masks, probabilities, table, selection,
                                   title="run x: simple_unet, test split, threshold 0.5")
    assert len(figure.axes) == 9
    assert figure.get_suptitle() == "run x: simple_unet, test split, threshold 0.5"
    texts = all_texts(figure)
    assert "no test image in band [0.90, 0.95)" in texts
    # The empty band is one line of text: its row is much lower than an image row.
    image_row, empty_row = figure.axes[0].get_position(), figure.axes[3].get_position()
    assert empty_row.height < 0.3 * image_row.height
    assert any("a" in text and "0.870" in text for text in texts)
    assert any("b" in text and "[0.95, 1.00]" in text for text in texts)


def test_gallery_by_band_from_select_by_band_with_no_image_at_all():
    images, masks = square_batch(count=1)
    table = pd.DataFrame({"name": ["a"], "iou": [0.2]})
    selection = evaluate.select_by_band(table)
    figure = plots.gallery_by_band(images, masks, masks.astype(np.float32), table, selection,
                                   split="validation")
    assert len(figure.axes) == 9
    assert "no validation image in band [0.85, 0.90)" in all_texts(figure)


def test_gallery_rows_may_be_labelled_by_text():
    images, masks = square_batch(count=2)
    table = pd.DataFrame({"name": ["a", "b"], "iou": [0.5, 0.97]})
    figure = plots.gallery_by_band(images, masks, masks.astype(np.float32), table,
                                   {"worst": ["a"], "best": ["b"]})
    assert len(figure.axes) == 6
    texts = all_texts(figure)
    assert "a\nIoU 0.500, worst" in texts and "b\nIoU 0.970, best" in texts


def test_gallery_by_band_refuses_names_missing_from_the_table():
    images, masks = square_batch(count=1)
    table = pd.DataFrame({"name": ["a"], "iou": [0.9]})
    with pytest.raises(ValueError, match="zz"):
        plots.gallery_by_band(images, masks, masks.astype(np.float32), table,
                              {(0.9, 0.95): ["zz"]})


def test_compare_curves_overlays_runs_and_names_those_without_the_metric():
    figure = plots.compare_curves({"one": history_frame(), "two": history_frame()})
    assert len(figure.axes) == 1
    assert len(figure.axes[0].lines) == 2
    assert list(figure.axes[0].lines[0].get_xdata()) == [1, 2, 3]
    partial = plots.compare_curves({"one": history_frame(), "failed": pd.DataFrame({"epoch": [0]})})
    assert len(partial.axes[0].lines) == 1
    assert "failed" in partial.axes[0].get_title()


def test_threshold_sweep_plots_four_scores_and_marks_thresholds():
    sweep = pd.DataFrame({"threshold": [0.1, 0.5, 0.9], "mean_iou": [0.7, 0.8, 0.6],
                          "mean_dice": [0.8, 0.9, 0.7], "mean_precision": [0.6, 0.8, 0.9],
                          "mean_recall": [0.9, 0.8, 0.5]})
    figure = plots.threshold_sweep(sweep, title="run x: simple_unet, test split")
    ax = figure.axes[0]
    assert ax.get_title() == "run x: simple_unet, test split"
    assert len(ax.lines) == 6  # four scores, two threshold marks
    assert list(ax.lines[0].get_ydata()) == [0.7, 0.8, 0.6]
    assert [text.get_text() for text in ax.texts] == [" source 0.1", " headline 0.5"]


def test_save_figure_writes_a_png_atomically(tmp_path):
    figure = plots.learning_curves(history_frame())
    path = tmp_path / "figures" / "curves.png"
    plots.save_figure(figure, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [entry.name for entry in path.parent.iterdir()] == ["curves.png"]
