"""The paper's headline numbers (Gale, Elsen, Hooker 2019, arXiv:1902.09574, Tables/Figures 2-3),
for drawing beside a reproduction.

`load()` reads the tables of ../shared/reference/state-of-sparsity.md when that file is present,
and otherwise uses the copy below (tests check the copy against the file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "state-of-sparsity.md"


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
# Caption prefix in the reference -> (model, metric, scale).
MODELS = {
    "ResNet-50": ("resnet50", "test/acc", 0.01),
    "Transformer": ("transformer", "test/bleu", 1.0),
}

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
        "test/bleu",
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


def parse_reference(text: str) -> dict[str, PaperTable]:
    """The markdown tables under a caption that starts with a paper model's name."""
    tables: dict[str, PaperTable] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        caption = next((ln for ln in reversed(lines[:start]) if ln.strip()), "").strip()
        model = next((m for prefix, m in MODELS.items() if caption.startswith(prefix)), None)
        if model is None:
            continue
        rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[start:i]]
        header, body = rows[0], [r for r in rows[2:] if len(r) == len(rows[0])]
        values: dict[str, dict[float, float]] = {name: {} for name in header[1:]}
        for row in body:
            for name, cell in zip(header[1:], row[1:]):
                if re.fullmatch(r"[0-9.]+", cell):
                    values[name][float(row[0])] = float(cell)
        name, metric, scale = model
        tables[name] = PaperTable(name, metric, scale, caption.rstrip(":"), values)
    return tables


def load(reference: Path | None = REFERENCE) -> dict[str, PaperTable]:
    """Tables by model name: from the reference file if readable, else the copy above."""
    if reference is not None and Path(reference).is_file():
        tables = parse_reference(Path(reference).read_text(encoding="utf-8"))
        if tables:
            return tables
    return dict(COPY)


def table_for(model: str, tables: dict[str, PaperTable]) -> PaperTable | None:
    """The paper's table when ``model`` (a config name) is a paper model: `resnet50`,
    `resnet_50`, `transformer`, `transformer_base`; small stand-ins get none."""
    key = re.sub(r"[^a-z0-9]", "", model.lower())
    for name, table in tables.items():
        if key in (name, f"{name}base"):
            return table
    return None
