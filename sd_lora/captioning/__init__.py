"""Dataset tooling: automatic captions and tags, caption operations, loss masks, the dataset report.

Modules:
    captioner    the Captioner interface, its settings, the backend registry (load_captioner)
    hub          a model from a local folder or the Hugging Face cache (one error naming `hf download`)
    generative   what the transformers backends share: loading on a device/dtype, deterministic generation
    blip, florence, chat_vlm, wd_tagger   one backend each
    run          caption_folder: skip/overwrite/append, batching, resume, trigger/prefix, the settings record
    textfile     caption sidecars read and written back in their own encoding and line endings
    tag_ops      tag frequencies, find/replace/remove/rename/dedupe/sort/trigger, diffs, backups and undo
    masks        CLIPSeg loss masks for data.mask_dir, contact sheet
    report       dataset report data; report_html renders it
"""
