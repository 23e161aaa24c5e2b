"""Shared-task metrics: hand-made cases, and agreement with the official ``evalm.py`` when it is present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnmeta.eval.seq2seq_metrics import evalm_scores, exact_match, mean_levenshtein

SIGMORPHON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "sigmorphon2018"
EVALM = SIGMORPHON / "baseline" / "evalm.py"


def test_exact_match_and_mean_levenshtein_on_hand_made_cases():
    refs = ["walked", "ran", "seen", "über"]
    preds = ["walked", "runned", "", "uber"]
    assert exact_match(refs, preds) == 25.0
    # walked: 0; ran -> runned: substitute a->u, insert n, e, d = 4; seen -> "": 4; über -> uber: 1
    assert mean_levenshtein(refs, preds) == pytest.approx((0 + 4 + 4 + 1) / 4)
    assert exact_match([("a", "b")], [("a", "b")]) == 100.0  # symbol tuples are joined
    assert mean_levenshtein([("k", "i", "t", "t", "e", "n")], ["sitting"]) == 3.0


def test_metrics_refuse_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="^2 references but 1 predictions; give one prediction per "
                                         "reference$"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references to score"):
        mean_levenshtein([], [])
    with pytest.raises(ValueError, match="the gold set is empty"):
        evalm_scores([], {})


def test_evalm_scores_key_gold_by_lemma_and_tags_last_form_wins():
    gold = [("go", "went", "V;PST"), ("go", "goes", "V;3;SG;PRS"), ("go", "gone", "V;PST"),
            ("be", "was", "V;PST")]
    guesses = {("go", "V;PST"): "gone", ("go", "V;3;SG;PRS"): "gos"}
    accuracy, distance = evalm_scores(gold, guesses)
    # 3 keys: go/V;PST -> "gone" (right: the last gold form wins), goes vs gos (1), was vs "" (3)
    assert accuracy == pytest.approx(100 / 3)
    assert distance == pytest.approx(4 / 3)


CASES = {
    "duplicates_and_missing": (
        ["go\twent\tV;PST", "go\tgoes\tV;3;SG;PRS", "go\tgone\tV;PST", "be\twas\tV;PST", "see\tsaw\tV;PST"],
        ["go\tgone\tV;PST", "go\tgos\tV;3;SG;PRS", "see\tsaw\tV;PST", "see\tseed\tV;PST", "xx\ty\tV"]),
    "unicode": (
        ["häuser\thäusern\tN;DAT;PL", "façade\tfaçades\tN;PL", "קטן\tקטנה\tADJ;FEM", "a b\ta bs\tN;PL"],
        ["häuser\thausern\tN;DAT;PL", "façade\tfaçades\tN;PL", "קטן\tקטן\tADJ;FEM", "a b\tab\tN;PL"]),
    "thirds": (  # rounding: 33.333... and 66.666...
        ["a\tb\tX", "c\td\tX", "e\tf\tX"], ["a\tb\tX", "c\td\tX", "e\tfff\tX"]),
}


def _parse(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        lemma, form, tags = line.split("\t")
        out.append((lemma, form, tags))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_evalm_scores_match_the_official_script(case: str, tmp_path: Path):
    if not EVALM.is_file():
        pytest.skip(f"needs the official scorer {EVALM} (see ../shared/data/README.md, text/sigmorphon2018)")
    gold_lines, guess_lines = CASES[case]
    gold_file, guess_file = tmp_path / "gold", tmp_path / "guess"
    gold_file.write_text("\n".join(gold_lines) + "\n", encoding="utf-8")
    guess_file.write_text("\n".join(guess_lines) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, str(EVALM), "--gold", str(gold_file), "--guess", str(guess_file),
                             "--task", "1"], capture_output=True, text=True, encoding="utf-8", timeout=60,
                            check=True)
    printed = dict(line.split(":\t") for line in result.stdout.strip().splitlines())
    guesses = {}
    for lemma, form, tags in _parse(guess_file):
        guesses[(lemma, tags)] = form  # evalm reads the guesses the same way: the last one wins
    accuracy, distance = evalm_scores(_parse(gold_file), guesses)
    assert printed == {"acccuracy": f"{round(accuracy, 2):.2f}", "levenshtein": f"{round(distance, 2):.2f}"}
