"""kohya option names -> the sd-lora key that does the same, for the "did you mean" hints of the config loader
and the CLI ("kohya's `network_alpha` is `network.alpha` here")."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["kohya_target", "kohya_hint"]


@lru_cache(maxsize=1)
def _targets() -> dict[str, str]:
    from sd_lora.config.kohya.args import KOHYA_ARGS
    from sd_lora.config.kohya.dataset import DATASET_KEYS

    found = {name: arg.target for name, arg in KOHYA_ARGS.items() if arg.target}
    for name, key in DATASET_KEYS.items():
        if key.target and name not in found:
            section, field = key.target.split(".", 1)
            found[name] = f"data.subsets[].{field}" if section == "subset" and name in (
                "image_dir", "is_reg", "metadata_file") else f"data.{field}" if section == "subset" else key.target
    found["network_weights"] = "network.init_weights"
    return found


def kohya_target(name: str) -> str | None:
    """The sd-lora key of kohya option `name` (with or without leading dashes), or None."""
    return _targets().get(name.lstrip("-").replace("-", "_"))


def kohya_hint(name: str) -> str | None:
    """"kohya's `name` is `section.key` here", or None when `name` is no kohya option with an sd-lora key."""
    target = kohya_target(name)
    return f"kohya's '{name.lstrip('-')}' is '{target}' here" if target else None


def unknown_key_hint(key: str, where: str) -> str | None:
    """The hint for an unknown config key `where.key` when it is a kohya name (None otherwise)."""
    if not where and key in ("general", "datasets"):
        return ("; this is a kohya dataset config: point data.config at the file (or pass "
                "`sd-lora train --dataset-config FILE`) instead of copying its tables")
    target = kohya_target(key)
    if target is None or target.rsplit(".", 1)[-1] == key and target.startswith(f"{where}."):
        return None
    return f"; {kohya_hint(key)}"
