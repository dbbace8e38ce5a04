"""Init variants (issue 5): fixed masks from a source run, starting weights, budgets, bad input.

One stage-1 run (MP to 70 %, saving rewind.pt) and one stage-2 sweep over the four variants are
made once per module, through the two documented experiment configs, so the stage-2 folders also
test that ``init.mask_from`` interpolates to the stage-1 folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from sparse_lightning.config import CONF_DIR
from sparse_lightning.errors import ConfigError
from sparse_lightning.init.augmented import augmented_weight
from sparse_lightning.init.variants import check_same_model, prepare_init
from sparse_lightning.run.folder import read_rewind
from tests.conftest import TINY, run_cli, run_in_process

VARIANTS = ("scratch_e", "scratch_b", "lottery", "augmented")
REWIND_STEP = 2  # lottery_stage1 saves rewind.pt after 5 % of TINY's 40 steps


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lottery")
    run_cli(
        root / "unused",
        "hydra.mode=MULTIRUN",
        "experiment=lottery_stage1",
        "sparsity=s70",
        f"stage1_dir={root / 'stage1'}",
        *TINY,
    )
    (folder,) = (root / "stage1").glob("*sparsity=s70*")
    return folder


@pytest.fixture(scope="module")
def stage2(stage1) -> dict[str, Path]:
    root = stage1.parent.parent
    run_cli(
        root / "unused",
        "hydra.mode=MULTIRUN",
        "experiment=lottery_stage2",
        f"init={','.join(VARIANTS)}",
        "sparsity=s70",
        f"stage1_dir={stage1.parent}",
        f"hydra.sweep.dir={root / 'stage2'}",
        *TINY,
    )
    return {v: next((root / "stage2").glob(f"*init={v},*")) for v in VARIANTS}


def load(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / name, map_location="cpu", weights_only=True)


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# -- masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_masks_are_the_sources_and_pruned_weights_stay_zero(stage1, stage2, variant):
    run, source = stage2[variant], load(stage1, "masks.pt")
    masks = load(run, "masks.pt")
    assert masks.keys() == source.keys()
    assert all(torch.equal(masks[n], source[n]) for n in source)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    start = load(run, "init.pt")
    for name, keep in source.items():
        assert torch.equal(state[f"model.{name}_mask"], keep)  # unchanged after training
        assert bool((state[f"model.{name}"][~keep] == 0).all())
        assert bool((start[name][~keep] == 0).all())
        assert bool((state[f"model.{name}"][keep] != start[name][keep]).any())  # it trained
    got, src = results(run), results(stage1)
    assert got["sparsity"] == src["sparsity"] and got["init"]["masks_equal_source"] is True
    assert got["layer_sparsity"] == src["layer_sparsity"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_results_record_the_variant_and_the_interpolated_source(stage1, stage2, variant):
    got = results(stage2[variant])
    init = got["init"]
    assert init["variant"] == variant and Path(init["mask_from"]) == stage1
    # what ran is the fixed-mask callback; the source's method is in the init record
    assert got["method"] == "fixed_mask" and init["source_method"] == "magnitude"
    assert got["target_sparsity"] == 0.7
    assert init["budget_factor"] == (2.0 if variant == "scratch_b" else 1.0)
    assert init["rewind_step"] is None and init["source_steps"] == 40
    source = results(stage1)
    assert source["method"] == "magnitude" and source["init"]["variant"] == "standard"
    assert source["init"]["save_rewind_step"] == 2


# -- starting weights -------------------------------------------------------------------------
def test_lottery_starts_from_the_sources_init_bit_for_bit(stage1, stage2):
    source_init, masks = load(stage1, "init.pt"), load(stage1, "masks.pt")
    start = load(stage2["lottery"], "init.pt")
    for name, tensor in source_init.items():
        keep = masks.get(name, torch.ones_like(tensor, dtype=torch.bool))
        assert torch.equal(start[name][keep], tensor[keep]), name


def test_rewinding_starts_from_rewind_pt_bit_for_bit(stage1):
    step, rewound = read_rewind(stage1)
    assert step == REWIND_STEP
    cfg = compose_cfg(
        *TINY, "init=lottery", f"init.mask_from='{stage1}'", f"init.rewind_step={REWIND_STEP}"
    )
    model = start_model(cfg)
    masks, state = load(stage1, "masks.pt"), model.state_dict()
    for name, tensor in rewound.items():
        keep = masks.get(name, torch.ones_like(tensor, dtype=torch.bool))
        assert torch.equal(state[name][keep], tensor[keep]), name
        if name in masks:
            assert bool((state[name][~keep] == 0).all())
    assert not torch.equal(rewound["10.weight"], load(stage1, "init.pt")["10.weight"])


def start_model(cfg) -> nn.Module:
    """What train.py does before the first step, without a Trainer."""
    init = prepare_init(cfg)
    model = instantiate(cfg.model)
    mask_set = init.fixed_mask_callback().attach(model)
    init.set_weights(model, mask_set, lambda: instantiate(cfg.model))
    return model


@pytest.mark.parametrize("variant", ["scratch_e", "scratch_b", "augmented"])
def test_fresh_variants_differ_from_the_source_init(stage1, stage2, variant):
    source_init, start = load(stage1, "init.pt"), load(stage2[variant], "init.pt")
    for name, keep in load(stage1, "masks.pt").items():
        differ = (start[name][keep] != source_init[name][keep]).float().mean().item()
        assert differ > 0.99, (name, differ)
    assert results(stage2[variant])["init"]["init_seed"] != results(stage1)["seed"]


def test_steps_and_lr_schedule_scale_with_the_budget(stage2):
    for variant, steps in [("scratch_e", 40), ("scratch_b", 80), ("lottery", 40)]:
        ckpt = torch.load(stage2[variant] / "checkpoints" / "last.ckpt", weights_only=False)
        assert results(stage2[variant])["steps"] == steps == ckpt["global_step"]
        assert ckpt["lr_schedulers"][0]["T_max"] == steps  # cosine reaches 0 at the new end
        assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_budget_factor_rewrites_max_steps_before_anything_is_built(stage1):
    cfg = compose_cfg(
        *TINY, "init=scratch_b", f"init.mask_from='{stage1}'", "init.budget_factor=1.5"
    )
    prepare_init(cfg)
    assert cfg.trainer.max_steps == 60 and cfg.task.lr_scheduler.T_max == 60


# -- augmented init ---------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_augmented_std_matches_the_formula(kind, sparsity):
    torch.manual_seed(0)
    if kind == "conv":  # He normal, fan-out: std = sqrt(2 / ((1 - s) * k^2 * C_out))
        module = nn.Conv2d(64, 128, 3)
        expected = math.sqrt(2 / ((1 - sparsity) * 9 * 128))
        kurtosis = 3.0
    else:  # sparse Glorot: limit = sqrt(6 / ((1 - s) * (fan_in + fan_out))), std = limit / sqrt(3)
        module = nn.Linear(600, 300)
        expected = math.sqrt(6 / ((1 - sparsity) * 900)) / math.sqrt(3)
        kurtosis = 1.8
    mask = torch.rand(module.weight.shape) >= sparsity
    weight = augmented_weight(module, "weight", mask, torch.Generator().manual_seed(1))
    kept = weight[mask].double()
    assert bool((weight[~mask] == 0).all())
    # standard error of a sample std: sigma * sqrt((kurtosis - 1) / (4 n))
    se = expected * math.sqrt((kurtosis - 1) / (4 * kept.numel()))
    assert abs(kept.std().item() - expected) < 4 * se
    assert abs(kept.mean().item()) < 4 * expected / math.sqrt(kept.numel())


def expected_augmented_std(name: str, shape: tuple[int, ...], density: float) -> float:
    """The paper's rules typed out for cnn1d's layers (Gale et al. 2019, sec. 5.1)."""
    if len(shape) == 3:  # Conv1d (C_out, C_in, k): He normal, sqrt(2 / ((1 - s) k C_out))
        return math.sqrt(2 / (density * shape[2] * shape[0]))
    fan_out, fan_in = shape  # Linear: sparse Glorot uniform, limit / sqrt(3)
    nnz = density * fan_in * fan_out
    return math.sqrt(6 / (nnz / fan_out + nnz / fan_in)) / math.sqrt(3)


def test_an_augmented_run_starts_each_masked_layer_at_the_papers_std(stage1, stage2):
    """init.pt of the real CLI run, layer by layer: augmented follows the formulas, where
    scratch-e (the model's own init) does not."""
    masks = load(stage1, "masks.pt")
    augmented, scratch = load(stage2["augmented"], "init.pt"), load(stage2["scratch_e"], "init.pt")
    checked = 0
    for name, keep in masks.items():
        n = int(keep.sum())
        if n < 400:  # too few kept weights for a sample std within a few percent
            continue
        expected = expected_augmented_std(name, tuple(keep.shape), n / keep.numel())
        se = expected * math.sqrt(0.8 / (4 * n)) if keep.dim() == 2 else expected / math.sqrt(2 * n)
        assert abs(augmented[name][keep].double().std().item() - expected) < 5 * se, name
        assert abs(scratch[name][keep].double().std().item() - expected) > 10 * se, name
        checked += 1
    assert checked >= 3


def test_rewinding_through_the_cli_starts_training_from_rewind_pt(stage1, tmp_path):
    run = tmp_path / "rewound"
    run_cli(
        run, *TINY, "init=lottery", f"init.mask_from='{stage1}'", f"init.rewind_step={REWIND_STEP}"
    )
    _, rewound = read_rewind(stage1)
    start, masks = load(run, "init.pt"), load(stage1, "masks.pt")
    assert rewound.keys() == start.keys()
    for name, tensor in rewound.items():
        keep = masks.get(name, torch.ones_like(tensor, dtype=torch.bool))
        assert torch.equal(start[name][keep], tensor[keep]), name
        if name in masks:
            assert bool((start[name][~keep] == 0).all())
    assert results(run)["init"]["rewind_step"] == REWIND_STEP


def test_augmented_refuses_a_layer_it_has_no_rule_for():
    norm = nn.LayerNorm(8)
    with pytest.raises(ConfigError, match="LayerNorm"):
        augmented_weight(norm, "weight", torch.ones(8, dtype=torch.bool), torch.Generator())


# -- bad input --------------------------------------------------------------------------------
def test_a_different_model_fails_before_training_with_one_line(stage1, tmp_path):
    overrides = ["init=scratch_e", f"init.mask_from='{stage1}'", "model.channels=[16,32,32]"]
    result = run_cli(tmp_path, *TINY, *overrides, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "different model" in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "'0.weight' has shape (32, 1, 5) there and (16, 1, 5) here" in lines[0]
    assert not (tmp_path / "init.pt").exists() and not (tmp_path / "results.json").exists()


def test_a_model_differing_outside_the_masks_is_named():
    model = nn.Sequential(nn.Linear(4, 3))
    weight = torch.zeros(3, 4)
    with pytest.raises(ConfigError, match=r"'0.bias' has shape \(5,\) there and \(3,\) here"):
        check_same_model(model, {"0.weight": weight, "0.bias": torch.zeros(5)}, "src")
    with pytest.raises(ConfigError, match="this model's '0.bias' is not in it"):
        check_same_model(model, {"0.weight": weight}, "src")
    with pytest.raises(ConfigError, match="its '1.weight' is not in this model"):
        check_same_model(model, {"0.weight": weight, "1.weight": weight}, "src")


def copy_without(stage1: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(stage1, copy)
    (copy / name).unlink()
    return copy


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["init=lottery"], "init=lottery needs init.mask_from=<folder of an earlier"),
        (["init=scratch_e", "init.mask_from=/no/such/run"], "init.mask_from=/no/such/run does not"),
        (["init=augmented", "init.mask_from='{tmp}'"], "is not a finished sparse-train run folder"),
        (["init=scratch_b", "init.mask_from='{src}'", "init.budget_factor=0"], "budget_factor=0"),
        (["init=scratch_b", "init.mask_from='{src}'", "init.budget_factor=-1"], "budget_factor=-1"),
        (
            ["init=lottery", "init.mask_from='{src}'", "init.rewind_step=5"],
            "saved rewind.pt at step 2; use init.rewind_step=2 or re-run it: sparse-train",
        ),
        (["init.save_rewind_step=41"], "init.save_rewind_step=41 is not a training step"),
    ],
)
def test_bad_init_values_are_named(stage1, tmp_path, overrides, needle):
    overrides = [o.format(src=stage1, tmp=tmp_path) for o in overrides]
    with pytest.raises(ConfigError) as error:
        prepare_init(compose_cfg(*TINY, *overrides))
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_lottery_without_init_pt_says_which_run_to_rerun(stage1, tmp_path):
    copy = copy_without(stage1, tmp_path, "init.pt")
    cfg = compose_cfg(*TINY, "init=lottery", f"init.mask_from='{copy}'")
    with pytest.raises(
        ConfigError, match=f"has no init.pt; re-run the source run: sparse-train .*{copy}"
    ):
        prepare_init(cfg)


