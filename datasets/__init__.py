"""gradtrain's Dataset classes and the DataLoaders that feed them.

Not Hugging Face's `datasets`: run gradtrain from the checkout (or an editable install) and this
package is found first.
"""

from datasets.loaders import build_dataloader
from datasets.regression import RegressionDataset

__all__ = ["RegressionDataset", "build_dataloader"]
