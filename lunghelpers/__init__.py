"""lunghelpers: the helper package of the 2D lung segmentation notebooks.

Modules, in the order data flows through them::

    data, synthetic -> augment -> models, losses, metrics, schedules -> train -> evaluate -> plots
    experiment (notebook parameters -> run folder)      report (papermill over the notebooks)
    judgement (numbers in, Markdown out)   predict (segment a folder)   student (the student edition)

``import lunghelpers`` is cheap: modules and the names below are loaded on first use, so the
report and the data generator do not import TensorFlow until they need it. It also makes the first
import of TensorFlow after it quiet (``lunghelpers._quiet``): import the kit before ``keras`` and a
notebook shows none of TensorFlow's start-up lines.
"""

import importlib

from lunghelpers import _quiet

_quiet.install()

__version__ = "0.1.0"

_MODULES = (
    "augment", "data", "evaluate", "experiment", "judgement", "losses", "metrics", "models", "paths",
    "plots", "predict", "report", "schedules", "student", "synthetic", "train",
)
_NAMES = {
    "data": ("DataError", "load_pairs", "find_pairs", "split", "split_indices", "dataset_dirs",
             "build_cache", "load_cache", "cache_dataset"),
    "synthetic": ("ensure_dataset",),
    "augment": ("AugmentConfig", "augment_batch", "make_dataset", "add_gaussian_noise"),
    "models": ("simple_unet", "unet"),
    "losses": ("get_loss",),
    "metrics": ("iou", "dice", "precision", "recall", "pixel_accuracy", "training_metrics"),
    "schedules": ("source_schedule",),
    "train": ("RunFolder", "set_precision"),
    "evaluate": ("evaluate_run", "evaluate_folder", "load_run", "per_image_table", "threshold_sweep",
                 "select_by_band"),
    "predict": ("predict_folder", "load_predictor"),
    "experiment": ("ExperimentConfig", "prepare_data", "build_model", "load_config", "ensure_run"),
}
_NAME_TO_MODULE = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted(_MODULES + tuple(_NAME_TO_MODULE))


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"lunghelpers.{name}")
    if name in _NAME_TO_MODULE:
        return getattr(importlib.import_module(f"lunghelpers.{_NAME_TO_MODULE[name]}"), name)
    raise AttributeError(f"module 'lunghelpers' has no attribute {name!r}")


def __dir__():
    return __all__
