"""results.json from a typed record: its keys, the init sub-record, reading it back, and
older files that lack what a record needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparse_lightning.run.folder import read_results, write_results
from sparse_lightning.run.results import InitRecord, RunResults

TOP_LEVEL = [
    "method", "model", "data", "init", "seed", "target_sparsity", "sparsity", "layer_sparsity",
    "metrics", "steps", "seconds", "parameters", "overrides", "resumed_from_step",
    "method_details", "flops",
]  # fmt: skip


def lottery_record() -> RunResults:
    init = InitRecord(
        variant="lottery",
        mask_from="/runs/stage1/sparsity=s90",
        budget_factor=1.0,
        rewind_step=2,
        source_method="magnitude",
        source_sparsity=0.9,
        source_steps=40,
        source_metrics={"test/acc": 0.7},
        masks_equal_source=True,
    )
    return RunResults(
        method="fixed_mask",
        model="cnn1d",
        data="mnist1d",
        init=init,
        seed=1,
        target_sparsity=0.9,
        sparsity=0.9,
        layer_sparsity={"0.weight": 0.9},
        metrics={"test/acc": 0.68},
        steps=40,
        seconds=2.5,
        parameters=1234,
        overrides=["init=lottery", "sparsity=s90"],
        resumed_from_step=0,
        method_details={"backend": "torch"},
    )


def test_results_json_has_the_top_level_keys_and_the_init_sub_record(tmp_path: Path) -> None:
    write_results(tmp_path, lottery_record())
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written) == TOP_LEVEL
    assert written["method"] == "fixed_mask" and written["method_details"] == {"backend": "torch"}
    assert written["init"] == {
        "variant": "lottery",
        "mask_from": "/runs/stage1/sparsity=s90",
        "budget_factor": 1.0,
        "rewind_step": 2,
        "save_rewind_step": None,
        "weights_from": None,
        "keep_mask": False,
        "init_seed": None,
        "source_method": "magnitude",
        "source_sparsity": 0.9,
        "source_steps": 40,
        "source_metrics": {"test/acc": 0.7},
        "masks_equal_source": True,
    }


def test_a_written_record_reads_back_equal(tmp_path: Path) -> None:
    record = lottery_record()
    write_results(tmp_path, record)
    assert read_results(tmp_path) == record


def test_an_older_file_with_the_variant_as_a_string_still_reads() -> None:
    old = {k: v for k, v in lottery_record().to_json().items() if k != "method_details"}
    old["init"], old["mask_from"] = "scratch_e", "/elsewhere"  # the old flat layout
    record = RunResults.from_json(old)
    assert record.init == InitRecord(variant="scratch_e")
    assert record.method_details == {}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"model": None}, "older format: wrong type of model"),
        ({"metrics": [0.5]}, "older format: wrong type of metrics"),
        ({"init": 3}, "older format: wrong type of init"),
    ],
)
def test_a_file_with_a_key_of_the_wrong_type_says_which(change, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        RunResults.from_json({**lottery_record().to_json(), **change})


def test_a_file_missing_required_keys_names_them() -> None:
    data = lottery_record().to_json()
    del data["seed"], data["model"]
    with pytest.raises(ValueError, match="older format: missing model, seed"):
        RunResults.from_json(data)
