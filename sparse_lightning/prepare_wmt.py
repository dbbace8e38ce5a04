"""`sparse-prepare-wmt DIR`: write WMT14 en-de as DIR/{train,valid,test}.{en,de}.

The standard WMT14 en-de setup (as fairseq's prepare-wmt14en2de.sh and tensor2tensor's
translate_ende_wmt32k): train = Europarl v7 + Common Crawl + News Commentary v9, valid =
newstest2013, test = newstest2014 (the full 3003-sentence version). Archives are downloaded from
statmt.org into DIR/raw/ (skipped when already there), or read from ``--archives`` for machines
without internet. Text stays raw (untokenised): the data module learns the subword vocabulary
and sacrebleu scores against these references.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from html import unescape
from pathlib import Path

ARCHIVES = {
    "training-parallel-europarl-v7.tgz": "https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz",
    "training-parallel-commoncrawl.tgz": "https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz",
    "training-parallel-nc-v9.tgz": "https://www.statmt.org/wmt14/training-parallel-nc-v9.tgz",
    "dev.tgz": "https://www.statmt.org/wmt14/dev.tgz",
    "test-full.tgz": "https://www.statmt.org/wmt14/test-full.tgz",
}  # fmt: skip
# split -> [(archive, English member, German member)]
SPLITS: dict[str, list[tuple[str, str, str]]] = {
    "train": [
        ("training-parallel-europarl-v7.tgz", "training/europarl-v7.de-en.en",
         "training/europarl-v7.de-en.de"),
        ("training-parallel-commoncrawl.tgz", "commoncrawl.de-en.en", "commoncrawl.de-en.de"),
        ("training-parallel-nc-v9.tgz", "training/news-commentary-v9.de-en.en",
         "training/news-commentary-v9.de-en.de"),
    ],
    "valid": [("dev.tgz", "dev/newstest2013.en", "dev/newstest2013.de")],
    "test": [("test-full.tgz", "test-full/newstest2014-deen-src.en.sgm",
              "test-full/newstest2014-deen-ref.de.sgm")],
}  # fmt: skip
SEGMENT = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


class PrepareError(Exception):
    """A missing or malformed input; printed as one line."""


def fetch(name: str, raw: Path, archives: Path | None) -> Path:
    """The archive ``name``: from ``archives`` if given, else downloaded once into ``raw``."""
    if archives is not None:
        path = archives / name
        if not path.is_file():
            raise PrepareError(f"--archives {archives} has no {name} (expected {ARCHIVES[name]})")
        return path
    path = raw / name
    if not path.is_file():
        raw.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        print(f"downloading {ARCHIVES[name]}", file=sys.stderr)
        urllib.request.urlretrieve(ARCHIVES[name], partial)
        os.replace(partial, path)
    return path


def read_member(archive: Path, member: str) -> list[str]:
    """Lines of one file inside a .tgz; SGML test sets give their <seg> contents."""
    with tarfile.open(archive, "r:gz") as tar:
        try:
            handle = tar.extractfile(member)
        except KeyError:
            raise PrepareError(f"{archive} has no member {member}") from None
        if handle is None:
            raise PrepareError(f"{archive}:{member} is not a file")
        text = handle.read().decode("utf-8", errors="replace")
    lines = text.splitlines()
    if member.endswith(".sgm"):
        return [unescape(m.group(1)) for line in lines if (m := SEGMENT.search(line))]
    return lines


def pairs(split: str, raw: Path, archives: Path | None) -> Iterator[tuple[str, str]]:
    """Aligned (en, de) lines of a split; training pairs with an empty side are dropped."""
    for name, en_member, de_member in SPLITS[split]:
        archive = fetch(name, raw, archives)
        en, de = read_member(archive, en_member), read_member(archive, de_member)
        if len(en) != len(de):
            raise PrepareError(f"{name}: {en_member} has {len(en)} lines, {de_member} {len(de)}")
        for e, d in zip(en, de):
            e, d = " ".join(e.split()), " ".join(d.split())
            if split != "train" or (e and d):
                yield e, d


def write_split(out: Path, split: str, raw: Path, archives: Path | None) -> int:
    """Write out/{split}.en and .de atomically; returns the number of pairs."""
    tmp = {lang: out / f".{split}.{lang}.tmp" for lang in ("en", "de")}
    count = 0
    with (
        open(tmp["en"], "w", encoding="utf-8") as f_en,
        open(tmp["de"], "w", encoding="utf-8") as f_de,
    ):
        for en, de in pairs(split, raw, archives):
            f_en.write(en + "\n")
            f_de.write(de + "\n")
            count += 1
    for lang, path in tmp.items():
        os.replace(path, out / f"{split}.{lang}")
    return count


def prepare(out: Path, archives: Path | None = None) -> dict[str, int]:
    """Write all three splits; returns pair counts."""
    out.mkdir(parents=True, exist_ok=True)
    return {split: write_split(out, split, out / "raw", archives) for split in SPLITS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparse-prepare-wmt", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (then data.root=OUT)")
    parser.add_argument(
        "--archives", type=Path, default=None,
        help="folder already holding the five .tgz archives (no download)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.out, args.archives)
    except (PrepareError, OSError) as error:
        print(f"sparse-prepare-wmt: error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    print(f"wrote {args.out}/{{train,valid,test}}.{{en,de}}: {summary} pairs")


if __name__ == "__main__":
    main()
