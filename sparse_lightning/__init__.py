"""sparse_lightning: sparsity methods as Lightning callbacks, experiments as Hydra configs."""

__version__ = "0.1.0"
