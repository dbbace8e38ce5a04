"""ImageNet (or any image folder tree) with the standard ResNet augmentation.

Layout: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (torchvision ImageFolder).
ImageNet has no labelled test split, so the test stage evaluates ``val`` as the paper did.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from sparse_lightning.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # val: resize the short side to 256, centre crop 224


def train_transform(image_size: int) -> transforms.Compose:
    """Random-resized crop (scale 0.08-1, aspect 3/4-4/3) and horizontal flip (Szegedy 2015)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> transforms.Compose:
    """Resize the short side to image_size * 256/224, then centre crop image_size."""
    return transforms.Compose(
        [
            transforms.Resize(round(image_size * RESIZE_RATIO)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ImageFolderDataModule(pl.LightningDataModule):
    """``root/{train,val}/<class>/<image>``; ``batch_size`` is per device."""

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        num_workers: int = 8,
        image_size: int = 224,
        num_classes: int = 1000,
        pin_memory: bool = True,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        if root is None or not Path(root).is_dir():
            raise ConfigError(
                f"data.root={root} is not a directory; it must hold train/<class>/ and "
                "val/<class>/ image folders"
            )
        for split in ("train", "val"):
            if not (Path(root) / split).is_dir():
                raise ConfigError(f"data.root={root} has no '{split}' folder (need train/, val/)")
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size={batch_size} must be positive")
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size} must be >= 8 pixels")
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.num_classes = num_classes
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        self.train_set = datasets.ImageFolder(
            str(self.root / "train"), transform=train_transform(self.image_size)
        )
        self.val_set = datasets.ImageFolder(
            str(self.root / "val"), transform=eval_transform(self.image_size)
        )
        for name, ds in (("train", self.train_set), ("val", self.val_set)):
            if len(ds.classes) != self.num_classes:
                raise ConfigError(
                    f"data.num_classes={self.num_classes} but {self.root / name} has "
                    f"{len(ds.classes)} class folders"
                )
        if self.train_set.classes != self.val_set.classes:
            raise ConfigError(f"train/ and val/ under {self.root} have different class folders")

    def _loader(self, dataset: datasets.ImageFolder, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
