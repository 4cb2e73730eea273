"""`data.config` (and `sd-lora train --dataset-config`): a kohya dataset config merged into a config tree."""

from __future__ import annotations

import sys

from sd_lora.config.kohya.dataset import DatasetConfigError, read_dataset_config
from sd_lora.errors import SdLoraError

__all__ = ["with_dataset_config"]


def with_dataset_config(tree: dict, problems: list[str]) -> dict:
    """The config tree with data.config's datasets in [data] (and its batch_size in [train]); data.config
    itself is consumed, so the resolved config names every subset. As in kohya, the dataset config's values
    win over the same keys set elsewhere; data.dir / subsets / reg_data_dir beside it are a problem (kohya
    ignores --train_data_dir and --reg_data_dir then, which hides a mistake)."""
    data = dict(tree["data"])
    path = data.pop("config")
    clash = [k for k in ("dir", "reg_data_dir", "metadata_file") if data.get(k)]
    clash += ["subsets"] if data["subsets"] else []
    if clash:
        problems.append(f"data.config: the kohya dataset config defines the images, so leave out data."
                        f"{', data.'.join(clash)} (or drop data.config)")
        return tree
    try:
        translation = read_dataset_config(path)
    except DatasetConfigError as e:
        problems += [f"data.config ({path}): {p}" for p in e.problems]
        return tree
    except SdLoraError as e:
        problems.append(f"data.config: {e}")
        return tree
    for note in translation.ignored:
        print(f"note: kohya dataset config {path}: {note}", file=sys.stderr)
    return {**tree, "data": {**data, **translation.data}, "train": {**tree["train"], **translation.train}}
