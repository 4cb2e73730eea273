"""Where a captioner's files are: a local folder, or a hub id resolved in the Hugging Face cache (downloaded once,
offline afterwards). A model that is not there is one error naming the command that fetches it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["ModelFiles", "resolve_model"]

# Only what a transformers or ONNX captioner loads: hub repos often carry pickled and duplicate weights too.
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.onnx", "*.csv", "*.tiktoken"]


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    model: str  # as the user gave it
    revision: str | None  # the commit of a cached hub snapshot; None for a local folder

    def as_record(self) -> dict:
        return {"model": self.model, "revision": self.revision, "location": str(self.folder)}


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_model(model: str, needed: tuple[str, ...], option: str, revision: str | None = None) -> ModelFiles:
    """`model` as a folder holding `needed` files, or as hub id ORG/NAME (cache first, then download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [n for n in needed if not (path / n).is_file()]
        if missing:
            raise SdLoraError(f"{option} {model!r}: the folder lacks {', '.join(missing)}; point it at the folder a "
                              "`hf download` or `save_pretrained` wrote")
        return ModelFiles(path.resolve(), model, None)
    if model.count("/") != 1 or path.exists() or model.startswith((".", "/", "~")):
        raise SdLoraError(f"{option} {model!r}: not a folder and not a hub id (ORG/NAME)")
    from huggingface_hub import snapshot_download

    rev = f" --revision {revision}" if revision else ""
    fetch = f"`hf download {model}{rev}`"
    try:
        folder = Path(snapshot_download(model, revision=revision, local_files_only=True, allow_patterns=_PATTERNS))
    except Exception:  # not cached (the client raises several types for it)
        if _offline():
            raise SdLoraError(f"{option} {model!r}: the model is not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
                              f"forbids downloading it; fetch it once with network access: {fetch}") from None
        try:
            folder = Path(snapshot_download(model, revision=revision, allow_patterns=_PATTERNS))
        except Exception as e:  # HTTP, gated, unknown repo, no network
            raise SdLoraError(f"{option} {model!r}: could not download it ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); check the id, your network and login "
                              f"(`hf auth login` for gated models), or fetch it with {fetch}") from e
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise SdLoraError(f"{option} {model!r}: the cached snapshot {folder} lacks {', '.join(missing)}; fetch the "
                          f"whole model with {fetch}")
    return ModelFiles(folder, model, folder.name)
