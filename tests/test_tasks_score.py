import json
from collections import Counter
from pathlib import Path

import pytest

from heed.commands.cli import main
from heed.data.records import split_records
from heed.data.tasks import FAMILIES, make_tasks, normalize, verify
from heed.evaluate.metrics import rouge_l, score


def test_tasks_are_unique_balanced_and_seeded():
    records = make_tasks(700, seed=5)
    assert len(FAMILIES) >= 12
    keys = [(r["instruction"], r["input"]) for r in records]
    assert len(set(keys)) == len(keys) == 700
    counts = Counter(r["task"] for r in records)
    assert set(counts) == set(FAMILIES) and max(counts.values()) - min(counts.values()) <= 1
    assert make_tasks(50, seed=5) == records[:50]
    assert make_tasks(50, seed=6) != records[:50]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_varied_phrasings_and_a_verifier_that_discriminates(family):
    records = make_tasks(90, seed=1, families=[family])
    assert len({r["instruction"].split("'")[0][:12] for r in records}) >= 2, "several phrasings"
    for r in records[:30]:
        assert verify(family, r["output"], r["output"])
        assert verify(family, r["output"], "  " + r["output"] + " ")
        assert not verify(family, r["output"], "I don't know")


def test_verifiers_by_hand():
    assert verify("arithmetic", "19", "The answer is 19.") and not verify("arithmetic", "19", "18")
    assert verify("unit-conversion", "3000 meters", "3,000 meters")
    assert verify("reverse-list", "blue, green, red", "Blue,green , red.")
    assert not verify("reverse-list", "blue, green, red", "red, green, blue")
    assert verify("extract-json", '{"name": "Ann", "age": 3, "city": "Rome"}', '{"age": 3, "city": "Rome", "name": "Ann"}')
    assert not verify("extract-json", '{"name": "Ann", "age": 3, "city": "Rome"}', '{"name": "Ann", "age": "3", "city": "Rome"}')
    assert normalize("  Paris. ") == "paris"


def test_held_out_test_split_never_in_training():
    split = split_records(_records(make_tasks(1400, seed=123)))
    train = {(r.instruction, r.input) for r in split.train}
    assert split.test and not any((r.instruction, r.input) in train for r in split.test)
    assert len({r.task for r in split.test}) == len(FAMILIES)


def _records(raw):
    from heed.data.records import Record

    return [Record(i, r["instruction"], r["input"], r["output"], r) for i, r in enumerate(raw)]


def test_scores_by_hand():
    records = [
        {"instruction": "a", "output": "The cat sat on the mat.", "model_response": "The cat is on the mat."},
        {"instruction": "b", "output": "Paris", "model_response": "paris."},
        {"instruction": "c", "output": "19", "task": "arithmetic", "model_response": "It is 19"},
        {"instruction": "d", "output": "cats", "task": "plural", "model_response": "cat"},
    ]
    s = score(records)
    assert s.exact_match == pytest.approx(1 / 4)
    assert rouge_l("The cat sat on the mat.", "The cat is on the mat.") == pytest.approx(5 / 6)
    assert s.rouge_l == pytest.approx((5 / 6 + 1 + 0.5 + 0) / 4)
    assert s.task_accuracy == {"arithmetic": {"n": 1, "accuracy": 1.0}, "plural": {"n": 1, "accuracy": 0.0}}
    assert s.task_overall == 0.5


def test_cli_tasks_make_and_score(tmp_path, capsys):
    out = tmp_path / "tasks.json"
    assert main(["tasks", "make", "--n", "28", "--seed", "3", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 28 and all(set(r) == {"instruction", "input", "output", "task"} for r in records)
    for r in records:
        r["model_response"] = r["output"]
    responses = tmp_path / "r.json"
    responses.write_text(json.dumps(records))
    capsys.readouterr()
    assert main(["score", "--responses", str(responses), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["task_overall"] == 1.0 and got["exact_match"] == 1.0 and got["rouge_l"] == pytest.approx(1.0)
    del records[3]["model_response"]
    responses.write_text(json.dumps(records))
    assert main(["score", "--responses", str(responses)]) == 2
    assert "record 3: 'model_response' is missing" in capsys.readouterr().err
    assert main(["tasks", "make", "--n", "5", "--out", str(out), "--families", "poetry"]) == 2


def test_demo_plumbing_on_a_tiny_model(tmp_path, capsys):
    from heed.commands.demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(model="random:gpt2-tiny", out=str(tmp_path / "demo"), n=140, epochs=1,
                                  max_new_tokens=4), log=lambda _: None)
    assert summary["before"]["n"] == summary["after"]["n"] == 14
    report = (tmp_path / "demo" / "demo.md").read_text()
    assert "| **all** | 14 |" in report and report.count("  - finetuned:") == 5
    assert (tmp_path / "demo" / "model" / "heed.json").is_file()
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["steps"] == summary["steps"] > 0


def test_demo_sizes_answers_by_the_training_answers(tmp_path, monkeypatch):
    """Without --max-new-tokens the demo decodes the longest training answer and the stop marker at most,
    for the base model and the finetuned one alike, in batches of --gen-batch-size."""
    import heed.generate.responses as responses
    from heed.commands.demo import DemoConfig, answer_budget, run_demo
    from heed.data.records import load_records, split_records
    from heed.data.templates import get_template
    from heed.model import load_tokenizer

    calls = []
    real = responses.generate_ids

    def spy(model, prompts, **kw):
        new = real(model, prompts, **kw)
        calls.append((kw["cfg"].max_new_tokens, len(prompts), max(len(ids) for ids in new)))
        return new

    monkeypatch.setattr(responses, "generate_ids", spy)
    out = tmp_path / "demo"
    summary = run_demo(DemoConfig(model="random:gpt2-tiny", out=str(out), n=60, gen_batch_size=5),
                       log=lambda _: None)
    split = split_records(load_records(out / "tasks.json"))
    budget = answer_budget(load_tokenizer("random:gpt2-tiny"), get_template("instruction-response"), split.train)
    assert summary["max_new_tokens"] == budget < 40
    assert {c[0] for c in calls} == {budget} and max(c[2] for c in calls) == budget  # the untrained model runs on
    assert sum(c[1] for c in calls) == 2 * len(split.test) and max(c[1] for c in calls) == 5  # base, then finetuned
    run = json.loads((out / "model" / "heed.json").read_text())["config"]
    assert run["train"]["max_new_tokens"] == budget and run["train"]["gen_batch_size"] == 5
    assert run["train"]["pack"] is True and run["train"]["epochs"] == 2
    # the time budget (far more than 2 epochs take) fixed the length: saved as a step count
    assert run["train"]["max_steps"] == summary["steps"] and run["train"]["time_budget"] is None


def test_demo_trains_two_epochs_or_its_time_budget_and_steps_override_it():
    from heed.commands.demo import TRAIN_SECONDS, DemoConfig, demo_run

    tasks, model = Path("tasks.json"), Path("model")
    run = demo_run(DemoConfig(), tasks, model, 25).train
    assert (run.epochs, run.max_steps, run.time_budget, run.lr) == (2, None, TRAIN_SECONDS, 1e-3)
    assert (run.pack, run.pack_length, run.group_by_length) == (True, 64, False)  # random batches, little padding
    assert demo_run(DemoConfig(train_seconds=60), tasks, model, 25).train.time_budget == 60
    fixed = demo_run(DemoConfig(steps=300), tasks, model, 25).train
    assert (fixed.max_steps, fixed.time_budget) == (300, None)