def test_rewinding_without_rewind_pt_says_how_to_rerun(stage1, tmp_path):
    copy = copy_without(stage1, tmp_path, "rewind.pt")
    cfg = compose_cfg(*TINY, "init=lottery", f"init.mask_from='{copy}'", "init.rewind_step=3")
    with pytest.raises(ConfigError, match="has no rewind.pt; re-run it: .*init.save_rewind_step=3"):
        prepare_init(cfg)


# -- the method that ran ----------------------------------------------------------------------
def test_an_explicit_method_with_a_retrain_variant_is_one_line_before_any_work(
    stage1, tmp_path, capsys
):
    overrides = ["init=scratch_e", f"init.mask_from='{stage1}'", "method=random", *TINY]
    assert run_in_process(tmp_path, *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "sparse-train: error: method=random has no effect with init=scratch_e"
    ), err
    assert not (tmp_path / "init.pt").exists() and not (tmp_path / "run.json").exists()


def test_the_method_override_is_refused_only_where_the_variant_replaces_the_method(stage1):
    retrain = ["init=lottery", f"init.mask_from='{stage1}'"]
    with pytest.raises(ConfigError, match="method=dense has no effect with init=lottery"):
        prepare_init(compose_cfg(*TINY, *retrain, "method=dense"), [*retrain, "method=dense"])
    # the same override with the standard init, and a retrain variant without one: accepted
    prepare_init(compose_cfg(*TINY, "method=dense"), ["method=dense"])
    assert prepare_init(compose_cfg(*TINY, *retrain), retrain).replaces_method
