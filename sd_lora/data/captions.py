"""Caption operations: trigger word, kept leading tags, tag shuffle, caption and tag dropout, truncation.

Captions are treated as comma-separated tags only when they are shuffled or tags are dropped; otherwise the
user's text passes through untouched.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

__all__ = ["CaptionSettings", "process_caption", "split_tags", "truncate_caption"]

_TAG_SEPARATOR = ","


@dataclass(frozen=True)
class CaptionSettings:
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    shuffle_caption: bool = False
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    trigger_word: str | None = None

    @property
    def randomised(self) -> bool:
        """Whether the same image can get a different caption from one use to the next."""
        return self.shuffle_caption or self.caption_dropout_rate > 0 or self.caption_tag_dropout_rate > 0


def split_tags(caption: str, keep_tokens: int, keep_tokens_separator: str = "") -> tuple[list[str], list[str]]:
    """(kept tags, movable tags). The separator, when present, wins over the keep_tokens count."""
    if keep_tokens_separator and keep_tokens_separator in caption:
        head, _, tail = caption.partition(keep_tokens_separator)
        return _tags(head), _tags(tail.replace(keep_tokens_separator, _TAG_SEPARATOR))
    tags = _tags(caption)
    return tags[:keep_tokens], tags[keep_tokens:]


def process_caption(caption: str, settings: CaptionSettings, rng: random.Random | None) -> str:
    """The caption one training sample sees. `rng=None` gives the deterministic form (validation, text cache)."""
    randomise = rng is not None and settings.randomised
    if randomise and settings.caption_dropout_rate > 0 and rng.random() < settings.caption_dropout_rate:
        return ""  # dropout trains the unconditional case, so even kept tags and the trigger word go
    has_separator = bool(settings.keep_tokens_separator) and settings.keep_tokens_separator in caption
    if randomise or has_separator:
        kept, rest = split_tags(caption, settings.keep_tokens, settings.keep_tokens_separator)
        if randomise and settings.caption_tag_dropout_rate > 0:
            rest = [t for t in rest if rng.random() >= settings.caption_tag_dropout_rate]
        if randomise and settings.shuffle_caption:
            rng.shuffle(rest)
        caption = (_TAG_SEPARATOR + " ").join(kept + rest)
    return _with_trigger(caption.strip(), settings.trigger_word)


def truncate_caption(caption: str, count_tokens: Callable[[str], int], max_tokens: int) -> str:
    """Drop trailing tags, then trailing words, until the caption fits the text encoder's window."""
    if count_tokens(caption) <= max_tokens:
        return caption
    tags = _tags(caption)
    while len(tags) > 1 and count_tokens(", ".join(tags)) > max_tokens:
        tags.pop()
    words = ", ".join(tags).split(" ")
    while len(words) > 1 and count_tokens(" ".join(words)) > max_tokens:
        words.pop()
    return " ".join(words)


def _tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(_TAG_SEPARATOR) if t.strip()]


def _with_trigger(caption: str, trigger: str | None) -> str:
    if not trigger:
        return caption
    if not caption:
        return trigger
    if caption == trigger or caption.startswith((trigger + _TAG_SEPARATOR, trigger + " ")):
        return caption
    return f"{trigger}{_TAG_SEPARATOR} {caption}"
