"""The sd-lora studio: a local web app over the library and the CLI (see sd_lora/studio/app.py)."""
