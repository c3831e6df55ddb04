"""The Python API: the functions the commands call, for notebooks and scripts (``import heed``).

Settings are the same dataclasses as the CLI's (``heed.DataConfig``, ``heed.TrainConfig``, ...); problems
raise ``heed.HeedError`` with the same one-line messages. Training is ``finetune`` and generation ``respond``:
``heed.train`` and ``heed.generate`` are the stage packages, which would replace functions of those names.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from heed.config import DataConfig, GenerateConfig, RunConfig, validate


def load_records(source: Any, *, fields: str | None = None, format: str = "auto", system: str | None = None,
                 require_output: bool = True, skip_invalid: bool = False, split: str = "train",
                 data_config: str | None = None) -> list[Any]:
    """Validated records from a file path (JSON, JSON Lines, Parquet, CSV, Arrow, a ``save_to_disk``
    directory, a cached hub dataset name), a list of dicts, or a ``datasets.Dataset``."""
    from heed.data import with_system
    from heed.data.records import FieldMap
    from heed.data.sources import read_records

    records = read_records(source, FieldMap.parse(fields), format=format, require_output=require_output,
                           skip_invalid=skip_invalid, split=split, config=data_config)
    return with_system(records, system)


def _data(data: DataConfig | str, model: str) -> DataConfig:
    from heed.model import resolve_data

    cfg = DataConfig(data=data) if isinstance(data, str) else data
    validate(cfg)
    return resolve_data(cfg, model)


def inspect(data: DataConfig | str, model: str, index: int = 0) -> dict[str, Any]:
    """One record encoded as training sees it: what ``heed inspect --json`` prints (tokens, labels, turns)."""
    from heed.commands.data import inspect_record

    return inspect_record(_data(data, model), model, index)[2]


def audit(data: DataConfig | str, model: str) -> dict[str, Any]:
    """The data audit: what ``heed data check --json`` prints (``trainable``, duplicates, lengths, turns)."""
    from heed.commands.data import check_data

    result, turns = check_data(_data(data, model), model)
    return result.to_dict() | ({"turns": turns} if turns else {})


def finetune(run: RunConfig, *, log: Callable[[str], None] | None = None) -> Any:
    """The finetune job of ``heed train``: train, save to ``run.train.out``, answer and score the test split.
    Returns ``Trained`` (``.model``, ``.tokenizer``, ``.result`` with the losses)."""
    from heed.commands.finetune import finetune

    validate(run)
    return finetune(run, **({"log": log} if log else {}))


def respond(model: str, records: Any, config: GenerateConfig | None = None, *, template: str | None = None,
             device: str = "auto") -> list[str]:
    """Responses of ``model`` to ``records`` (anything ``load_records`` takes, or ``Record``s), formatted with
    the model's own template and system prompt (heed.json) unless ``template`` is given. The records passed
    are left as they were: the saved system prompt goes on copies."""
    from dataclasses import replace

    from heed.commands.generate import load_generator, saved_system
    from heed.data.records import Record
    from heed.generate import generate_responses

    config = config or GenerateConfig()
    validate(config)
    if not (isinstance(records, (list, tuple)) and records and all(isinstance(r, Record) for r in records)):
        records = load_records(records, require_output=False)
    system = saved_system(model) if all(r.system is None for r in records) else None
    records = [replace(r, system=system) for r in records] if system is not None else list(records)
    loaded, tokenizer, chosen = load_generator(model, template, device)
    return generate_responses(loaded, tokenizer, chosen, records, config)


def score(records: Sequence[Any], responses: Sequence[str] | None = None) -> Any:
    """Exact match and ROUGE-L of responses against the records' outputs (``Scores``; ``.to_dict()``).
    ``records`` are dicts carrying ``model_response``, or ``Record``s with ``responses`` beside them."""
    from heed.evaluate.metrics import score as score_rows

    rows = [dict(r) for r in records] if responses is None else [
        dict(r.raw) | {"output": r.output, "model_response": response} for r, response in zip(records, responses)]
    return score_rows(rows)
