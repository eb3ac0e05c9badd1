"""`DataInfo`: what the driver, evaluation and export need to know about a dataset, and its JSON.

Plain JSON: every reader of a run (evaluation, export, other backends) loads `data_info.json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Shape, size, normalisation and train augmentation of a dataset (docs/method.md §9)."""
  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  num_train: int
  num_test: int
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  crop_padding: int  # Random crop after zero padding by this many pixels (0: no crop).
  flip: bool  # Random horizontal flips.
  class_names: Tuple[str, ...] = ()
  # "imagenet": random resized crops drawn by the loader, centre crops at test (`image_files`).
  loader_crop: str = ""

  def resized(self, size: int) -> "DataInfo":
    """The same dataset resized to size x size: the crop padding scales with the image (a
    dataset without crops keeps none)."""
    padding = self.crop_padding * size // self.image_shape[0]
    if self.crop_padding:
      padding = max(1, padding)
    return dataclasses.replace(self, image_shape=(size, size, self.image_shape[2]),
                               crop_padding=padding)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> "DataInfo":
    values = json.loads(text)
    for key in ("image_shape", "mean", "std", "class_names"):
      values[key] = tuple(values[key])
    return cls(**values)


def save_data_info(info: DataInfo, path: str) -> None:
  with open(path, "w") as f:
    f.write(info.to_json())


def load_data_info(path: str) -> DataInfo:
  with open(path) as f:
    return DataInfo.from_json(f.read())
