"""The in-site against cross-site readings (``judgement``, section "In-site against cross-site").

One test per branch of ``site_gap`` (one run) and of ``cross_site_gap``'s comparison of two runs'
gaps, on made-up per-image Dice: each checks the reading the numbers call for and that the numbers
a person reads are in the sentence.
"""

import numpy as np
import pandas as pd
import pytest

from lunghelpers import judgement

VALIDATION = [f"val{i:02d}" for i in range(20)]
OTHER_SITE = [f"site{i:02d}" for i in range(30)]


def steady(mean, images=VALIDATION, spread=0.01, seed=0):
    """Per-image Dice of mean exactly ``mean`` over ``images``, spread at random, reproducible."""
    noise = np.random.default_rng(seed).standard_normal(len(images))
    return pd.Series(mean + spread * (noise - noise.mean()), index=images, dtype=float)


def paragraphs(text):
    return text.split("\n\n")


# --- site_gap: one run ----------------------------------------------------------------------------

def test_site_gap_says_nothing_about_a_run_that_has_not_learned():
    text = judgement.site_gap("1a", steady(0.3), steady(0.1, OTHER_SITE), site="montgomery")
    assert text.startswith("**1a**: mean validation Dice 0.300 (in-site, 20 images), mean Dice on montgomery")
    assert "**not learned to find the lungs yet**" in text
    assert "gap of" not in text and "noise" not in text


def test_site_gap_finds_a_cross_site_dice_lower_beyond_the_noise():
    text = judgement.site_gap("1a", steady(0.95), steady(0.80, OTHER_SITE, seed=1), site="montgomery")
    assert "0.950 (in-site, 20 images)" in text
    assert "mean Dice on montgomery 0.800 (cross-site, 30 images)" in text
    assert "a gap of +0.150" in text and "95% bootstrap interval +0.1" in text
    assert "**its cross-site Dice is lower beyond the noise**, by 16% of its in-site Dice" in text


def test_site_gap_calls_a_small_gap_within_the_noise():
    inside = steady(0.90, spread=0.05)
    outside = steady(0.90, OTHER_SITE, spread=0.05, seed=1)
    text = judgement.site_gap("xray-strong", inside, outside)
    assert "the second site" in text
    assert "the gap is **within the noise**, so no loss on the second site is shown" in text


def test_site_gap_notices_a_cross_site_dice_higher_beyond_the_noise():
    text = judgement.site_gap("1a", steady(0.80), steady(0.95, OTHER_SITE, seed=1), site="montgomery")
    assert "a gap of -0.150" in text
    assert "**its cross-site Dice is higher beyond the noise**; montgomery's images are easier" in text


def test_site_gap_needs_scores_on_both_sites():
    with pytest.raises(ValueError, match="1a: the gap needs in-site and cross-site scores"):
        judgement.site_gap("1a", steady(0.9), [])


# --- cross_site_gap: the two recipes' gaps --------------------------------------------------------

def test_cross_site_gap_cannot_compare_when_a_run_has_not_learned():
    text = judgement.cross_site_gap("1a", steady(0.3), steady(0.2, OTHER_SITE),
                                    "xray-strong", steady(0.9, seed=2), steady(0.9, OTHER_SITE, seed=3))
    first, second, comparison = paragraphs(text)
    assert first.startswith("**1a**") and "not learned" in first
    assert second.startswith("**xray-strong**")
    assert comparison.startswith("**The gaps cannot be compared yet**: 1a has not learned")


def test_cross_site_gap_finds_the_robust_gap_smaller_beyond_the_noise():
    text = judgement.cross_site_gap("1a", steady(0.95), steady(0.75, OTHER_SITE, seed=1),
                                    "xray-strong", steady(0.95, seed=2), steady(0.93, OTHER_SITE, seed=3),
                                    site="montgomery")
    first, second, comparison = paragraphs(text)
    assert "lower beyond the noise" in first
    assert comparison.startswith("Gap of 1a +0.200, of xray-strong +0.020: 1a's minus xray-strong's is +0.180")
    assert "in-site and cross-site images each paired between the runs" in comparison
    assert "**xray-strong's gap is smaller beyond the noise**" in comparison
    assert "its recipe holds up better on montgomery" in comparison


def test_cross_site_gap_calls_similar_gaps_within_the_noise():
    text = judgement.cross_site_gap("1a", steady(0.90, spread=0.05), steady(0.80, OTHER_SITE, spread=0.05, seed=1),
                                    "xray-strong", steady(0.90, spread=0.05, seed=2),
                                    steady(0.80, OTHER_SITE, spread=0.05, seed=3))
    comparison = paragraphs(text)[-1]
    assert "the difference of the gaps is **within the noise**" in comparison


def test_cross_site_gap_finds_the_robust_gap_larger_beyond_the_noise():
    text = judgement.cross_site_gap("1a", steady(0.95), steady(0.93, OTHER_SITE, seed=1),
                                    "xray-strong", steady(0.95, seed=2), steady(0.75, OTHER_SITE, seed=3))
    comparison = paragraphs(text)[-1]
    assert "is -0.180" in comparison
    assert "**xray-strong's gap is larger beyond the noise**" in comparison
    assert "on the second site its recipe holds up worse than 1a's" in comparison


def test_cross_site_gap_resamples_each_set_on_its_own_when_the_runs_saw_other_images():
    text = judgement.cross_site_gap("1a", steady(0.95), steady(0.75, OTHER_SITE, seed=1),
                                    "xray-strong", steady(0.95, OTHER_SITE[:20], seed=2),
                                    steady(0.93, OTHER_SITE[:25], seed=3))
    assert "every set of images resampled on its own" in paragraphs(text)[-1]
