"""The two BLEU scores of the translation task: sacreBLEU, and the paper's tokenised BLEU
(get_ende_bleu.sh: Moses tokenisation, ##AT## compound split, multi-bleu)."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu

from sparse_lightning.modules.translation import (
    bleu_tokens,
    sacre_bleu,
    split_compounds,
    tokenized_bleu,
)

REFERENCES = [
    "die Katze sieht den alten Baum.",
    'Der "Bürgermeister-Wahl" Termin & die Ampel in Gutach sind neu.',
    "Die Kluser-Ampel sichere Radfahrer, Busfahrgäste und Bergle-Bewohner.",
    "Ein US-amerikanisches Start-up-Unternehmen testet es (seit 2011).",
    "eine kleine rote Katze schlaeft im Haus.",
    "Es gibt keinen Grund für eine Operation, wenn ein Aspirin reicht.",
]


def test_gold_hypotheses_score_100_on_both_bleus() -> None:
    assert sacre_bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)
    assert tokenized_bleu(REFERENCES, REFERENCES) == pytest.approx(100.0)


def test_shuffled_hypotheses_score_below_100_on_both_bleus() -> None:
    shuffled = REFERENCES[1:] + REFERENCES[:1]  # every line against another one
    random.Random(0).shuffle(shuffled)
    assert shuffled != REFERENCES
    assert sacre_bleu(shuffled, REFERENCES) < 100.0
    assert tokenized_bleu(shuffled, REFERENCES) < 100.0


def test_the_compound_split_changes_the_score_as_counted_by_hand() -> None:
    reference = "Die Bürgermeister-Wahl war gut."
    hypothesis = "Die Bürgermeister Wahl war gut."
    assert bleu_tokens(reference, "de", hypothesis=False) == (
        "Die Bürgermeister ##AT##-##AT## Wahl war gut ."
    )
    assert bleu_tokens(hypothesis, "de", hypothesis=True) == "Die Bürgermeister Wahl war gut ."
    # hypothesis h = Die Bürgermeister Wahl war gut .  (6 tokens)
    # reference  r = Die Bürgermeister ##AT##-##AT## Wahl war gut .  (7 tokens)
    # matched n-grams of h in r: 1-grams 6/6; 2-grams 4/5 (not "Bürgermeister Wahl");
    # 3-grams 2/4 ("Wahl war gut", "war gut ."); 4-grams 1/3 ("Wahl war gut .");
    # brevity penalty exp(1 - 7/6)
    by_hand = 100 * math.exp(1 - 7 / 6) * (6 / 6 * 4 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert tokenized_bleu([hypothesis], [reference]) == pytest.approx(by_hand, abs=1e-9)
    # without the split, r = Die Bürgermeister-Wahl war gut . and no 4-gram of h matches it
    # (0/3), which multi-bleu (no smoothing) scores 0: the split changes the score
    unsplit = sacrebleu.BLEU(tokenize="none", smooth_method="none").corpus_score(
        ["Die Bürgermeister Wahl war gut ."], [["Die Bürgermeister-Wahl war gut ."]]
    )
    assert unsplit.counts[3] == 0 and unsplit.score == 0.0 < by_hand
    # sacreBLEU's 13a tokenisation keeps "Bürgermeister-Wahl" whole: a different number
    assert sacre_bleu([hypothesis], [reference]) != pytest.approx(by_hand, abs=1e-3)


def test_compounds_split_left_to_right_without_overlap_as_the_perl_one_liner() -> None:
    # perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' gives these (hand-applied)
    assert split_compounds("rich-text format") == "rich ##AT##-##AT## text format"
    assert split_compounds("a-b-c") == "a ##AT##-##AT## b-c"
    assert split_compounds("Verkehrs- und Fußgängeraufkommen") == (
        "Verkehrs- und Fußgängeraufkommen"
    )
    assert split_compounds("Gutach - in Sichtweite") == "Gutach - in Sichtweite"


def test_only_hypotheses_get_unicode_punctuation_replaced_as_in_the_script() -> None:
    # get_ende_bleu.sh runs replace-unicode-punctuation.perl on the decodes only; its
    # reference file keeps the typographic quotes (newstest2014.tok.de: "„ Es ist nichts ... “")
    line = "„Es ist nichts“, sagte er."
    assert bleu_tokens(line, "de", hypothesis=False) == "„ Es ist nichts “ , sagte er ."
    assert bleu_tokens(line, "de", hypothesis=True) == "„ Es ist nichts &quot; , sagte er ."
    assert tokenized_bleu([line], [line]) < 100.0
    assert sacre_bleu([line], [line]) == pytest.approx(100.0)
