"""Tests of lunghelpers.experiment: the configuration of a run and how it is read back.

- ``ExperimentConfig``'s defaults are the training notebook's ``parameters`` cell, written once:
  every parameter of that cell is a field and every field a parameter.
- ``from_namespace`` refuses an upper-case name that is no parameter, naming the closest one;
  sizes and splits of the wrong type are refused by name.
- ``load_config`` rebuilds the configuration recorded in a run's ``params.json``.
"""

import dataclasses

import pytest

from lunghelpers import experiment, train


def test_the_defaults_are_the_training_notebooks_parameters_cell():
    cell = experiment.notebook_parameters()
    fields = {field.name for field in dataclasses.fields(experiment.ExperimentConfig)}
    assert {name.lower() for name in cell} == fields  # QUICK is not a literal, so not listed
    defaults = experiment.ExperimentConfig()
    for name, value in cell.items():
        expected = tuple(value) if isinstance(value, (list, tuple)) else value
        assert getattr(defaults, name.lower()) == expected, name


def test_from_namespace_collects_parameters_and_refuses_unknown_ones():
    config = experiment.ExperimentConfig.from_namespace({"EPOCHS": 3, "LOSS": "dice", "QUICK": True, "x": 1})
    assert (config.epochs, config.loss) == (3, "dice")
    with pytest.raises(ValueError, match=r"EPOCH \(did you mean EPOCHS\?\)"):
        experiment.ExperimentConfig.from_namespace({"EPOCH": 3})
    with pytest.raises(ValueError, match=r"LERNING_RATE \(did you mean LEARNING_RATE\?\)"):
        experiment.ExperimentConfig.from_namespace({"LERNING_RATE": 0.1})


@pytest.mark.parametrize("size", ["64", (64,), (64, 64, 1), 4, (64.0, 64.0), True])
def test_bad_image_sizes_are_refused_by_name(size):
    with pytest.raises(ValueError, match="image_size"):
        experiment.ExperimentConfig(image_size=size)


@pytest.mark.parametrize("split", ["0.8,0.2", ["0.8", "0.2"]])
def test_bad_splits_are_refused_by_name(split):
    with pytest.raises(ValueError, match="split"):
        experiment.ExperimentConfig(split=split)


def test_load_config_rebuilds_the_recorded_configuration(tmp_path):
    config = experiment.ExperimentConfig(run_dir=str(tmp_path), image_size=64, limit=30, loss="dice")
    run = train.open_run(config.run_path, config.to_dict())
    assert experiment.load_config(run.path) == config
    with pytest.raises(FileNotFoundError, match="no params.json"):
        experiment.load_config(tmp_path / "nothing")


@pytest.mark.parametrize("name, value", [
    ("epochs", 0), ("epochs", 2.5), ("epochs", "3"), ("batch_size", 0), ("steps_per_epoch", -1),
    ("steps_per_epoch", 0), ("seed", -1), ("limit", 0), ("train_size", 0), ("base_filters", 0),
    ("depth", 9), ("learning_rate", float("nan")), ("learning_rate", 0), ("learning_rate", -1e-3),
    ("learning_rate", 2.0), ("weight_decay", -1), ("momentum", 1.0), ("clipnorm", 0), ("ema_momentum", 1), ("dropout_rate", 1.0),
    ("batch_norm_momentum", 0), ("train_noise_fraction", 1.5), ("val_noise_fraction", -0.1),
    ("noise_sigma", 0), ("threshold", 0), ("threshold", 1), ("epochs", True),
])
def test_out_of_range_parameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        experiment.ExperimentConfig(**{name: value})
