"""Records from Hugging Face datasets: Parquet, CSV, Arrow, save_to_disk directories, cached hub names."""

import os
import socket
import sys

import pytest

from heed.commands.cli import main
from heed.config import DataConfig
from heed.data import load_split
from heed.data.sources import read_records
from heed.errors import HeedError
from tests.conftest import RECORDS

datasets = pytest.importorskip("datasets")

CHATS = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
         for r in RECORDS]


@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    # datasets, imported above, read the variable already: where a hub name is looked up
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")


def as_plain(records):
    return [(r.instruction, r.input, r.output) for r in records]


EXPECTED = [(r["instruction"], r["input"], r["output"]) for r in RECORDS]


def test_parquet_csv_arrow_read_like_json(tmp_path):
    ds = datasets.Dataset.from_list(RECORDS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_csv(str(tmp_path / "d.csv"), index=False)
    arrow = datasets.Dataset.from_list(RECORDS)
    arrow.save_to_disk(str(tmp_path / "saved"))
    [arrow_file] = (tmp_path / "saved").glob("*.arrow")
    for path in (tmp_path / "d.parquet", tmp_path / "d.csv", arrow_file, tmp_path / "saved"):
        assert as_plain(read_records(str(path))) == EXPECTED, path


def test_messages_parquet_and_a_dataset_object(tmp_path):
    ds = datasets.Dataset.from_list(CHATS)
    ds.to_parquet(str(tmp_path / "c.parquet"))
    for source in (str(tmp_path / "c.parquet"), ds):
        records = read_records(source)
        assert records[1].turns == [("user", RECORDS[1]["instruction"]), ("assistant", RECORDS[1]["output"])]


def test_saved_dataset_dict_split(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:6]),
                          "test": datasets.Dataset.from_list(RECORDS[6:])}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_records(str(tmp_path / "dd"))) == 6
    assert len(read_records(str(tmp_path / "dd"), split="test")) == 4
    with pytest.raises(HeedError, match=r"dd: has no split 'dev'; choose one with --split \(train, test\)"):
        read_records(str(tmp_path / "dd"), split="dev")
    _, split = load_split(DataConfig(data=str(tmp_path / "dd"), split="test", train_frac=0.5, test_frac=0.5))
    assert len(split.train) == 2


def test_invalid_rows_named_like_json(tmp_path):
    rows = [dict(r) for r in RECORDS[:3]]
    rows[2]["output"] = ""
    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(HeedError) as e:
        read_records(str(path))
    assert e.value.problems == [f"{path}: record 2: 'output' is empty"]


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(HeedError, match=rf"^{bad}: cannot read it as parquet: "):
        read_records(str(bad))
    with pytest.raises(HeedError, match="no such file"):
        read_records(str(tmp_path / "gone.csv"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(HeedError, match="is a directory, expected a JSON or JSON Lines file"):
        read_records(str(tmp_path / "plain"))


def test_csv_columns_are_read_as_text(tmp_path):
    # pandas would read the all-numeric output column as ints, "007" as 7, "N/A" and empty cells as missing
    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\nAdd 2 and 3.,,5\nPad 7 to three digits.,7,007\n"
                    "Is there an answer?,,N/A\nHalve 3.,,1.5\n", encoding="utf-8")
    assert as_plain(read_records(str(path))) == [("Add 2 and 3.", "", "5"), ("Pad 7 to three digits.", "7", "007"),
                                                 ("Is there an answer?", "", "N/A"), ("Halve 3.", "", "1.5")]
    path.write_text("instruction,output\nAdd 2 and 3.,5\nSay nothing.,\n", encoding="utf-8")
    with pytest.raises(HeedError) as e:
        read_records(str(path))
    assert e.value.problems == [f"{path}: record 1: 'output' is empty"]


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused at once."""
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args[:2])
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_state():
    from huggingface_hub import constants

    return (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE,
            {k: os.environ.get(k) for k in OFFLINE_FLAGS})


def test_uncached_hub_dataset_says_how_to_fetch_it(capsys, no_network):
    before = offline_state()
    assert main(["data", "check", "--data", "tatsu-lab/alpaca", "--model", "random:gpt2-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("heed: error: --data tatsu-lab/alpaca: not a file, and not found in the local Hugging "
                          "Face datasets cache; on a machine with internet run") and "\n" not in err
    assert no_network == []  # the cache is asked, never the hub (retries made this take half a minute)
    assert offline_state() == before  # and the process is left as it was


def test_cached_hub_dataset_is_read_offline(tmp_path, no_network):
    """A dataset in the datasets cache, laid out as ``load_dataset('me/tiny')`` leaves it, loads without a network."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    datasets.Dataset.from_list(RECORDS).to_parquet(str(tmp_path / "t.parquet"))
    builder = Parquet(cache_dir=os.environ["HF_DATASETS_CACHE"], dataset_name="me___tiny", config_id="default",
                      hash="0123abcd", data_files={"train": str(tmp_path / "t.parquet")})
    builder.download_and_prepare()
    [arrow] = (tmp_path / "hf").rglob("*-train.arrow")
    arrow.rename(arrow.with_name("tiny-train.arrow"))  # a hub dataset's files are named after its name alone
    before = offline_state()
    assert as_plain(read_records("me/tiny")) == EXPECTED
    assert no_network == [] and offline_state() == before


def test_without_the_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    path = tmp_path / "d.parquet"
    with pytest.raises(HeedError) as e:
        read_records(str(path))
    assert str(e.value) == (f"{path}: reading it needs the datasets package; install it with "
                            "pip install 'heed[datasets]'")


def test_cli_reads_parquet(tmp_path, capsys):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(RECORDS).to_parquet(str(path))
    assert main(["inspect", "--data", str(path), "--model", "random:gpt2-tiny", "--json", "--index", "4"]) == 0
    assert "Paris" in capsys.readouterr().out
