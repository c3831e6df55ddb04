"""heed: turn a pretrained causal language model into an instruction follower.

The package follows the pipeline: records → prompt text → token ids + labels → batches →
training → generation → evaluation. As a library (``heed.api``, loaded on first use so that
``import heed`` stays fast):

    records = heed.load_records("data.jsonl")            # or a list of dicts, or a datasets.Dataset
    heed.inspect("data.jsonl", "random:gpt2-tiny")       # what `heed inspect --json` prints
    trained = heed.finetune(heed.RunConfig(heed.DataConfig(data="data.jsonl"), heed.TrainConfig(model=...)))
    heed.respond("runs/heed", [{"instruction": "Add 2 and 3."}])
"""

from heed._version import __version__

_API = ("load_records", "inspect", "audit", "finetune", "respond", "score")
_CONFIG = ("DataConfig", "TrainConfig", "LoraConfig", "GenerateConfig", "RunConfig")
__all__ = [*_API, *_CONFIG, "HeedError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from heed import api

        return getattr(api, name)
    if name in _CONFIG:
        from heed import config

        return getattr(config, name)
    if name == "HeedError":
        from heed.errors import HeedError

        return HeedError
    raise AttributeError(f"module 'heed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
