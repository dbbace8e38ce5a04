"""The paper presets give every method its own settings (conf/tuning/<experiment>/<method>.yaml):
all five methods compose and build under both presets, with nothing of another method's."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sparse_lightning.callbacks import DenseBaseline, L0Regularization, VariationalDropout
from sparse_lightning.config import CONF_DIR
from tests.conftest import run_in_process

METHODS = ["dense", "magnitude", "random", "variational_dropout", "l0"]
PRESETS = {  # the MP schedule at 90 % as fractions of the run (every level: test_paper_fidelity)
    "sos_resnet50": (0.3125, 0.59375),
    "sos_transformer": (0.0, 0.8),
}
EXTRA_TUNING = {"sos_resnet50_extended/magnitude"}  # "MP extended" is magnitude pruning only


def method_of(experiment: str, method: str, sparsity: str = "90"):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", [f"experiment={experiment}", f"method={method}", f"sparsity=s{sparsity}"]
        )
    return cfg, instantiate(cfg.method)


@pytest.mark.parametrize("experiment", PRESETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_under_each_paper_preset(experiment, method):
    cfg, callback = method_of(experiment, method)
    assert callback.method_name == method
    begin, end = PRESETS[experiment]
    max_steps = cfg.trainer.max_steps
    if isinstance(callback, DenseBaseline):
        assert "frequency" not in cfg.method
    elif isinstance(callback, VariationalDropout | L0Regularization):
        assert "frequency" not in cfg.method
        assert 0 <= callback.begin_step < callback.end_step <= max_steps
    elif callback.method_name == "magnitude":  # the paper's schedule for this model
        assert (callback.schedule.begin_step, callback.schedule.end_step) == (
            int(begin * max_steps),
            int(end * max_steps),
        )


@pytest.mark.parametrize("experiment", PRESETS)
def test_variational_dropout_uses_the_paper_initialisation_of_each_model(experiment):
    _, callback = method_of(experiment, "variational_dropout")
    expected = {"sos_resnet50": -15.0, "sos_transformer": -10.0}[experiment]
    assert callback.log_sigma2_init == expected


def test_without_a_preset_the_default_settings_hold():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["method=variational_dropout"])
    assert cfg.method.log_sigma2_init == -10.0
    assert cfg.method.kl_weight == cfg.sparsity.vd.kl_weight


def test_every_tuning_file_belongs_to_a_preset_and_a_method():
    files = {
        p.relative_to(CONF_DIR / "tuning").with_suffix("").as_posix()
        for p in (CONF_DIR / "tuning").rglob("*.yaml")
    }
    pairs = {f"{experiment}/{method}" for experiment in PRESETS for method in METHODS}
    pairs |= EXTRA_TUNING
    assert files <= pairs, f"tuning files no preset/method selects: {sorted(files - pairs)}"


@pytest.mark.parametrize("experiment", PRESETS)
@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
@pytest.mark.parametrize("level", ["50", "60", "70", "80", "90", "95", "98"])
def test_regularised_methods_fit_the_budget_at_every_level(experiment, method, level):
    """The values themselves are checked against the authors' runs in test_paper_fidelity."""
    cfg, callback = method_of(experiment, method, level)
    callback.check_budget(cfg.trainer.max_steps)


# The reference's global batch, typed from the authors' code: tensor2tensor batch_size 2048
# padded tokens per core (state_of_sparsity sparse_transformer.py, sparse_transformer_*_tpu
# hparams) on a TPU of 8 cores.
REFERENCE_GLOBAL_TOKENS = 2048 * 8


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_the_transformer_preset_steps_on_the_references_global_batch(devices):
    trainer = "ddp" if devices > 1 else "default"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            ["experiment=sos_transformer", f"trainer={trainer}", f"trainer.devices={devices}"],
        )
    t = cfg.trainer
    tokens = cfg.data.max_tokens * t.devices * t.num_nodes * t.accumulate_grad_batches
    assert tokens == REFERENCE_GLOBAL_TOKENS == 16384
    # validation every 2 % of the optimiser steps, whatever the accumulation
    assert t.val_check_interval == 0.02 * t.max_steps * t.accumulate_grad_batches


@pytest.mark.parametrize(
    "overrides", [["trainer.devices=3"], ["data.max_tokens=3000"], ["trainer.num_nodes=16"]]
)
def test_a_global_batch_that_does_not_divide_stops_with_one_line(overrides, tmp_path, capsys):
    code = run_in_process(tmp_path, "experiment=sos_transformer", "data.root=/nowhere", *overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("sparse-train: error: global_tokens=16384 is not a whole multiple")
