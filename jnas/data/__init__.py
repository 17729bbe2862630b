"""Data: normalised image data sets on the host and the bi-level DARTS split.

Public API::

    from jnas.data import load_dataset, DataError, Dataset, BilevelBatches, DATASETS

``load_dataset(name, split=..., data_dir=..., limit=...)`` returns a :class:`Dataset`
(float32 NHWC normalised images, int32 labels); ``BilevelBatches(dataset, batch_size,
seed)`` splits a training set in two halves and yields deterministic, resumable
``(train_x, train_y, val_x, val_y)`` batches. Every bad input raises :class:`DataError`
with a one-line message. Pure numpy: no TensorFlow, no global random state.
"""

from jnas.data.datasets import DATASETS, Dataset, load_dataset
from jnas.data.errors import DataError
from jnas.data.pipeline import BilevelBatches, augment_batch

__all__ = [
    "DATASETS",
    "BilevelBatches",
    "DataError",
    "Dataset",
    "augment_batch",
    "load_dataset",
]
