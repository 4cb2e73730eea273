"""`sd-lora captions ACTION DIR ...`: clean the caption sidecars of a dataset folder.

    tags DIR [--top N] [--json]               tag frequency table
    replace DIR --find X --replace Y [--regex]
    remove-tags DIR TAG [TAG ...]
    rename-tag DIR OLD NEW
    dedupe DIR / sort DIR [--keep N] / add-trigger DIR WORD
    undo DIR                                  restore the files the last applied action changed

Every editing action takes --dry-run (print the diff, write nothing); otherwise it prints the diff stat, writes each
file atomically in its own encoding and line endings, and keeps the originals in DIR/.sd-lora-caption-backups/.
"""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="tag frequencies and bulk caption edits (find/replace, remove, rename, "
                                         "dedupe, sort, trigger) with dry-run diffs and undo")
    actions = p.add_subparsers(dest="action", required=True)

    def action(action_name: str, help_text: str, edits: bool = True):
        a = actions.add_parser(action_name, help=help_text)
        a.add_argument("dir", help="dataset folder (images with same-stem caption files)")
        a.add_argument("--caption-extension", default=".txt", help="caption file extension (default .txt)")
        if edits:
            a.add_argument("--dry-run", action="store_true", help="print the diff and write nothing")
        return a

    a = action("tags", "tag frequency table (in how many captions each tag appears)", edits=False)
    a.add_argument("--top", type=int, default=0, help="show only the N most frequent tags")
    a.add_argument("--json", action="store_true", help="print [[tag, count], ...] as JSON")
    a = action("replace", "replace text in every caption")
    a.add_argument("--find", required=True, help="text to find (a regular expression with --regex)")
    a.add_argument("--replace", required=True, dest="replacement", help="replacement (\\1 groups with --regex)")
    a.add_argument("--regex", action="store_true", help="--find is a Python regular expression")
    a = action("remove-tags", "remove tags from every caption")
    a.add_argument("tags", nargs="+", help="exact tags to remove")
    a = action("rename-tag", "rename a tag in every caption")
    a.add_argument("old")
    a.add_argument("new")
    action("dedupe", "drop repeated tags (the first one stays)")
    a = action("sort", "sort tags alphabetically")
    a.add_argument("--keep", type=int, default=0, help="leave the first N tags in place (your keep_tokens)")
    a = action("add-trigger", "put a trigger word first in every caption (moved there if elsewhere)")
    a.add_argument("trigger")
    action("undo", "restore the files the last applied action changed", edits=False)


def _operation(args):
    from sd_lora.captioning import tag_ops

    if args.action == "replace":
        return tag_ops.replace_text(args.find, args.replacement, regex=args.regex)
    if args.action == "remove-tags":
        return tag_ops.remove_tags(args.tags)
    if args.action == "rename-tag":
        return tag_ops.rename_tag(args.old, args.new)
    if args.action == "dedupe":
        return tag_ops.dedupe_tags()
    if args.action == "sort":
        return tag_ops.sort_tags(keep=args.keep)
    return tag_ops.prepend_trigger(args.trigger)


def run(args) -> int:
    from sd_lora.captioning import tag_ops
    from sd_lora.captioning.textfile import read_caption_file
    from sd_lora.errors import SdLoraError

    if args.action == "undo":
        backup, restored = tag_ops.undo_last(args.dir)
        print(f"restored {len(restored)} caption file(s) from {backup}")
        return 0
    files = tag_ops.caption_files(args.dir, args.caption_extension)
    if args.action == "tags":
        table = tag_ops.tag_frequencies(read_caption_file(p).text for p in files)
        table = table[:args.top] if args.top > 0 else table
        if args.json:
            print(json.dumps(table))
        else:
            width = max((len(t) for t, _ in table), default=3)
            print(f"{'tag':<{width}}  files  (of {len(files)} caption files)")
            for tag, count in table:
                print(f"{tag:<{width}}  {count:5d}")
        return 0
    if args.action == "sort" and args.keep < 0:
        raise SdLoraError("--keep must be 0 or more")
    changes = tag_ops.plan_edit(files, _operation(args))
    diff = tag_ops.format_diff(changes)
    if diff:
        print(diff)
    if args.dry_run:
        print(f"dry run: {len(changes)} of {len(files)} caption file(s) would change; nothing written")
        return 0
    backup = tag_ops.apply_changes(changes, args.dir, args.action)
    undo = f"; originals in {backup} (undo: sd-lora captions undo {args.dir})" if backup else ""
    print(f"changed {len(changes)} of {len(files)} caption file(s){undo}")
    return 0
