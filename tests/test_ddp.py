"""Masks are identical on every DDP rank after every update (2 CPU processes, gloo)."""

import json

import pytest

from tests.conftest import TINY, run_cli


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_masks_are_identical_on_every_rank_after_every_step(tmp_path, method):
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
    rows = json.loads(out.read_text())
    assert len(rows) == 40
    for row in rows:
        rank0, rank1 = row["ranks"]
        assert rank0 == rank1, f"masks differ between ranks after step {row['step']}"
    assert rows[0]["ranks"][0] != rows[-1]["ranks"][0]  # masks did change during the run
    assert (tmp_path / "run" / "results.json").exists()
