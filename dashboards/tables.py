"""A Tabulator that is updated by cell patches and appended rows, never rebuilt needlessly.

Setting ``Tabulator.value`` sends the whole table to the browser and resets its scroll
and selection; :meth:`PatchedTable.update` instead sends only the cells that changed
(``.patch``) and the rows that are new (``.stream``). Only a table that shrinks or
changes its columns is replaced whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import panel as pn

from dashboards.text import title

ROW_PX = 30


class PatchedTable:
    """``update(rows)`` turns the shown table into ``rows`` with the fewest messages.

    ``columns`` are the keys (stable: CSS and tests find cells by them); ``titles`` what
    the headers say (default: the key in words, capitalised).
    """

    def __init__(self, columns: Sequence[str], *, height: int | None = None,
                 css_class: str = "", titles: Mapping[str, str] | None = None,
                 **tabulator: Any) -> None:
        self.columns = list(columns)
        titles = {c: (titles or {}).get(c) or title(c) for c in self.columns}
        self.widget = pn.widgets.Tabulator(
            pd.DataFrame({c: pd.Series(dtype="object") for c in self.columns}),
            disabled=True, show_index=False, sortable=False, selectable=False,
            layout="fit_data_stretch", sizing_mode="stretch_width", height=height,
            css_classes=[css_class] if css_class else [],
            titles=titles, configuration={"columnDefaults": {"tooltip": True}}, **tabulator)
        self._rows: list[tuple[Any, ...]] = []
        self.patches = 0  # messages sent, for tests: patches and streams count; rebuilds too
        self.rebuilds = 0

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def update(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Show ``rows`` (tuples in column order); True when anything was sent."""
        new = [tuple(r) for r in rows]
        old = self._rows
        if new == old:
            return False
        if not old or len(new) < len(old):
            # The first rows, or rows went away (Tabulator has no row removal by patch).
            self.widget.value = pd.DataFrame(new, columns=self.columns)
            self.rebuilds += bool(old)
        else:
            cells: dict[str, list[tuple[int, Any]]] = {}
            for i, (a, b) in enumerate(zip(old, new, strict=False)):
                for c, (x, y) in enumerate(zip(a, b, strict=True)):
                    if x != y:
                        cells.setdefault(self.columns[c], []).append((i, y))
            if cells:
                self.widget.patch(cells, as_index=False)
            if len(new) > len(old):
                extra = pd.DataFrame(new[len(old):], columns=self.columns,
                                     index=range(len(old), len(new)))
                self.widget.stream(extra, follow=False, reset_index=False)
            self.patches += 1
        self._rows = new
        return True
