"""Dataset tooling: automatic captions and tags, caption operations, loss masks, the dataset report.

Modules (each imported on use, so `sd-lora captions` never loads torch):
    captioner   the Captioner interface, settings, and the backend registry (load_captioner)
    blip, florence, chat_vlm, wd_tagger   one backend each
    run         caption_folder: skip/overwrite/append, batching, resume, trigger/prefix, settings record
    textfile    caption sidecars read and written back in their own encoding and line endings
    tag_ops     tag frequencies, find/replace/remove/rename/dedupe/sort/trigger, diffs, backups and undo
    masks       CLIPSeg loss masks for data.mask_dir, contact sheet
    report      dataset report data (report_html renders it)
"""
