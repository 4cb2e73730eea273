"""`sd-lora caption DIR [--backend florence2|blip|vlm|wd14] [--model ID|DIR] [--trigger WORD] [--overwrite|--append]`:
write a caption for every image of DIR that has none (.txt sidecars or metadata.jsonl), and record how.

Examples:
    sd-lora caption photos/ --backend florence2 --trigger ohwx
    sd-lora caption art/ --backend wd14 --threshold 0.35 --blacklist "simple background,white background"
    sd-lora caption photos/ --backend vlm --prompt "Describe the person's clothing and the setting in one sentence."
    sd-lora caption photos/ --reuse-settings        # the settings the folder's last run recorded
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["add_parser", "run"]


def _tag_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_parser(subparsers, name: str) -> None:
    from sd_lora.captioning.captioner import BACKENDS, DEFAULT_MODELS

    p = subparsers.add_parser(name, help="caption or tag a folder of images (Florence-2, BLIP/BLIP-2, a chat VLM, "
                                         "or the WD14 booru tagger)")
    p.add_argument("dir", help="folder of images")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="captioner: florence2 (default), blip (BLIP and BLIP-2), vlm (chat model with an "
                        "instruction), wd14 (booru tags)")
    p.add_argument("--model", default=None, help="hub id or local folder; defaults: " +
                   ", ".join(f"{k}={v}" for k, v in DEFAULT_MODELS.items()))
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing captions")
    mode.add_argument("--append", action="store_true", help="add the new text after existing captions")
    p.add_argument("--output", choices=["txt", "jsonl"], default=None,
                   help="txt: same-stem sidecars (default); jsonl: the folder's metadata.jsonl")
    p.add_argument("--caption-extension", default=None, help="sidecar extension (default .txt)")
    p.add_argument("--trigger", help="trigger word written as every caption's first tag (set keep_tokens to keep it "
                                     "first when shuffling)")
    p.add_argument("--prefix", help="comma-separated tags written after the trigger, before the generated text")
    p.add_argument("--keep-tokens-separator", default="",
                   help="write this (e.g. '|||', kohya's keep_tokens_separator) between trigger/prefix and the rest")
    p.add_argument("--device", default=None, help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=None,
                   help="auto: bf16 on a GPU that has it, else fp32")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 4)")
    p.add_argument("--prompt", default=None, help="BLIP: text to continue; Florence-2: task token "
                                                   "(<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>); "
                                                   "vlm: the instruction")
    p.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit (default 120)")
    p.add_argument("--num-beams", type=int, default=None, help="beam search width (default 3; 1 is greedy)")
    p.add_argument("--threshold", type=float, default=None, help="wd14: general tags at or above it (default 0.35)")
    p.add_argument("--character-threshold", type=float, default=None,
                   help="wd14: character tags at or above it (default 0.85)")
    p.add_argument("--blacklist", type=_tag_list, default=None, help="wd14: comma-separated tags never written")
    p.add_argument("--whitelist", type=_tag_list, default=None, help="wd14: write only these comma-separated tags")
    p.add_argument("--keep-underscores", action="store_true", help="wd14: write tags as long_hair, not long hair")
    p.add_argument("--include-rating", action="store_true", help="wd14: add the rating tag (general, sensitive, ...)")
    p.add_argument("--reuse-settings", action="store_true",
                   help=f"start from the captioner settings and options of the folder's last recorded run; options "
                        "given here override them")


_SETTING_OPTIONS = ("backend", "model", "revision", "device", "dtype", "batch_size", "prompt", "max_new_tokens",
                    "num_beams", "threshold", "character_threshold", "blacklist", "whitelist")


def _settings(args):
    from sd_lora.captioning.captioner import CaptionerSettings
    from sd_lora.captioning.run import last_recorded_run

    values: dict = {}
    job: dict = {}
    if args.reuse_settings:
        last = last_recorded_run(args.dir)
        # The mode (skip/overwrite/append) is what this run should do, not a setting to reproduce.
        values, job = dict(last["captioner"]), {k: v for k, v in last["job"].items() if k != "mode"}
        # The recorded model is the resolved id and its exact commit: replaying pins both.
        values["revision"] = last["model"].get("revision") or values.get("revision")
    values.update({k: getattr(args, k) for k in _SETTING_OPTIONS if getattr(args, k) is not None})
    if args.keep_underscores:
        values["replace_underscores"] = False
    if args.include_rating:
        values["include_rating"] = True
    return CaptionerSettings.from_record(values), job


def run(args) -> int:
    from tqdm import tqdm

    from sd_lora.captioning.captioner import load_captioner
    from sd_lora.captioning.run import CaptionJob, caption_folder

    if not Path(args.dir).is_dir():  # before a model loads: a typo costs milliseconds, not a model's load
        from sd_lora.errors import SdLoraError

        raise SdLoraError(f"{args.dir}: not a folder; give the dataset folder of images to caption")
    settings, recorded_job = _settings(args)
    job_values = {**recorded_job, "folder": args.dir}
    explicit = {"mode": "overwrite" if args.overwrite else "append" if args.append else None,
                "trigger": args.trigger, "prefix": args.prefix,
                "keep_tokens_separator": args.keep_tokens_separator or None,
                "output": args.output, "caption_extension": args.caption_extension}
    job_values.update({k: v for k, v in explicit.items() if v is not None})
    job = CaptionJob(**{**job_values, "folder": Path(args.dir)})
    captioner = load_captioner(settings)
    print(f"captioner: {settings.backend} {settings.model} ({captioner.files.revision or 'local folder'}) on "
          f"{captioner.device} {captioner.dtype}, batch {settings.batch_size}")
    with tqdm(total=None, unit="img", desc="captioning") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = caption_folder(job, captioner, progress)
    resumed = f" ({report.resumed} done by the interrupted run)" if report.resumed else ""
    print(f"wrote {len(report.written)} caption(s), kept {len(report.kept)}{resumed}, failed {len(report.failed)}")
    for path, why in report.failed:
        print(f"  failed: {path.name}: {why}")
    if report.keep_tokens:
        print(f"every caption starts with {report.keep_tokens} fixed tag(s): set data.keep_tokens = "
              f"{report.keep_tokens} to keep them first when shuffle_caption is on")
    print(f"settings recorded in {report.record}")
    return 1 if report.failed else 0
