"""The paper's headline numbers (Gale, Elsen, Hooker 2019, arXiv:1902.09574, Tables/Figures 2-3),
for drawing beside a reproduction.

The numbers are data the package ships (typed from the paper's Tables/Figures and the checkpoints
of google-research ``state_of_sparsity/README.md``); `load()` returns them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperTable:
    """One model's results: ``values[column][sparsity %] = metric`` in the paper's units."""

    model: str  # config name of the model (conf/model/<model>.yaml)
    metric: str  # the key in results.json's "metrics"
    scale: float  # paper units -> results.json units (top-1 % -> accuracy fraction)
    caption: str
    values: dict[str, dict[float, float]] = field(default_factory=dict)


# Paper column -> method config name (conf/method/<name>.yaml); unmapped columns are drawn
# under their own label.
METHODS = {"MP": "magnitude", "Random": "random", "VD": "variational_dropout", "l0": "l0"}
# The paper's BLEU is Moses-tokenised, compound-split multi-bleu (get_ende_bleu.sh; its result
# CSVs call it "MOSES BLEU"), logged as test/bleu_tok (modules/translation.py), never
# sacreBLEU's test/bleu.
TRANSFORMER_METRIC = "test/bleu_tok"

COPY: dict[str, PaperTable] = {
    "resnet50": PaperTable(
        "resnet50",
        "test/acc",
        0.01,
        "ResNet-50 top-1 % (dense 76.69 average of 3 runs)",
        {
            "MP": {50: 76.53, 70: 76.38, 80: 75.58, 90: 73.91, 95: 70.59, 98: 57.90},
            "MP, first layer dense": {80: 76.52, 90: 75.16, 95: 72.71, 96.5: 69.26},
            "Random": {50: 74.59, 70: 72.20, 80: 70.21, 90: 65.00, 95: 58.04, 98: 43.99},
            "VD": {50: 76.55, 80: 75.28, 90: 73.84, 95: 71.91, 98: 67.36},
        },
    ),
    "transformer": PaperTable(
        "transformer",
        TRANSFORMER_METRIC,
        1.0,
        "Transformer BLEU (dense 27.12–27.52)",
        {
            "MP": {50: 26.33, 60: 25.94, 70: 25.21, 80: 24.65, 90: 23.26, 95: 20.75, 98: 16.37},
            "VD": {50: 26.26, 60: 25.37, 70: 25.08, 80: 24.33, 90: 21.43, 95: 19.13, 98: 14.45},
            "l0": {50: 26.72, 60: 26.16, 70: 25.29, 80: 24.15, 90: 20.05, 95: 19.78, 98: 16.83},
            "Random": {
                50: 24.56, 60: 24.45, 70: 24.01, 80: 23.15, 90: 20.67, 95: 17.42, 98: 10.94,
            },
        },
    ),
}  # fmt: skip


def load() -> dict[str, PaperTable]:
    """The paper's tables by model name."""
    return dict(COPY)


def table_for(model: str, tables: dict[str, PaperTable]) -> PaperTable | None:
    """The paper's table when ``model`` (a config name) is a paper model: `resnet50`,
    `resnet_50`, `transformer`, `transformer_base`; small stand-ins get none."""
    key = re.sub(r"[^a-z0-9]", "", model.lower())
    for name, table in tables.items():
        if key in (name, f"{name}base"):
            return table
    return None
