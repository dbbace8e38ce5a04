"""Masks and parameters are identical on every DDP rank after every step (2 CPU processes, gloo);
VD / l0 noise is drawn independently on each rank."""

import json

import pytest

from tests.conftest import TINY, run_cli


def ddp_rows(tmp_path, method: str) -> list[dict]:
    out = tmp_path / "checksums.json"
    run_cli(
        tmp_path / "run",
        *TINY,
        f"method={method}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "+callbacks.probe._target_=tests.ddp_probe.MaskChecksums",
        f"+callbacks.probe.out={out}",
    )
    assert (tmp_path / "run" / "results.json").exists()
    rows = json.loads(out.read_text())
    assert len(rows) == 40
    return rows


@pytest.mark.parametrize("method", ["magnitude", "random", "rigl"])
def test_masks_are_identical_on_every_rank_after_every_step(tmp_path, method):
    rows = ddp_rows(tmp_path, method)
    for row in rows:
        rank0, rank1 = row["ranks"]
        assert rank0["masks"] == rank1["masks"], f"masks differ after step {row['step']}"
        assert rank0["params"] == rank1["params"], f"weights differ after step {row['step']}"
    assert rows[0]["ranks"][0]["masks"] != rows[-1]["ranks"][0]["masks"]  # masks did change


def test_l0_ranks_draw_their_own_gates_and_keep_identical_parameters(tmp_path):
    """Also the controlled regulariser (control=target, the default): the multiplier follows
    from the parameters, so every rank holds the same one with no communication."""
    rows = ddp_rows(tmp_path, "l0")
    for row in rows:
        rank0, rank1 = row["ranks"]
        assert rank0["params"] == rank1["params"], f"parameters differ after step {row['step']}"
        assert rank0["multiplier"] == rank1["multiplier"], f"multipliers differ, {row['step']}"
        assert rank0["masks"] == rank1["masks"]
        assert rank0["noise"] != rank1["noise"], "both ranks drew the same gate noise"
    assert rows[0]["ranks"][0]["noise"] != rows[-1]["ranks"][0]["noise"]  # streams advanced
    assert rows[0]["ranks"][0]["multiplier"] != rows[-1]["ranks"][0]["multiplier"]  # it moved
