"""Stage: data. Records into the three sets training uses: train, test (for responses and scores) and
validation (for losses and early stopping), sliced as the original design slices them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heed.errors import HeedError

if TYPE_CHECKING:
    from heed.data.records import Record


@dataclass
class Split:
    train: list[Record]
    test: list[Record]
    val: list[Record]
    source: str = "data"  # the file, for messages
    train_frac: float = 0.85  # the fractions that made this split, for messages
    test_frac: float = 0.10
    given: tuple[str, ...] = ()  # sets read from their own file: "test", "val"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), "val": len(self.val)}

    def problems(self, *, needs_val: bool = False) -> list[str]:
        """Why this split cannot train (empty list: it can). The one rule ``heed data check`` and
        ``heed train`` share. An empty validation set only matters when something needs it
        (``needs_val``: early stopping); without one, losses are measured on training data."""
        sizes = self.sizes()
        n = sizes["train"] + sum(sizes[s] for s in ("test", "val") if s not in self.given)
        shape = f"{n} record{'s' if n != 1 else ''} split train {sizes['train']} / test {sizes['test']} / val {sizes['val']}"
        problems = []
        if not self.train:
            problems.append(f"{self.source}: the training split is empty ({shape} by --train-frac {self.train_frac} "
                            f"--test-frac {self.test_frac}); raise --train-frac (e.g. --train-frac 1 --test-frac 0 "
                            "for a tiny file) or add records")
        if needs_val and not self.val:
            problems.append(f"{self.source}: early stopping (--patience) needs validation records, but the "
                            f"validation split is empty ({shape}); lower --train-frac or --test-frac, or give "
                            "--val-file")
        return problems

    def check(self, *, needs_val: bool = False) -> None:
        """Raise ``problems()`` as one ``HeedError``, if there are any."""
        problems = self.problems(needs_val=needs_val)
        if problems:
            raise HeedError(*problems)


def split_records(
    records: list[Record],
    *,
    train_frac: float = 0.85,
    test_frac: float = 0.10,
    shuffle: bool = False,
    seed: int = 123,
    test: list[Record] | None = None,
    val: list[Record] | None = None,
    source: str = "data",
) -> Split:
    """Slice records as the original design does: first 85% train, next 10% test, the rest val.

    On 1,100 records this gives 935 / 110 / 55. A set given explicitly (``test=``/``val=``, from
    ``--test-file``/``--val-file``) is not cut from ``records``; its share goes to training.
    """
    if not 0 < train_frac <= 1 or not 0 <= test_frac < 1 or train_frac + test_frac > 1 + 1e-9:
        raise HeedError(f"split fractions must satisfy 0 < train <= 1, 0 <= test, train + test <= 1 "
                        f"(got train={train_frac}, test={test_frac})")
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n = len(records)
    given = tuple(name for name, s in (("test", test), ("val", val)) if s is not None)
    about = dict(source=source, train_frac=train_frac, test_frac=test_frac, given=given)
    val_frac = 1.0 - train_frac - test_frac
    own_test = 0.0 if test is not None else test_frac
    own_val = 0.0 if val is not None else val_frac
    n_test = int(n * own_test)
    n_val = int(n * own_val) if own_val > 0 else 0
    if test is None and val is None:
        # Exactly the original slicing: train and test by int(), validation takes the remainder.
        n_train = int(n * train_frac)
        n_test = int(n * test_frac)
        return Split(records[:n_train], records[n_train:n_train + n_test], records[n_train + n_test:], **about)
    n_train = n - n_test - n_val
    return Split(
        records[:n_train],
        test if test is not None else records[n_train:n_train + n_test],
        val if val is not None else records[n_train + n_test:],
        **about,
    )
