from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heed.data.batch import batch_order, collate
from heed.data.encode import IGNORE_INDEX as X
from heed.data.encode import build_example, encode_records
from heed.data.records import Record
from heed.data.templates import TEMPLATES

EOS = 50256


def test_collate_hand_worked_pad_equals_eos():
    a = build_example(0, [11, 12], [21, 22, EOS])  # 5 tokens
    b = build_example(1, [13], [23, EOS])  # 3 tokens
    batch = collate([a, b], pad_id=EOS)
    assert batch.inputs.tolist() == [[11, 12, 21, 22], [13, 23, EOS, EOS]]
    assert batch.targets.tolist() == [[X, 21, 22, EOS], [23, EOS, X, X]]
    assert batch.lengths.tolist() == [4, 2]
    assert batch.tokens == 6 and batch.supervised_tokens == 5


def test_collate_train_on_prompt_and_multiple_of():
    a = build_example(0, [11, 12], [21, EOS], train_on_prompt=True)
    batch = collate([a], pad_id=0, pad_to_multiple_of=8)
    assert batch.inputs.tolist() == [[11, 12, 21, 0, 0, 0, 0, 0]]
    assert batch.targets.tolist() == [[12, 21, EOS, X, X, X, X, X]]


def test_batch_order_is_seeded_and_covers_everything():
    a = batch_order(10, 3, shuffle=True, seed=5)
    assert a == batch_order(10, 3, shuffle=True, seed=5)
    assert sorted(i for b in a for i in b) == list(range(10)) and [len(b) for b in a] == [3, 3, 3, 1]
    assert batch_order(10, 3, shuffle=False, seed=0, drop_last=True) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


words = st.text(alphabet="abc xyz.,\n!?ÄÖ", min_size=0, max_size=30)
record_st = st.builds(
    lambda i, inp, out: (i, inp, out),
    st.text(alphabet="abcdefg xyz", min_size=1, max_size=20).filter(str.strip),
    words,
    words.filter(str.strip),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.lists(record_st, min_size=1, max_size=6),
    template=st.sampled_from(["alpaca", "instruction-response", "phi3"]),
    train_on_prompt=st.booleans(),
    max_length=st.integers(min_value=8, max_value=80),
    policy=st.sampled_from(["drop", "truncate"]),
)
def test_invariants(tokenizer, raw, template, train_on_prompt, max_length, policy):
    records = [Record(i, a, b, c, {}) for i, (a, b, c) in enumerate(raw)]
    examples, report = encode_records(records, TEMPLATES[template], tokenizer, max_length=max_length,
                                      policy=policy, train_on_prompt=train_on_prompt)
    assert report.kept == len(examples)
    if not examples:
        return
    batch = collate(examples, pad_id=EOS)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids) - 1
        assert len(ex.input_ids) <= max_length
        assert int(batch.lengths[row]) == n
        assert batch.inputs[row, :n].tolist() == ex.input_ids[:-1]
        targets = batch.targets[row]
        assert (targets[n:] == X).all(), "padding is never supervised, even though pad == EOS"
        supervised = targets[targets != X].tolist()
        assert supervised, "no example without supervised tokens reaches a batch"
        p = ex.prompt_length
        response = ex.input_ids[p:]
        if train_on_prompt:
            assert supervised == ex.input_ids[1:]
        else:
            assert (targets[: p - 1] == X).all(), "the prompt is masked"
            assert supervised == response, "every response token is supervised"
        eos_targets = (targets == EOS).sum().item()
        assert eos_targets == (0 if ex.truncated else 1), "exactly one EOS target (none if the response was cut)"
