"""``df.nbbatch``: the library's entry points as a pandas accessor.

A thin layer: it holds the DataFrame (or Series) and hands it to :func:`nbbatch.submit`,
:func:`nbbatch.preview` and :func:`nbbatch.try_now`; jobs live in the ledger, not on the
frame.

>>> job = df.nbbatch.submit("Classify: {review}", model="gpt-4o-mini")   # doctest: +SKIP
>>> job.merge(df).nbbatch.highlight()                                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pandas as pd

# The entry points are imported when used, not with this module: pandas' import hook
# loads this module while any other module of the package may still be importing pandas
# itself, so importing them here would make the package's import order matter.


class _Accessor:
    def __init__(self, data: pd.DataFrame | pd.Series) -> None:
        self._data = data

    def submit(self, prompt: str, **kwargs: Any) -> Any:
        """``nb.submit(this, prompt, **kwargs)``; see :func:`nbbatch.submit`."""
        from ._submit import submit  # when used: see the note above

        return submit(self._data, prompt, **kwargs)

    def preview(self, prompt: str, **kwargs: Any) -> Any:
        """``nb.preview(this, prompt, **kwargs)``; see :func:`nbbatch.preview`."""
        from ._preview import preview

        return preview(self._data, prompt, **kwargs)

    def try_now(self, prompt: str, **kwargs: Any) -> Any:
        """``nb.try_now(this, prompt, **kwargs)``; see :func:`nbbatch.try_now`."""
        from ._preview import try_now

        return try_now(self._data, prompt, **kwargs)


@pd.api.extensions.register_dataframe_accessor("nbbatch")
class DataFrameAccessor(_Accessor):
    """``df.nbbatch.submit(prompt, ...)``, ``.preview(...)``, ``.try_now(...)``, and
    ``out.nbbatch.highlight()`` on a merged frame."""

    def highlight(self, output: str | None = None, **kwargs: Any) -> Any:
        """``nb.highlight(this, output, **kwargs)``: the merged frame with the rows that did
        not succeed tinted; see :func:`nbbatch.highlight`."""
        from .styling import highlight

        assert isinstance(self._data, pd.DataFrame)  # registered on DataFrames only
        return highlight(self._data, output, **kwargs)


@pd.api.extensions.register_series_accessor("nbbatch")
class SeriesAccessor(_Accessor):
    """``series.nbbatch.submit(prompt, ...)``, ``.preview(...)``, ``.try_now(...)``."""
