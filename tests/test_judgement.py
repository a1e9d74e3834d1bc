"""One test per branch of lunghelpers.judgement, on made-up histories and tables.

Each test asserts on the reading chosen (its bold key phrase) and on the numbers in it, e.g.
that epochs count from 1 while the history's ``epoch`` column counts from 0.
"""

import numpy as np
import pandas as pd
import pytest

from lunghelpers import judgement


def history(loss, val_loss, **columns):
    """A history as CSVLogger writes it: ``epoch`` from 0."""
    return pd.DataFrame({"epoch": range(len(loss)), "loss": loss, "val_loss": val_loss, **columns})


# A 10-epoch run whose validation loss bottoms out at epoch 5 (row 4) and then rises for good.
OVERFIT = history(
    [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1],
    [0.9, 0.7, 0.55, 0.5, 0.45, 0.5, 0.55, 0.6, 0.62, 0.65],
)


# ----------------------------------------------------------------------------------------------
# progress


def test_progress_single_epoch_is_no_curve():
    text = judgement.progress(history([0.7], [0.6]))
    assert "single epoch" in text and "0.700" in text and "0.600" in text


def test_progress_still_improving_names_the_last_epoch_from_one():
    text = judgement.progress(history([0.9, 0.7, 0.5, 0.4, 0.3], [0.8, 0.6, 0.5, 0.4, 0.3]))
    assert "**still improving at the end**" in text
    assert "epoch 5 of 5" in text
    assert "fell by 0.300 over epochs 2-5" in text


def test_progress_levelled_off():
    text = judgement.progress(history([0.9, 0.5, 0.4, 0.39, 0.38], [0.8, 0.402, 0.40, 0.401, 0.399]))
    assert "**levelled off**" in text
    assert "epoch 5 of 5" in text and "(0.399)" in text


def test_progress_stopped_improving_names_the_best_epoch_from_one():
    text = judgement.progress(OVERFIT)
    assert "**stopped improving** after epoch 5 of 10" in text
    assert "5 epochs before the end" in text
    assert "keeps epoch 5's weights" in text
    assert "from 1.000 to 0.100" in text


def test_progress_refuses_a_history_without_val_loss():
    with pytest.raises(ValueError, match="val_loss"):
        judgement.progress(pd.DataFrame({"epoch": [0], "loss": [0.5]}))


# ----------------------------------------------------------------------------------------------
# overfitting


def test_overfitting_too_few_epochs_even_when_validation_rose():
    # The quick report's case: the validation loss rose in the last epoch of a short run.
    text = judgement.overfitting(history([0.9, 0.7, 0.6, 0.5], [0.8, 0.5, 0.4, 0.9]))
    assert "**Too few epochs to judge over-fitting**" in text
    assert "4 epochs" in text


def test_overfitting_needs_a_sustained_rise():
    text = judgement.overfitting(OVERFIT)
    assert "**Over-fitting**" in text
    assert "0.450, at epoch 5 of 10" in text
    assert "from 0.400 to 0.100" in text


def test_one_rising_epoch_is_not_overfitting():
    # Minimum at epoch 9 of 10, a single rise at the end: no sustained rise.
    text = judgement.overfitting(history(
        [1.0, 0.8, 0.6, 0.5, 0.45, 0.4, 0.38, 0.36, 0.35, 0.34],
        [0.9, 0.75, 0.6, 0.52, 0.47, 0.43, 0.41, 0.39, 0.37, 0.40],
    ))
    assert "Over-fitting" not in text
    assert "**Close curves**" in text


def test_a_rise_within_the_margin_is_not_overfitting():
    # Best at epoch 5, later epochs only 2 % above it.
    val = [0.9, 0.7, 0.55, 0.5, 0.45, 0.459, 0.458, 0.459, 0.459, 0.459]
    text = judgement.overfitting(history(list(OVERFIT["loss"]), val))
    assert "Over-fitting" not in text


def test_overfitting_gap_to_watch():
    text = judgement.overfitting(history(
        [1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.85, 0.7, 0.62, 0.55, 0.5],
    ))
    assert "**A gap to watch**" in text
    assert "ends 0.200 above" in text
    assert "at epoch 3" in text  # row 2, three epochs before the end


