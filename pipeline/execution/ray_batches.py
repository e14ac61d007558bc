"""What a stage hands Ray Data: batches whose every column Arrow converts natively.

Ray Data turns each batch a stage returns into Arrow. A text or bytes column in which a failed row left NaN
(pandas' missing value, a float) cannot be converted; Ray then pickles it and, the first time in a process,
logs the column's values at DEBUG in its own log files (world-readable under /tmp/ray, served by a cluster's
dashboard): an original image's bytes, whole, or a failed row's error text with its path (docs/privacy.md).
Every batch a stage returns passes through `arrow_ready` first, so missing values are None and nothing is
logged.
"""

from __future__ import annotations

import pandas as pd


def arrow_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every missing value of an object or text column as None (Arrow's null), never NaN."""
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
            frame[name] = column.astype(object).where(column.notna(), None)
    return frame
