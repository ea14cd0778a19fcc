"""Fast string columns: pandas' string dtype (Arrow-backed when pyarrow is installed).

Building a million Python strings one by one is the slowest part of a naive generator; here
low-cardinality columns are a ``take`` from a small table and ids/addresses are vectorised
concatenations, all inside pandas' string arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = ["ids", "labels", "num", "table"]

STR = "str"


def table(values: Sequence[str] | ArrayLike) -> pd.api.extensions.ExtensionArray:
    """A small lookup table as a pandas string array."""
    return pd.array(np.asarray(values, dtype=object), dtype=STR)


def labels(values: Sequence[str] | ArrayLike, codes: ArrayLike) -> pd.Series:
    """``values[codes]`` as a string Series (codes index the small table ``values``)."""
    codes = np.asarray(codes, dtype=np.int64)
    return pd.Series(table(values).take(codes))


def num(values: ArrayLike) -> pd.Series:
    """Integers as decimal strings."""
    return pd.Series(np.asarray(values, dtype=np.int64)).astype(STR)


def ids(prefix: str, n: int, width: int, start: int = 1) -> pd.Series:
    """``prefix`` + zero-padded sequence numbers ``start .. start + n - 1``."""
    return prefix + num(np.arange(start, start + n)).str.zfill(width)