def test_overfitting_validation_below_training():
    text = judgement.overfitting(history(
        [1.0, 0.8, 0.6, 0.5, 0.4, 0.35], [0.9, 0.7, 0.5, 0.45, 0.35, 0.3],
    ))
    assert "**Validation below training**" in text
    assert "0.050 below" in text
    assert "augmented" in text


def test_overfitting_close_curves():
    text = judgement.overfitting(history(
        [1.0, 0.8, 0.6, 0.5, 0.4, 0.35], [1.0, 0.82, 0.63, 0.52, 0.42, 0.37],
    ))
    assert "**Close curves**" in text
    assert "ends +0.020 from" in text and "over 6 epochs" in text
    # Slightly below the training loss (under 5 % of it) is close too, not "validation below training".
    slightly = judgement.overfitting(history([1.0, 0.8, 0.6, 0.5, 0.4, 0.35], [1.0, 0.8, 0.6, 0.5, 0.4, 0.34]))
    assert "**Close curves**" in slightly and "-0.010 from" in slightly


# ----------------------------------------------------------------------------------------------
# schedule_effect


def source_history(epochs=25, frozen=True):
    rates = [1e-3 if epoch < 20 else 1e-3 * 0.1 ** (epoch - 19) for epoch in range(epochs)]
    loss = list(np.linspace(1.0, 0.3, 20))[:epochs]
    tail = [0.3 - 0.0001 * (k + 1) for k in range(epochs - 20)] if frozen else [
        0.3 - 0.05 * (k + 1) for k in range(epochs - 20)]
    return history(loss + tail, [0.5] * epochs, learning_rate=rates)


def test_schedule_source_long_run_frozen_after_the_drop():
    text = judgement.schedule_effect(source_history(), "source")
    assert "epochs 1-20" in text
    assert "1e-04 at epoch 21" in text
    assert "1e-08 at epoch 25" in text
    assert "over all 5 epochs after it" in text
    assert "frozen" in text and "epoch 23" in text


def test_schedule_source_long_run_still_settling_after_the_drop():
    text = judgement.schedule_effect(source_history(frozen=False), "source")
    assert "1e-04 at epoch 21" in text
    assert "still settled the weights" in text
    assert "frozen" not in text


def test_schedule_source_short_run_never_changed():
    text = judgement.schedule_effect(source_history(epochs=6), "source")
    assert "6 epochs, no more than the 20" in text
    assert "stayed at 0.001" in text
    assert "from epoch 21 on" in text


def test_schedule_plateau_reductions_with_float32_rates():
    rates = np.array([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5], dtype=np.float32).astype(float)
    text = judgement.schedule_effect(history([0.5] * 6, [0.5] * 6, learning_rate=rates), "plateau")
    assert "lowered the rate 2 times" in text
    assert "from epoch 4, 6 on" in text


def test_schedule_plateau_never_lowered():
    text = judgement.schedule_effect(history([0.5] * 4, [0.5] * 4, learning_rate=[1e-3] * 4), "plateau")
    assert "never lowered the rate" in text and "all 4 epochs" in text


def test_schedule_cosine_and_constant_and_unknown():
    rates = [1e-3 * 0.5 * (1 + np.cos(np.pi * epoch / 10)) for epoch in range(10)]
    cosine = judgement.schedule_effect(history([0.5] * 10, [0.5] * 10, learning_rate=rates), "cosine")
    assert "smoothly from 0.001 at epoch 1" in cosine and "at epoch 6" in cosine and "epoch 10" in cosine
    constant = judgement.schedule_effect(history([0.5] * 3, [0.5] * 3, learning_rate=[1e-3] * 3), "constant")
    assert "stayed at 0.001 for all 3 epochs" in constant
    unknown = judgement.schedule_effect(history([0.5] * 3, [0.5] * 3, learning_rate=[1e-3, 1e-3, 1e-4]))
    assert "from 1e-03 at epoch 1 to 1e-04 at epoch 3" in unknown


def test_schedule_needs_the_learning_rate_column():
    with pytest.raises(ValueError, match="learning_rate"):
        judgement.schedule_effect(history([0.5], [0.5]), "source")


