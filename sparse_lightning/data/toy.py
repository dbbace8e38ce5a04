"""Generated toy data in the real datasets' file layouts, so a laptop run goes through the same
loaders as a paper run: an ImageFolder tree for ``data=imagenet`` and aligned parallel text for
``data=wmt``. Command line: ``sparse-toy-data {imagenet,wmt} DIR`` (or
``python -m sparse_lightning.data.toy``)."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 5
EN = "the a cat dog house tree sees likes big small red green runs sleeps old new".split()
DE = "die eine Katze Hund Haus Baum sieht mag grosse kleine rote gruene rennt schlaeft alte neue"
LEXICON = dict(zip(EN, DE.split()))


def make_image_folder(
    root: Path, per_class: dict[str, int], size: int = 40, num_classes: int = NUM_CLASSES
) -> Path:
    """A tiny ImageFolder tree of random JPEGs, ``root/{split}/class_<k>/<i>.JPEG``, with a
    class-dependent colour channel so that the label is learnable."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for k in range(num_classes):
            folder = Path(root) / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
                pixels[..., k % 3] = 40 * k
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=85)
    return Path(root)


def make_corpus(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """A word-for-word en->de toy language, ``root/{train,valid,test}.{en,de}``: 2-6 words of a
    16-word lexicon per sentence, translated word by word."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, n in (sizes or {"train": 300, "valid": 8, "test": 8}).items():
        en_lines, de_lines = [], []
        for _ in range(n):
            words = [rng.choice(EN) for _ in range(rng.randint(2, 6))]
            en_lines.append(" ".join(words) + ".")
            de_lines.append(" ".join(LEXICON[w] for w in words) + ".")
        (root / f"{split}.en").write_text("\n".join(en_lines) + "\n", encoding="utf-8")
        (root / f"{split}.de").write_text("\n".join(de_lines) + "\n", encoding="utf-8")
    return root


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sparse-toy-data", description="Write generated toy data in a real dataset layout."
    )
    kinds = top.add_subparsers(dest="kind", required=True, metavar="{imagenet,wmt}")
    image = kinds.add_parser("imagenet", help="ImageFolder tree: DIR/{train,val}/class_<k>/")
    image.add_argument("dir", type=Path, metavar="DIR")
    image.add_argument("--train", type=positive_int, default=32, help="images per class")
    image.add_argument("--val", type=positive_int, default=8, help="images per class")
    image.add_argument("--classes", type=positive_int, default=NUM_CLASSES)
    image.add_argument("--size", type=positive_int, default=40, help="image height in pixels")
    image.set_defaults(
        write=lambda a: make_image_folder(
            a.dir, {"train": a.train, "val": a.val}, a.size, a.classes
        )
    )
    text = kinds.add_parser("wmt", help="parallel text: DIR/{train,valid,test}.{en,de}")
    text.add_argument("dir", type=Path, metavar="DIR")
    text.add_argument("--train", type=positive_int, default=2000, help="sentence pairs")
    text.add_argument("--valid", "--val", type=positive_int, default=50, help="sentence pairs")
    text.add_argument("--test", type=positive_int, default=50, help="sentence pairs")
    text.set_defaults(
        write=lambda a: make_corpus(a.dir, {"train": a.train, "valid": a.valid, "test": a.test})
    )
    return top


def main(argv: Sequence[str] | None = None) -> None:
    """``sparse-toy-data``: write the chosen kind of toy data into DIR."""
    args = parser().parse_args(argv)
    args.write(args)
    print(f"sparse-toy-data: wrote {args.kind} toy data to {args.dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
