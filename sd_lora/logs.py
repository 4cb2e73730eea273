"""Quiet the libraries' messages that sd-lora's own calls trigger and that were checked to be harmless.

Only exact messages are filtered (never whole loggers or warning categories), and only these:
- diffusers, on `.to(dtype)`: "There are modules in X that should be kept in float32: []" — the list is empty,
  so nothing is cast that should not be;
- transformers, when diffusers imports its pipelines: "`CLIPImageProcessor` requires torchvision (not
  installed); falling back to ..." — sd-lora never uses an image processor (no safety checker);
- the loading/writing progress bars of diffusers and transformers (one per component).
peft's "Already found a `peft_config`" warning is silenced where sd-lora adds a second adapter on purpose
(`adding_adapter()`). `--verbose` (or SD_LORA_VERBOSE=1) shows everything again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

__all__ = ["adding_adapter", "quiet_libraries", "set_verbose", "is_verbose"]

_HARMLESS = (
    "should be kept in float32: []. Casting directly",
    "requires torchvision (not installed); falling back to",
)
_state = {"verbose": os.environ.get("SD_LORA_VERBOSE", "") not in ("", "0"), "done": False}


class _HarmlessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS)


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose


def is_verbose() -> bool:
    return _state["verbose"]


def quiet_libraries() -> None:
    """Install the filters above (idempotent; a no-op when verbose). Call before importing diffusers pipelines."""
    if _state["verbose"] or _state["done"]:
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        root = lib.get_logger()  # the library's root logger, with its handler configured
        for target in (root, *root.handlers):
            target.addFilter(_HarmlessFilter())
    _state["done"] = True


@contextlib.contextmanager
def adding_adapter():
    """Around peft's injection of another named adapter into a model that holds one: peft warns that this
    "will lead to having multiple adapters", which is what mixing adapters means."""
    with warnings.catch_warnings():
        if not _state["verbose"]:
            warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute in the model",
                                    category=UserWarning)
        yield
