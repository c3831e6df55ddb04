"""heed bench: rows reach --out as they are measured; the transformers.Trainer peer row runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heed.commands.bench import BenchConfig, measure_trainer, plan, result_row


def test_trainer_peer_row_trains_the_timed_steps_on_the_same_examples():
    cfg = BenchConfig(model="random:gpt2-tiny", steps=2, batch_size=4, device="cpu")
    r = measure_trainer(cfg)
    assert r["steps"] == 2 and r["batch"] == 4  # 2 warmup steps then 2 timed ones
    assert 0 < r["tokens_per_s"] and r["peak_bytes"] > 0
    assert "non-padding tokens/s" in result_row("m", "train_trainer", r)


def test_plan_has_the_peer_row_and_token_budget_steps():
    import torch

    from heed.commands.bench import _groups
    from heed.data.encode import build_example

    keys = [k for k, *_ in plan(BenchConfig(), torch.device("cpu"))]
    assert keys.index("train_trainer") > keys.index("train_fast")
    assert "train_trainer" not in [k for k, *_ in plan(BenchConfig(peer=False), torch.device("cpu"))]
    examples = [build_example(i, [1] * 9, [2]) for i in range(40)]  # 10 input tokens each
    groups = _groups(BenchConfig(tokens_per_step=35, steps=3), examples, budget=True)
    assert len(groups) == 5 and all(len(g) == 3 for g in groups)


def test_rows_are_on_disk_as_soon_as_measured(tmp_path):
    """Kill the bench after its first measurement: the file holds that row."""
    out = tmp_path / "bench.md"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, "-m", "heed", "bench", "--model", "random:gpt2-tiny", "--steps", "1",
                             "--batch-size", "2", "--gen-prompts", "1", "--gen-tokens", "2", "--device", "cpu",
                             "--no-peer", "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_file() and "| random:gpt2-tiny | train_reference |" in out.read_text():
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the bench ended before the test could stop it"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = out.read_text()
    assert "| random:gpt2-tiny | train_reference |" in text and "non-padding tokens/s" in text
    assert "train_fast" not in text  # stopped before the second measurement


def test_time_limit_stops_the_model_and_keeps_what_was_measured(monkeypatch):
    import heed.commands.bench as bench

    measured = []

    def child(kind, mode, cfg, features, timeout=None):
        assert timeout is not None and timeout <= 300
        if len(measured) == 1:
            raise bench.OutOfTime(mode)
        return {"tokens_per_s": 10.0, "batch": 8, "peak_bytes": 2**30, "precision": "fp32"}

    monkeypatch.setattr(bench, "_child", child)
    monkeypatch.setattr(bench, "matmul_peak", lambda device: 1.0)
    results = bench.run(BenchConfig(model="m", device="cpu", time_limit=300), log=lambda m: None,
                        on_result=lambda key, r: measured.append(key))
    assert measured == ["train_reference"] and results["incomplete"] == "train_fast"
    assert "train_reference" in results and "train_fast" not in results
    assert "incomplete (stopped at train_fast" in bench.table(results)


def test_data_too_small_for_a_step_is_one_line_before_any_measurement(tmp_path, capsys):
    import json

    from heed.commands.cli import main

    data = tmp_path / "small.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and 1.", "output": str(i + 1)} for i in range(20)]))
    out = tmp_path / "bench.md"
    assert main(["bench", "--model", "random:gpt2-tiny", "--data", str(data), "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "20 examples, fewer than one larger-budget step needs (32" in err
    assert not out.exists()  # refused before the first row
