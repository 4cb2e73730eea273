"""`sd-lora masks DIR --prompt "person" [--out DIR/masks] [--threshold T] [--invert] [--sheet]`: loss masks for
masked training with CLIPSeg; point data.mask_dir at the output folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.captioning.captioner import DEFAULT_MASK_MODEL

    p = subparsers.add_parser(name, help="make grayscale loss masks (data.mask_dir) from a text prompt with CLIPSeg")
    p.add_argument("dir", help="folder of training images")
    p.add_argument("--prompt", action="append", required=True,
                   help="what should count in the loss, e.g. 'person' (repeat for several: a pixel counts when any "
                        "matches)")
    p.add_argument("--out", help="mask folder (default DIR/masks); set data.mask_dir to it")
    p.add_argument("--model", default=DEFAULT_MASK_MODEL, help=f"CLIPSeg hub id or folder (default {DEFAULT_MASK_MODEL})")
    p.add_argument("--revision")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threshold", type=float, help="hard mask: white where the probability is at least this "
                                                   "(default: soft mask, the probability as gray)")
    p.add_argument("--floor", type=float, default=0.0,
                   help="lowest weight anywhere (e.g. 0.1 keeps a little loss on the background)")
    p.add_argument("--invert", action="store_true", help="count everything except the prompt (e.g. 'text')")
    p.add_argument("--overwrite", action="store_true", help="replace masks that exist")
    p.add_argument("--sheet", action="store_true", help="also write contact_sheet.jpg (image | mask | overlay) "
                                                        "into the mask folder")


def run(args) -> int:
    from tqdm import tqdm

    from sd_lora.captioning.masks import MaskSettings, contact_sheet, load_masker, make_masks

    if not Path(args.dir).is_dir():  # before the model loads
        from sd_lora.errors import SdLoraError

        raise SdLoraError(f"{args.dir}: not a folder; give the dataset folder of images to make masks for")
    settings = MaskSettings(prompts=tuple(args.prompt), model=args.model, revision=args.revision, device=args.device,
                            threshold=args.threshold, floor=args.floor, invert=args.invert,
                            batch_size=args.batch_size)
    out = Path(args.out) if args.out else Path(args.dir) / "masks"
    masker = load_masker(settings)
    with tqdm(total=None, unit="img", desc="masks") as bar:
        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        report = make_masks(args.dir, out, masker, overwrite=args.overwrite, progress=progress)
    print(f"wrote {len(report.written)} mask(s) to {out}, kept {len(report.kept)}, failed {len(report.failed)}")
    for path, why in report.failed:
        print(f"  failed: {path.name}: {why}")
    if args.sheet:
        print(f"contact sheet: {contact_sheet(args.dir, out, out / 'contact_sheet.jpg')}")
    print(f"train with them: data.mask_dir = \"{out}\"")
    return 1 if report.failed else 0
