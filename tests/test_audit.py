"""The data audit (heed.data.audit) and its near-duplicate scan (heed.data.near_dup)."""

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heed.commands.cli import main
from heed.data import near_dup
from heed.data.audit import audit, supervised_from_lengths
from heed.data.encode import build_example, encode_records
from heed.data.near_dup import bigram_jaccard, near_duplicates, scan
from heed.data.records import Record, load_records, split_records
from heed.data.templates import get_template

EXPECTED = Path(__file__).parent / "data" / "audit-shared.json"
WORDS = "the a cat dog sat on mat hat and ran".split()


def words(n, rng):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def brute_force(texts, threshold):
    """The definition, pair by pair."""
    out = []
    for i, j in itertools.combinations(range(len(texts)), 2):
        score = bigram_jaccard(texts[i], texts[j])
        if score and score >= threshold:
            out.append((i, j, round(score, 3)))
    return out


def test_one_replaced_word_in_forty_is_a_near_duplicate_in_twenty_is_not():
    rng = random.Random(0)
    long_text = " ".join(f"w{k}" for k in range(40))
    short_text = " ".join(f"v{k}" for k in range(20))
    texts = [long_text, long_text.replace("w20", "changed"), short_text, short_text.replace("v10", "changed"),
             words(40, rng)]
    # 40 words: 39 bigrams each, 37 shared, union 41 -> 0.902; 20 words: 17 shared of 21 -> 0.81.
    assert near_duplicates(texts) == [(0, 1, 0.902)]
    assert near_duplicates(texts, 0.8) == [(0, 1, 0.902), (2, 3, 0.81)]


def test_threshold_is_inclusive_and_case_punctuation_do_not_count_but_order_does():
    ten = " ".join(f"w{k}" for k in range(11))  # 10 bigrams
    nine = " ".join(f"w{k}" for k in range(10))  # 9 of them: Jaccard exactly 0.9
    texts = [ten, nine, "Hello, World!", "hello world", "a b c d", "d c b a"]
    assert near_duplicates(texts, 0.9) == [(0, 1, 0.9), (2, 3, 1.0)]
    assert near_duplicates(texts, 0.91) == [(2, 3, 1.0)]


def test_one_word_and_empty_texts():
    # A one-word text is compared by its word; a text without words is never anyone's duplicate.
    assert near_duplicates(["Yes.", "yes", "no", "", "...", ""]) == [(0, 1, 1.0)]
    assert near_duplicates([]) == [] and near_duplicates(["only"]) == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS[:5]), max_size=12), max_size=25),
       st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0]))
def test_scan_finds_exactly_the_pairs_of_the_definition(word_lists, threshold):
    texts = [" ".join(w) for w in word_lists]
    assert near_duplicates(texts, threshold) == brute_force(texts, threshold)


def test_chunked_candidates_and_checks_give_the_same_pairs(monkeypatch):
    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS[:3], k=rng.randint(0, 8))) for _ in range(60)]
    whole = near_duplicates(texts, 0.5)
    monkeypatch.setattr(near_dup, "_PAIR_CHUNK", 5)
    monkeypatch.setattr(near_dup, "_VERIFY_CHUNK", 3)
    assert near_duplicates(texts, 0.5) == whole == brute_force(texts, 0.5)
    assert len(whole) > 20


