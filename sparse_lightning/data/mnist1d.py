"""MNIST-1D (Greydanus 2020), generated locally: no download, about a second on a CPU."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning.data.sampling import StepIndexedBatchSampler
from sparse_lightning.errors import ConfigError


class MNIST1DDataModule(pl.LightningDataModule):
    """The procedurally generated MNIST-1D split into train / val / test.

    The test split is mnist1d's own; ``val_size`` examples are held out of its training split.
    ``seed`` fixes the generated data (independent of the run seed, which sets the init);
    ``shuffle_seed`` fixes the order of training batches, a function of the step so that a
    resumed single-device run sees exactly the batches of an uninterrupted one.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_samples: int = 5000,
        train_split: float = 0.8,
        val_size: int = 500,
        seed: int = 42,
        shuffle_seed: int = 0,
        num_workers: int = 0,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if num_classes != 10:
            raise ConfigError(f"data.num_classes={num_classes}: MNIST-1D has exactly 10 classes")
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size={batch_size} must be positive")
        n_train = int(num_samples * train_split)
        if not 0 <= val_size < n_train:
            raise ConfigError(
                f"data.val_size={val_size} must be in [0, {n_train}) "
                f"(the training split of {num_samples} samples)"
            )
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.train_split = train_split
        self.val_size = val_size
        self.seed = seed
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        self.num_classes = num_classes

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = self.num_samples
        args.train_split = self.train_split
        args.seed = self.seed
        data = make_dataset(args)  # generates; never mnist1d's downloading get_dataset
        x = torch.as_tensor(data["x"], dtype=torch.float32).unsqueeze(1)
        y = torch.as_tensor(data["y"], dtype=torch.long)
        n_fit = len(x) - self.val_size
        self.train_set = TensorDataset(x[:n_fit], y[:n_fit])
        self.val_set = TensorDataset(x[n_fit:], y[n_fit:])
        x_test = torch.as_tensor(data["x_test"], dtype=torch.float32).unsqueeze(1)
        self.test_set = TensorDataset(x_test, torch.as_tensor(data["y_test"], dtype=torch.long))

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None or trainer.max_steps <= 0 or trainer.world_size > 1:
            return self._loader(self.train_set, shuffle=True)  # DDP: Lightning shards it
        accumulate = trainer.accumulate_grad_batches
        sampler = StepIndexedBatchSampler(
            len(self.train_set),
            self.batch_size,
            seed=self.shuffle_seed,
            total_steps=trainer.max_steps * accumulate,
            current_step=self._batches_consumed,
        )
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.num_workers)

    def _batches_consumed(self) -> int:
        return self.trainer.global_step * self.trainer.accumulate_grad_batches

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
