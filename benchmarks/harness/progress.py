"""One tqdm bar for the whole bench, advanced by the sections' steps."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", desc="bench", dynamic_ncols=True)

    def step(self, what: str, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(what[:60])
            self._bar.update(n)

    def note(self, what: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(what[:60])

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Silent(Progress):
    def __init__(self) -> None:
        super().__init__(0, enabled=False)
