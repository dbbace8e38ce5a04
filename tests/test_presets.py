"""The paper presets give every method its own settings (conf/tuned/<preset>/<method>/<level>.yaml):
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
EXTENDED = "sos_resnet50_extended"  # "MP extended" is magnitude pruning only
LEVELS = ["s50", "s60", "s70", "s80", "s90", "s95", "s98"]


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
        assert 0 <= callback.ramp.begin_step < callback.ramp.end_step <= max_steps
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
        cfg = compose("train", ["method=variational_dropout"], return_hydra_config=True)
    assert cfg.method.log_sigma2_init == -10.0
    assert cfg.hydra.runtime.choices.tuning == "default"
    # the default run's 90 % weight, from its tuned file
    assert cfg.method.kl_weight == 8.0e-6


@pytest.mark.parametrize(("level", "kl_weight", "l0_weight"), [("s50", 1.4e-6, 6.0e-6)])
def test_the_default_run_takes_its_tuned_weight_at_each_level(level, kl_weight, l0_weight):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        vd = compose("train", ["method=variational_dropout", f"sparsity={level}"])
        l0 = compose("train", ["method=l0", f"sparsity={level}"])
        untuned = compose("train", ["method=l0", f"sparsity={level}", "tuning=none"])
    assert (vd.method.kl_weight, l0.method.weight) == (kl_weight, l0_weight)
    assert untuned.method.weight == 5.0e-4  # the method's own default


def test_every_tuned_file_belongs_to_a_tuning_set_a_method_and_a_level():
    files = {
        p.relative_to(CONF_DIR / "tuned").with_suffix("").as_posix()
        for p in (CONF_DIR / "tuned").rglob("*.yaml")
    }
    sets = {p.stem for p in (CONF_DIR / "tuning").glob("*.yaml")}
    methods = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    levels = {p.stem for p in (CONF_DIR / "sparsity").glob("*.yaml")}
    stray = {
        f
        for f in files
        if not (lambda s, m, lv: s in sets and m in methods and lv in levels)(*f.split("/"))
    }
    assert not stray, f"tuned files no (tuning, method, sparsity) choice selects: {sorted(stray)}"
    for preset in PRESETS:
        assert {f"{preset}/{m}/{lv}" for m in METHODS if m != "dense" for lv in LEVELS} <= files
    assert {f"{EXTENDED}/magnitude/{lv}" for lv in LEVELS} <= files


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


TUNED = sorted(
    p.relative_to(CONF_DIR / "tuned").with_suffix("").as_posix()
    for p in (CONF_DIR / "tuned").rglob("*.yaml")
)


@pytest.mark.parametrize("tuned", TUNED)
def test_every_tuned_file_composes_under_its_choices_and_its_method_builds(tuned):
    tuning, method, level = tuned.split("/")
    experiment = [] if tuning == "default" else [f"experiment={tuning}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [*experiment, f"method={method}", f"sparsity={level}"])
    callback = instantiate(cfg.method)
    assert callback.method_name == method
    callback.check_budget(cfg.trainer.max_steps)


@pytest.mark.parametrize("experiment", PRESETS)
@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
@pytest.mark.parametrize("level", ["50", "90", "98"])
def test_paper_presets_keep_the_papers_fixed_regulariser_weights(experiment, method, level):
    _, callback = method_of(experiment, method, level)
    assert callback.control == "fixed" and callback.controller is None


@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
@pytest.mark.parametrize("tuning", ["default", "none"])
def test_outside_the_presets_vd_and_l0_are_steered_to_the_target(method, tuning):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [f"method={method}", "sparsity=s70", f"tuning={tuning}"])
    callback = instantiate(cfg.method)
    assert callback.control == "target"
    assert callback.controller.target_sparsity == 0.7 == callback.target_sparsity
