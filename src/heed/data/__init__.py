"""The data path: records → prompt text → token ids + labels → batches."""

from __future__ import annotations

from heed.config import DataConfig
from heed.data.records import FieldMap, Record
from heed.data.split import Split, split_records
from heed.data.sources import read_records
from heed.errors import HeedError


def with_system(records: list[Record], system: str | None) -> list[Record]:
    """``records`` with ``--system`` set, in place: for records heed has just read itself (the commands, the
    training loop). A conversation keeps its own system turn, or takes ``system`` when it has none. Records
    that came from a caller (``heed.respond``) get copies instead: the API does not change its inputs."""
    if system is not None:
        for record in records:
            record.system = system
    return records


def load_split(cfg: DataConfig) -> tuple[list[Record], Split]:
    """Load ``cfg.data`` (and ``--val-file``/``--test-file`` when given) and split as configured.

    Every file is validated before anything fails, so one run lists the problems of all of them.
    Whether the split can train is ``Split.problems()``, the rule ``heed data check`` and ``heed train`` share.
    """
    fields = FieldMap.parse(cfg.fields)
    loaded: dict[str, list[Record] | None] = {}
    problems: list[str] = []
    for name, path in (("data", cfg.data), ("test", cfg.test_file), ("val", cfg.val_file)):
        loaded[name] = None
        if path:
            try:
                loaded[name] = with_system(read_records(path, fields, skip_invalid=cfg.skip_invalid, format=cfg.format,
                                                        split=cfg.split, config=cfg.data_config), cfg.system)
            except HeedError as e:
                problems.extend(e.problems)
    if problems:
        raise HeedError(*problems)
    records = loaded["data"] or []
    split = split_records(records, train_frac=cfg.train_frac, test_frac=cfg.test_frac, shuffle=cfg.shuffle,
                          seed=cfg.split_seed, test=loaded["test"], val=loaded["val"], source=cfg.data)
    return records, split
