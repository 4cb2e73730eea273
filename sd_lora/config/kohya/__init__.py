"""Coming from kohya sd-scripts: its dataset configs (`dataset`), its training options (`args`) and the
kohya -> sd-lora name table behind the config loader's hints (`names`)."""
