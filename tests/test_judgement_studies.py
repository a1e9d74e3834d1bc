"""The lab's and the robustness study's readings (``judgement``, section "Lab and robustness study").

One test per branch, on made-up per-image scores: each checks the reading the numbers call for
and that the numbers a person reads are in the sentence.
"""

import numpy as np
import pandas as pd
import pytest

from lunghelpers import judgement

IMAGES = [f"slice{i:02d}" for i in range(20)]


def scores(values):
    return pd.Series(values, index=IMAGES[: len(values)], dtype=float)


def steady(mean, spread=0.01, count=20, seed=0):
    """Per-image scores around ``mean``, reproducible."""
    return scores(np.clip(mean + spread * np.random.default_rng(seed).standard_normal(count), 0, 1))


# --- compare_settings -----------------------------------------------------------------------------

def test_compare_settings_refuses_to_answer_with_a_run_that_has_not_learned():
    text = judgement.compare_settings("Cross-entropy or Dice?", "1a", scores([0.3] * 20), "1b", scores([0.9] * 20))
    assert text.startswith("**Cross-entropy or Dice?**")
    assert "1a has **not learned to find the lungs yet**" in text
    assert "1a 0.300, 1b 0.900" in text
    assert "beyond the noise" not in text and "within the noise" not in text


def test_compare_settings_names_both_runs_when_neither_has_learned():
    text = judgement.compare_settings("Dropout?", "1a", steady(0.2), "1c", steady(0.3, seed=1))
    assert "1a and 1c have **not learned" in text


def test_compare_settings_says_within_the_noise_when_the_interval_contains_zero():
    a = steady(0.90, spread=0.05, seed=1)
    b = a + np.random.default_rng(2).normal(0, 0.03, len(a))  # no systematic difference
    text = judgement.compare_settings("A wider network?", "1c", a, "1d", b)
    assert "**within the noise**" in text
    assert "paired over 20 validation images" in text


def test_compare_settings_names_the_better_run_beyond_the_noise():
    text = judgement.compare_settings("Augmentation?", "2a", steady(0.90), "2b", steady(0.95, seed=3))
    assert "**2b is better than 2a** beyond the noise" in text


def test_compare_settings_needs_scores_for_both_runs():
    with pytest.raises(ValueError, match="1b: 0"):
        judgement.compare_settings("Q?", "1a", steady(0.9), "1b", [])


# --- against_reference ----------------------------------------------------------------------------

def test_against_reference_in_quick_mode_is_not_comparable():
    text = judgement.against_reference("2a", 0.41, 0.99, quick=True, synthetic=True)
    assert "Quick mode" in text and "not comparable" in text and "0.410" in text and "0.99" in text


def test_against_reference_on_synthetic_data_is_not_comparable():
    text = judgement.against_reference("2a", 0.97, 0.99, synthetic=True)
    assert "synthetic" in text and "not comparable" in text and "DATA_DIR" in text


def test_against_reference_in_words_is_left_to_the_reader():
    text = judgement.against_reference("c3", 0.70, "0.665 then 0.637", synthetic=False)
    assert "reading, not one figure" in text and "0.665 then 0.637" in text


def test_against_reference_matches_within_a_range():
    text = judgement.against_reference("1a", 0.962, "0.95-0.97", synthetic=False)
    assert "**It matches**" in text


def test_against_reference_above():
    text = judgement.against_reference("1a", 0.99, "0.95-0.97", synthetic=False)
    assert "**It is above**" in text and "0.020" in text


def test_against_reference_below():
    text = judgement.against_reference("2a", 0.90, 0.99, synthetic=False)
    assert "**It is below**" in text and "0.090" in text and "learning curves" in text


# --- side_confusion -------------------------------------------------------------------------------

def test_side_confusion_of_a_model_that_has_not_learned_says_nothing_yet():
    text = judgement.side_confusion(0.30, 0.2, 0.3, 0.4)
    assert "**not learned to find the lungs yet**" in text and "30.0%" in text


def test_side_confusion_practically_never():
    text = judgement.side_confusion(0.002, 0.95, 0.94, 0.96)
    assert "**practically never confuses the sides**" in text and "0.2%" in text


def test_side_confusion_real_share():
    text = judgement.side_confusion(0.08, 0.80, 0.78, 0.95)
    assert "**a real share of side confusion**" in text and "8.0%" in text and "0.950" in text


# --- derived_labels -------------------------------------------------------------------------------

def test_derived_labels_all_exact():
    text = judgement.derived_labels(267, 267, 1.0, 1.0, 0)
    assert "**The rule never had to guess**" in text and "267 of them" in text


def test_derived_labels_split_at_the_centre():
    text = judgement.derived_labels(267, 250, 0.98, 0.97, 3)
    assert "3 masks had a single lung-sized region" in text and "**were split at the image's centre column**" in text


def test_derived_labels_islands():
    text = judgement.derived_labels(267, 260, 0.999, 0.998, 0)
    assert "**small islands given to the nearer lung**" in text and "260 of them" in text


# --- size_sweep -----------------------------------------------------------------------------------

def test_size_sweep_where_no_run_has_learned():
    text = judgement.size_sweep({5: scores([0.2] * 20), 20: scores([0.3] * 20)})
    assert "**No run has learned to find the lungs yet**" in text
    assert "5 images 0.200, 20 images 0.300" in text


def test_size_sweep_where_even_the_smallest_size_is_within_the_noise():
    base = steady(0.95, spread=0.03, seed=4)
    text = judgement.size_sweep({5: base + np.random.default_rng(5).normal(0, 0.02, 20), 105: base})
    assert "**Even 5 images are within the noise of the best**" in text


def test_size_sweep_from_a_size_on():
    base = steady(0.935, spread=0.03, seed=2)
    text = judgement.size_sweep({5: base - 0.25, 20: base + np.random.default_rng(6).normal(0, 0.02, 20), 105: base})
    assert "**From 20 images on**" in text and "with 5 images the Dice is lower beyond the noise" in text


def test_size_sweep_needs_runs():
    with pytest.raises(ValueError, match="at least one run"):
        judgement.size_sweep({})
