import random

from sd_lora.data import build_dataset, scan_dataset
from sd_lora.data.captions import CaptionSettings, process_caption, truncate_caption

TAGS = ["a", "b", "c", "d", "e", "f"]
CAPTION = ", ".join(TAGS)


def draws(settings, n, caption=CAPTION, seed=0):
    rng = random.Random(seed)
    return [process_caption(caption, settings, rng) for _ in range(n)]


def test_shuffle_keeps_the_first_tags_and_permutes_the_rest():
    outs = draws(CaptionSettings(keep_tokens=2, shuffle_caption=True), 300)
    orders = set()
    for out in outs:
        tags = out.split(", ")
        assert tags[:2] == ["a", "b"]
        assert sorted(tags[2:]) == TAGS[2:]
        orders.add(tuple(tags[2:]))
    assert len(orders) == 24  # every permutation of the 4 free tags shows up


def test_keep_tokens_separator_wins_over_the_count():
    settings = CaptionSettings(keep_tokens=1, keep_tokens_separator="|||", shuffle_caption=True)
    for out in draws(settings, 50, caption="sks, girl ||| red hair, smile, hat"):
        tags = out.split(", ")
        assert tags[:2] == ["sks", "girl"] and sorted(tags[2:]) == ["hat", "red hair", "smile"]
    assert process_caption("x, y ||| z", CaptionSettings(keep_tokens_separator="|||"), None) == "x, y, z"


def test_caption_dropout_rate_holds():
    outs = draws(CaptionSettings(caption_dropout_rate=0.3, keep_tokens=2), 4000)
    frac = sum(o == "" for o in outs) / len(outs)
    assert abs(frac - 0.3) < 0.03  # 4 standard deviations of a binomial mean at n = 4000


def test_tag_dropout_rate_holds_and_spares_kept_tags():
    outs = draws(CaptionSettings(caption_tag_dropout_rate=0.25, keep_tokens=1), 3000)
    kept = {t: 0 for t in TAGS}
    for out in outs:
        tags = out.split(", ") if out else []
        assert tags[0] == "a"
        for t in tags:
            kept[t] += 1
    for t in TAGS[1:]:
        assert abs(kept[t] / len(outs) - 0.75) < 0.04
    assert kept["a"] == len(outs)


def test_dropout_with_keep_tokens_and_trigger_gives_an_empty_caption():
    settings = CaptionSettings(caption_dropout_rate=1.0, keep_tokens=2, shuffle_caption=True, trigger_word="sks")
    assert set(draws(settings, 20)) == {""}


def test_trigger_word_prepended_once():
    s = CaptionSettings(trigger_word="sks")
    assert process_caption("a dog", s, None) == "sks, a dog"
    assert process_caption("sks, a dog", s, None) == "sks, a dog"
    assert process_caption("", s, None) == "sks"
    shuffled = draws(CaptionSettings(trigger_word="sks", shuffle_caption=True), 30)
    assert all(o.startswith("sks, ") for o in shuffled)


def test_caption_untouched_without_randomisation():
    assert process_caption("a photo,  of a   dog", CaptionSettings(keep_tokens=1), None) == "a photo,  of a   dog"


def test_truncate_cuts_at_tag_then_word_boundaries():
    words = lambda s: len(s.replace(",", " ").split())  # noqa: E731 - a stand-in tokenizer counting words
    assert truncate_caption("one two, three four, five six", words, 4) == "one two, three four"
    assert truncate_caption("one two three four five six", words, 3) == "one two three"
    assert truncate_caption("short", words, 3) == "short"


def test_dataset_truncates_long_captions_with_a_count(tmp_path, noise_image, data_cfg, caplog):
    d = tmp_path / "data"
    noise_image(d / "long.png", 32, 32, caption="w1, w2, w3, w4, w5, w6")
    noise_image(d / "short.png", 32, 32, seed=1, caption="w1")
    cfg = data_cfg(d)
    ds = build_dataset(cfg, scan_dataset(cfg), count_tokens=lambda s: len(s.split(",")), max_tokens=3)
    assert {ds[i]["caption"] for i in range(2)} == {"w1, w2, w3", "w1"}
    assert any("1 caption(s) are longer than the text encoder's 3 tokens" in r.getMessage() for r in caplog.records)


def test_dataset_caption_dropout_with_keep_tokens(tmp_path, noise_image, data_cfg):
    noise_image(tmp_path / "data" / "a.png", 32, 32, caption="x, y, z")
    cfg = data_cfg(tmp_path / "data", caption_dropout_rate=1.0, keep_tokens=2, trigger_word="sks")
    assert build_dataset(cfg, scan_dataset(cfg))[0]["caption"] == ""