# ----------------------------------------------------------------------------------------------
# accuracy against overlap, and the combined learning-curve reading


def test_accuracy_vs_overlap_background_dominates():
    text = judgement.accuracy_vs_overlap(0.95, 0.1, "IoU", "test")
    assert "background dominates" in text and "Test pixel accuracy 0.950, IoU 0.100" in text


def test_accuracy_vs_overlap_both_low():
    text = judgement.accuracy_vs_overlap(0.6, 0.2)
    assert "not learned" in text and "background dominates" not in text


def test_accuracy_vs_overlap_good_overlap():
    text = judgement.accuracy_vs_overlap(0.98, 0.9, "Dice", "val")
    assert "stricter" in text and "Validation pixel accuracy 0.980, Dice 0.900" in text


def test_learning_curves_joins_the_readings():
    frame = source_history(epochs=4)
    frame["val_accuracy"] = 0.95
    frame["val_dice"] = 0.2
    text = judgement.learning_curves(frame, "source")
    paragraphs = text.split("\n\n")
    assert len(paragraphs) == 4
    assert "Over 4 epochs" in paragraphs[0]
    assert "**Too few epochs" in paragraphs[1]
    assert "At the last epoch (4)" in paragraphs[2]
    assert "stayed at 0.001" in paragraphs[3]
    assert len(judgement.learning_curves(history([0.5, 0.4], [0.6, 0.5])).split("\n\n")) == 2
    longer = source_history(epochs=8)
    assert "**Validation below training**" in judgement.learning_curves(longer).split("\n\n")[1]


# ----------------------------------------------------------------------------------------------
# evaluation (06)


def test_evaluation_split_test_and_validation():
    assert "**test** split: 54 images" in judgement.evaluation_split("test", 54)
    text = judgement.evaluation_split("val", 40)
    assert "**no test part**" in text and "**validation** split (40 images)" in text


def test_empty_prediction_iou_beats_accuracy():
    text = judgement.empty_prediction(0.1, 0.98, 0.85, 0.9, 0.0, "test")
    assert "10.0% of the test pixels" in text
    assert "**0.900**, against our model's 0.980" in text
    assert "every test image contains lung" in text
    assert "by 0.850 in IoU but by only 0.080" in text


def test_empty_prediction_model_not_learned_and_lung_free_images():
    text = judgement.empty_prediction(0.1, 0.85, 0.3, 0.9, 0.25, "val", n_without_lung=3)
    assert "higher than our model's 0.850" in text
    assert "3 lung-free images score 1" in text
    assert "validation pixels" in text
    assert "barely above" in text


def test_held_out_gap_and_none():
    text = judgement.held_out_gap(0.99, 0.95, "test", in_file_order=True)
    assert "trail by 0.040" in text and "file order" in text
    assert "file order" not in judgement.held_out_gap(0.99, 0.95, "test")
    assert "no gap worth mentioning" in judgement.held_out_gap(0.97, 0.96)


def test_source_comparison_synthetic_is_not_comparable():
    text = judgement.source_comparison(0.95, 0.7, synthetic=True)
    assert "**the figures are not comparable**" in text and "synthetic" in text
    assert "**0.950** at threshold 0.5" in text and "**0.700** at threshold 0.1" in text
    assert "0.978" in text and "0.82" in text and "0.950" in text


def test_source_comparison_another_dataset():
    text = judgement.source_comparison(0.97, 0.9, split="val", synthetic=False, dataset="xray")
    assert "segments xray images, the source CT slices" in text and "**the figures are not comparable**" in text


def test_source_comparison_short_run_and_validation():
    short = judgement.source_comparison(0.9, 0.5, synthetic=False, epochs=2)
    assert "trained 2 epochs, the source 40" in short and "**the figures are not comparable**" in short
    text = judgement.source_comparison(0.99, 0.9, split="val", synthetic=False)
    assert "**not the same kind of figure**" in text and "validation split" in text


def test_source_comparison_as_good():
    text = judgement.source_comparison(0.976, 0.83, synthetic=False, epochs=40)
    assert "**As good as the source's figures**" in text


