"""gradtrain's Dataset classes and the DataLoaders that feed them.

Not Hugging Face's `datasets`: run gradtrain from the checkout (or an editable install) and this
package is found first.
"""

from gradtrain.datasets.csv_table import CsvData, DataError, load_csv
from gradtrain.datasets.loaders import build_dataloader
from gradtrain.datasets.samplers import EpochBatchSampler, EpochSampler
from gradtrain.datasets.synthetic import ClassificationDataset, RegressionDataset
from gradtrain.datasets.tensor import InMemoryDataset

__all__ = [
    "ClassificationDataset",
    "CsvData",
    "DataError",
    "EpochBatchSampler",
    "EpochSampler",
    "InMemoryDataset",
    "RegressionDataset",
    "build_dataloader",
    "load_csv",
]
