"""Tests of lunghelpers.experiment's helpers for notebooks that train several runs.

- ``variant`` puts a run of a comparison in a sub-folder of the configuration's run folder.
- ``count_pairs`` counts the pairs a configuration loads (at most ``limit``).
- ``train_or_reuse`` reuses a finished run with the same parameters, refuses one with other
  parameters (naming them), trains when there is none, and trains anew with ``overwrite``.
"""

import dataclasses

import pytest

from lunghelpers import experiment, synthetic, train


def test_variant_changes_only_what_it_is_told_and_nests_the_run_folder(tmp_path):
    base = experiment.ExperimentConfig(name="lab", run_dir=str(tmp_path / "lab"), model="unet", loss="bce")
    run = experiment.variant(base, "1b", loss="dice")
    assert (run.name, run.loss, run.run_path) == ("1b", "dice", tmp_path / "lab" / "1b")
    unchanged = {"name", "loss", "run_dir"}
    assert {
        field.name: getattr(run, field.name)
        for field in dataclasses.fields(run)
        if field.name not in unchanged
    } == {
        field.name: getattr(base, field.name)
        for field in dataclasses.fields(base)
        if field.name not in unchanged
    }
    assert (base.name, base.loss) == ("lab", "bce")


def finished_run(config):
    """A run folder that looks finished (params.json, metrics.json, model.keras) for ``config``."""
    train.write_json(config.run_path / "params.json", {"params": config.to_dict()})
    train.write_json(config.run_path / "metrics.json", {"val_dice": 0.5})
    (config.run_path / "model.keras").write_bytes(b"not trained here")


def test_train_or_reuse_reuses_a_finished_run_of_the_same_parameters(tmp_path):
    config = experiment.ExperimentConfig(run_dir=str(tmp_path / "run"), epochs=2)
    finished_run(config)
    # resume and overwrite=False say how to treat a folder, not what the run is: still the same run.
    assert experiment.train_or_reuse(dataclasses.replace(config, resume=True)) is False
    assert (config.run_path / "model.keras").read_bytes() == b"not trained here"


def test_train_or_reuse_refuses_a_finished_run_of_other_parameters(tmp_path):
    config = experiment.ExperimentConfig(run_dir=str(tmp_path / "run"), epochs=2)
    finished_run(config)
    with pytest.raises(ValueError, match=r"epochs: run 2, here 3.*OVERWRITE = True"):
        experiment.train_or_reuse(dataclasses.replace(config, epochs=3))
    assert (config.run_path / "model.keras").read_bytes() == b"not trained here"


def test_train_or_reuse_trains_then_reuses_then_overwrites(tmp_path):
    data_dir = synthetic.generate("ct", 10, tmp_path / "data", size=64, progress=False)
    config = experiment.ExperimentConfig(
        name="tiny", data_dir=str(data_dir), run_dir=str(tmp_path / "runs" / "tiny"), image_size=32,
        split=(0.8, 0.2), shuffle_split=True, batch_size=4, epochs=1, model="unet", base_filters=4,
        depth=2, loss="dice", augment="none", schedule="constant",
    )
    assert experiment.train_or_reuse(config, verbose=0) is True
    metrics = train.read_json(config.run_path / "metrics.json")
    assert metrics["epochs_completed"] == 1 and metrics["n_val"] == 2
    model_bytes = (config.run_path / "model.keras").read_bytes()

    assert experiment.train_or_reuse(config, verbose=0) is False
    assert (config.run_path / "model.keras").read_bytes() == model_bytes

    assert experiment.train_or_reuse(dataclasses.replace(config, overwrite=True), verbose=0) is True
    moved_aside = [path.name for path in config.run_path.parent.iterdir() if path.name.startswith("tiny.old-")]
    assert len(moved_aside) == 1
    assert (config.run_path / "metrics.json").exists()


def test_count_pairs_counts_the_pairs_a_configuration_loads(tmp_path):
    data_dir = synthetic.generate("ct", 6, tmp_path / "data", size=64, progress=False)
    counts = {
        limit: experiment.count_pairs(experiment.ExperimentConfig(data_dir=str(data_dir), limit=limit))
        for limit in (None, 4, 10)
    }
    assert counts == {None: 6, 4: 4, 10: 6}