def test_source_comparison_below_lists_the_reasons():
    text = judgement.source_comparison(0.96, 0.78, synthetic=False, n_images=54,
                                       history=source_history(), schedule="source")
    assert "**Below the source's figures**" in text and "+0.018 short" in text
    reasons = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(reasons) == 3
    # Row 21 (rate 1e-5, a hundredth of 1e-3) is epoch 22; 4 of 25 epochs at that rate or lower.
    assert "from epoch 22 on" in reasons[0] and "last 4 of 25 epochs" in reasons[0]
    assert "54 test images" in reasons[1]
    plain = judgement.source_comparison(0.96, 0.78, synthetic=False, schedule="cosine")
    assert len([line for line in plain.splitlines() if line.startswith("- ")]) == 2


def test_threshold_choice_branches():
    assert "Neither threshold" in judgement.threshold_choice(0.05, 0.02)
    assert "gains 0.030" in judgement.threshold_choice(0.83, 0.80)
    assert "costs 0.030" in judgement.threshold_choice(0.80, 0.83)
    assert "barely matters" in judgement.threshold_choice(0.801, 0.80)
    assert "at 0.1, the mean validation IoU is **0.801**" in judgement.threshold_choice(0.801, 0.8, split="val")


def sweep(values):
    thresholds = np.round(np.arange(0.05, 1.0, 0.05), 2)[: len(values)]
    return pd.DataFrame({"threshold": thresholds, "mean_iou": values})


def test_threshold_reading_no_lung():
    text = judgement.threshold_reading(sweep([0.05, 0.04, 0.02]), 0.5)
    assert "almost no lung" in text and "peaks at threshold **0.05** (0.050)" in text


def test_threshold_reading_flat():
    text = judgement.threshold_reading(sweep([0.90, 0.905, 0.91, 0.905]), 0.012)
    assert "**A flat curve**" in text and "0.15" in text and "1.2%" in text


def test_threshold_reading_not_flat():
    text = judgement.threshold_reading(sweep([0.6, 0.7, 0.8, 0.75]), split="val")
    assert "**The curve is not flat**" in text
    assert "peaks at threshold **0.15** (0.800)" in text and "varies by 0.200" in text
    with pytest.raises(ValueError, match="mean_iou"):
        judgement.threshold_reading(pd.DataFrame({"threshold": [0.5]}))


def test_segmentation_errors_branches():
    assert "**misses**" in judgement.segmentation_errors(0.9, 0.6)
    assert "**adds**" in judgement.segmentation_errors(0.6, 0.9)
    assert "about as much" in judgement.segmentation_errors(0.8, 0.81)


def per_image(ious, fractions, precision, recall):
    return pd.DataFrame({
        "name": [f"img{k}" for k in range(len(ious))], "iou": ious, "target_fraction": fractions,
        "predicted_fraction": fractions, "precision": precision, "recall": recall,
    })


def test_per_image_spread_small_lungs_among_the_worst():
    table = per_image([0.5, 0.9, 0.95, 0.96], [0.02, 0.2, 0.2, 0.2], [0.9] * 4, [0.5, 0.9, 0.9, 0.9])
    text = judgement.per_image_spread(table, "test", n_worst=1)
    assert "from 0.500 to 0.960 (median 0.925)" in text
    assert "small lungs are over-represented" in text and "**misses**" in text


def test_per_image_spread_no_lung_found_anywhere():
    table = per_image([0.0, 0.02, 0.0, 0.05], [0.02, 0.2, 0.2, 0.2], [1.0] * 4, [0.0, 0.02, 0.0, 0.05])
    text = judgement.per_image_spread(table, "test")
    assert "No image reaches an IoU of 0.1" in text and "over-represented" not in text
    assert "**misses**" in text


def test_per_image_spread_not_small_lungs():
    # 0.18 is less lung than the median 0.2, but not clearly less (80 % or more of it).
    table = per_image([0.5, 0.9, 0.95, 0.96], [0.18, 0.2, 0.2, 0.2], [0.5, 0.9, 0.9, 0.9], [0.9] * 4)
    text = judgement.per_image_spread(table, "val", n_worst=1)
    assert "not simply the images with little lung" in text and "**adds**" in text


