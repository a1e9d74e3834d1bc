"""lunghelpers: the helper package of the 2D lung segmentation notebooks.

Modules, in the order data flows through them::

    data, synthetic -> augment -> models, losses, metrics, schedules -> train -> evaluate -> plots
    experiment (notebook parameters -> run folder)      report (papermill over the notebooks)

``import lunghelpers`` is cheap: modules and the names below are loaded on first use, so the
report and the data generator do not import TensorFlow until they need it.
"""

import importlib

__version__ = "0.1.0"

_MODULES = (
    "augment", "data", "evaluate", "experiment", "losses", "metrics", "models", "paths", "plots",
    "report", "schedules", "synthetic", "train",
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
    "train": ("train", "set_precision"),
    "evaluate": ("evaluate_run", "load_run", "per_image_table", "threshold_sweep", "select_by_band"),
    "experiment": ("ExperimentConfig", "prepare_data", "build_model", "train_experiment", "ensure_run"),
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
