"""User-facing errors. The CLI prints each problem as one line and exits with status 2."""

from __future__ import annotations


class HeedError(Exception):
    """A problem the user can fix. ``problems`` holds one line per problem found."""

    def __init__(self, *problems: str):
        if not problems:
            raise ValueError("HeedError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
