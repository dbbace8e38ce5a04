"""How a run's starting weights and masks are chosen (conf/init/): the standard init, or
retraining an earlier run's masks (scratch_e, scratch_b, lottery, augmented); the
augmented-init formulas; the fixed-mask and rewind callbacks those variants use."""

from sparse_lightning.init.variants import (
    AugmentedInit,
    InitVariant,
    LotteryInit,
    RetrainMask,
    ScratchInit,
    SourceRun,
    prepare_init,
)

__all__ = [
    "AugmentedInit",
    "InitVariant",
    "LotteryInit",
    "RetrainMask",
    "ScratchInit",
    "SourceRun",
    "prepare_init",
]