def distinct_texts(n, rng, stem=""):
    """``n`` texts of 10-40 words drawn Zipf-like from n/16 words: as in real data the vocabulary grows
    with the texts, and common bigrams (and at n = 1,000 some rare ones) are shared by chance."""
    vocab = [f"w{k}" for k in range(n // 16)]
    weights = [1 / (k + 3) for k in range(len(vocab))]
    return [stem + " ".join(rng.choices(vocab, weights, k=rng.randint(10, 40))) for _ in range(n)]


@pytest.mark.parametrize("stem", ["", "please rewrite the following text so that it reads well and keeps its meaning "])
def test_candidates_grow_linearly_on_distinct_texts(stem):
    # Counted pairs, not seconds: the pairwise scan compared n(n-1)/2 pairs (8M at n = 4,000).
    rng = random.Random(7)
    for n in (1000, 2000, 4000):
        result = scan(distinct_texts(n, rng, stem))
        assert result.pairs == [] and result.compared <= n, n
        assert n > 1000 or result.compared > 0  # the filter did meet shared prefix bigrams


def test_a_cluster_costs_its_pairs():
    base = " ".join(f"w{k}" for k in range(60))
    texts = [base + f" extra{k}" for k in range(30)] + distinct_texts(2000, random.Random(1))
    result = scan(texts)
    assert [(i, j) for i, j, _ in result.pairs] == list(itertools.combinations(range(30), 2))
    assert 30 * 29 // 2 <= result.compared <= 30 * 29 // 2 + 200


def test_supervised_from_lengths_matches_build_example():
    for prompt, response, train_on_prompt in itertools.product(range(4), range(1, 4), (False, True)):
        example = build_example(0, list(range(prompt)), list(range(100, 100 + response)),
                                train_on_prompt=train_on_prompt)
        got = supervised_from_lengths(np.array([prompt]), np.array([response]), train_on_prompt)
        assert got.tolist() == [example.supervised_tokens]


def make_records(texts):
    return [Record(i, instruction, input_, output, {}) for i, (instruction, input_, output) in enumerate(texts)]


def test_exact_copies_are_listed_once_and_not_again_as_near_duplicates(tokenizer):
    text = " ".join(f"w{k}" for k in range(40))
    records = make_records([("Say it.", "", text), ("say  it.", "", text + " "), ("SAY IT.", "", text),
                            ("Say it.", "", text + " w40"), ("Other.", "", "x")])
    split = split_records(records, train_frac=1.0, test_frac=0.0)
    result = audit(records, split, get_template("alpaca"), tokenizer, max_length=1024, policy="drop",
                   train_on_prompt=False, source="mem")
    assert result.exact_duplicates == [(0, 1), (0, 2)]
    assert result.near_duplicates == [(0, 3, 0.976)]  # not (1, 2), (1, 3), (2, 3): copies of record 0
    assert result.conflicting_outputs == [(0, 3)]


@pytest.mark.parametrize("policy", ["drop", "truncate", "error"])
@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_training_split_report_matches_encode_records(tokenizer, policy, train_on_prompt):
    rng = random.Random(5)
    records = make_records([(words(rng.randint(1, 30), rng), words(rng.choice([0, 5, 25]), rng),
                             words(rng.randint(1, 40), rng)) for _ in range(80)])
    split = split_records(records, shuffle=True)
    template = get_template("alpaca")
    result = audit(records, split, template, tokenizer, max_length=64, policy=policy,
                   train_on_prompt=train_on_prompt, source="mem")
    effective = "drop" if policy == "error" else policy
    examples, report = encode_records(split.train, template, tokenizer, max_length=64, policy=effective,
                                      train_on_prompt=train_on_prompt, source="mem")
    assert result.encode == report.to_dict()
    assert report.dropped_too_long or report.truncated  # the over-long path is exercised
    tokens = sum(len(e.input_ids) - 1 for e in examples)
    assert result.supervised_share == sum(e.supervised_tokens for e in examples) / tokens
    full, _ = encode_records(records, template, tokenizer, max_length=10**9, train_on_prompt=train_on_prompt)
    assert result.over_max_length == [e.index for e in full if len(e.input_ids) > 64]
    assert result.lengths["max"] == max(len(e.input_ids) for e in full)


def test_shared_dataset_findings_equal_the_pairwise_audits(capsys, shared_data):
    expected = json.loads(EXPECTED.read_text())
    for extra, old in expected["audits"].items():
        code = main(["data", "check", "--data", shared_data, "--model", "random:gpt2-tiny", "--json", *extra.split()])
        new = json.loads(capsys.readouterr().out)
        assert new.pop("source") == shared_data
        assert (code == 0) == old["trainable"] and new == old, extra
    assert len(expected["audits"][""]["conflicting_outputs"]) == 25
    assert expected["audits"][""]["test_in_train"] == [975, 1034]
    records = load_records(shared_data)
    texts = [f"{r.instruction}\n{r.input}\n{r.output}" for r in records]
    for threshold, pairs in expected["near_duplicates_at"].items():
        assert [list(p) for p in near_duplicates(texts, float(threshold))] == pairs, threshold