# ----------------------------------------------------------------------------------------------
# bands (07)

BANDS = ((0.85, 0.9), (0.9, 0.95), (0.95, 1.0))


def test_band_summary_every_band_filled():
    text = judgement.band_summary(dict(zip(BANDS, (3, 4, 5))), n_below=2)
    assert "Of the 14 test images" in text and "2 score below 0.85" in text
    assert "5 in [0.95, 1.00]" in text and "Every band holds" in text


def test_band_summary_names_an_empty_band_plainly():
    text = judgement.band_summary(dict(zip(BANDS, (3, 0, 5))), n_below=0, split="val")
    assert "**No validation image has an IoU in [0.90, 0.95)**: that band is empty." in text
    assert "[0.85, 0.90)**" not in text


def test_band_summary_all_bands_empty():
    text = judgement.band_summary(dict(zip(BANDS, (0, 0, 0))), n_below=12)
    assert "**No test image reaches IoU 0.85**" in text and "12 score below" in text


def groups(*rows):
    return pd.DataFrame(
        rows, columns=["label", "images", "mean_iou", "lung_fraction", "predicted_fraction",
                       "precision", "recall"],
    ).set_index("label")


def test_band_comparison_single_group():
    text = judgement.band_comparison(groups(("below 0.85", 12, 0.3, 0.2, 0.1, 0.9, 0.3)))
    assert "All 12 test images fall in one group, below 0.85 (mean IoU 0.300)" in text
    assert "**misses**" in text


def test_band_comparison_low_iou_with_less_lung():
    text = judgement.band_comparison(groups(
        ("below 0.85", 3, 0.6, 0.05, 0.08, 0.6, 0.9), ("[0.95, 1.00]", 5, 0.97, 0.2, 0.2, 0.97, 0.97)))
    assert "show less lung" in text and "5.0% lung" in text and "**adds**" in text


def test_band_comparison_low_iou_not_less_lung():
    text = judgement.band_comparison(groups(
        ("below 0.85", 3, 0.6, 0.3, 0.3, 0.8, 0.8), ("[0.95, 1.00]", 5, 0.97, 0.2, 0.2, 0.97, 0.97)))
    assert "do not show less lung" in text and "about as much" in text


# ----------------------------------------------------------------------------------------------
# bootstrap and compare_runs


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).normal(0.8, 0.05, size=54)
    low, high = judgement.bootstrap_interval(values)
    assert low < values.mean() < high
    assert judgement.bootstrap_interval(values) == (low, high)
    assert judgement.bootstrap_interval(values, seed=1) != (low, high)
    # About 2 standard errors either side for a 95 % interval.
    standard_error = values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(1.96 * standard_error, rel=0.15)
    assert judgement.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        judgement.bootstrap_interval([np.nan])


def test_compare_runs_within_the_noise():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.7, 0.9, size=54)
    b = a + rng.normal(0, 0.05, size=54)
    text = judgement.compare_runs("ct-source", a, "ct-strong", b, metric="iou")
    assert "**within the noise**" in text and "Mean test IoU" in text
    assert "paired over 54 test images" in text


def test_compare_runs_one_better_paired_by_image_name():
    names = [f"img{k}" for k in range(30)]
    a = pd.Series(np.linspace(0.9, 0.95, 30), index=names)
    b = pd.Series(np.linspace(0.8, 0.85, 30), index=names[::-1])  # other order, same images
    text = judgement.compare_runs("strong", a, "source", b)
    assert "**strong is better than source**" in text
    assert "a difference of +0.100" in text and "paired over 30" in text
    swapped = judgement.compare_runs("source", b, "strong", a)
    assert "**strong is better than source**" in swapped and "-0.100" in swapped


def test_compare_runs_unpaired_for_different_images():
    text = judgement.compare_runs("a", [0.9, 0.92, 0.91], "b", [0.5, 0.52, 0.49, 0.51], split="val")
    assert "over 3 and 4 validation images" in text and "**a is better than b**" in text
    with pytest.raises(ValueError, match="both runs"):
        judgement.compare_runs("a", [], "b", [0.5])
