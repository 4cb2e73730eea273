"""Load a Stable Diffusion base model and say what it is (family, prediction type).

Sources: `builtin:tiny` (shipped with sd-lora), a local diffusers directory or single-file checkpoint
(never touches the network), or a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sd_lora.config.sources import MODEL_FILE_SUFFIXES, looks_like_path
from sd_lora.errors import SdLoraError
from sd_lora.logs import quiet_libraries
from sd_lora.models.compat import dtype_kwarg
from sd_lora.models.families import DEFAULT_FAMILY, DENOISER_FOLDERS, FAMILY_NAMES, detect_family, get_family
from sd_lora.models.integrity import require_filled_folder

__all__ = ["BaseModelInfo", "native_resolution", "resolve_pretrained", "describe_source", "download_hub_model", "known_family", "inspect_model",
           "load_pipeline", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
# components a Stable Diffusion pipeline cannot run without (safety checker, feature extractor are optional)
_REQUIRED_COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                        "tokenizer_2", "tokenizer_3", "scheduler")


@dataclass(frozen=True)
class BaseModelInfo:
    """What the base model is. `name` is what the user wrote; `location` what was loaded."""

    name: str
    location: str
    family: str  # a name in sd_lora.models.families (sd1 | sd2 | sdxl | sd3)
    prediction_type: str  # epsilon | v_prediction | flow
    is_local: bool


def resolve_pretrained(pretrained: str) -> tuple[str, bool]:
    """Map `builtin:NAME` to its directory; return (location, is_local). A hub id is returned as it is."""
    if pretrained.startswith("builtin:"):
        name = pretrained.split(":", 1)[1]
        path = BUILTIN_DIR / name
        if not (path / "model_index.json").is_file():
            known = sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "model_index.json").is_file()) if BUILTIN_DIR.is_dir() else []
            raise SdLoraError(f"model.pretrained: no built-in model {name!r}; built-in models: {', '.join(known) or 'none'}")
        return str(path), True
    if not looks_like_path(pretrained):
        return pretrained, False  # a hub id such as "stable-diffusion-v1-5/stable-diffusion-v1-5"
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise SdLoraError(f"model.pretrained: {pretrained!r} does not exist{_nearby(path)}; give a diffusers model "
                          "directory, a single-file checkpoint, a hub id (e.g. 'stable-diffusion-v1-5/"
                          "stable-diffusion-v1-5') or 'builtin:tiny'")
    if path.is_dir():
        _check_diffusers_dir(path, pretrained)
    if path.is_file() and not pretrained.endswith(MODEL_FILE_SUFFIXES):
        raise SdLoraError(f"model.pretrained: {pretrained!r} is a file but not a checkpoint "
                          f"(expected one of {', '.join(MODEL_FILE_SUFFIXES)}) or a diffusers directory")
    return str(path), True


def _nearby(path: Path) -> str:
    """A hint for a mistyped local path: the closest names in the folder it would be in."""
    import difflib

    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return ""
    close = difflib.get_close_matches(path.name, [p.name for p in folder.iterdir()], n=3, cutoff=0.6)
    if close:
        return f" (did you mean {' or '.join(repr(str(folder / c)) for c in close)}?)"
    return f" (read as a local path because the folder {folder} exists)" if folder == path.parent else ""


def _check_diffusers_dir(path: Path, shown: str) -> None:
    """A diffusers folder holds model_index.json and one folder per component it lists: name what is missing."""
    if not (path / "model_index.json").is_file():
        raise SdLoraError(f"model.pretrained: {shown!r} is a directory but not a diffusers model "
                          "(no model_index.json); point at the folder that holds model_index.json, unet/, vae/ …")
    index = _read_json(path / "model_index.json", "model_index.json")
    needed = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
              and value[0] is not None and name in _REQUIRED_COMPONENTS]
    missing = [name for name in needed if not (path / name).is_dir()]
    if missing:
        raise SdLoraError(f"model.pretrained: {shown!r} lists {', '.join(missing)} in model_index.json but has no "
                          f"{', '.join(m + '/' for m in missing)} folder; copy the complete model (every component "
                          "folder) or point at another one")


def describe_source(pretrained: str, revision: str | None = None) -> str:
    """One line saying what `pretrained` is and where it comes from (for --validate and the start of a run)."""
    if pretrained.startswith("builtin:"):
        return f"built-in model {pretrained}"
    location, is_local = resolve_pretrained(pretrained)
    if is_local:
        kind = "diffusers folder" if Path(location).is_dir() else "single-file checkpoint"
        return f"{kind} {location}"
    rev = f" at revision {revision}" if revision else ""
    cached = _cached_file(pretrained, "model_index.json", revision)
    state = f"cached in {Path(cached).parent}" if cached else \
        ("not cached, and HF_HUB_OFFLINE=1 forbids downloading it" if _offline() else "not cached yet: downloads on first use")
    return f"hub id {pretrained}{rev} ({state})"


def native_resolution(pretrained: str, revision: str | None = None) -> int | None:
    """The image size the model was made for (denoiser sample size x VAE scale), read from its config files without
    loading weights; None when that cannot be known cheaply (a single file, a hub model not cached, a bad path)."""
    try:
        location, is_local = resolve_pretrained(pretrained)
        root = Path(location) if is_local else None
        if root is None:
            cached = _cached_file(pretrained, "model_index.json", revision)
            root = Path(cached).parent if cached else None
        if root is None or not (root / "model_index.json").is_file():
            return None
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
        folder = _denoiser_folder(index)
        denoiser = json.loads((root / folder / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))
        size = get_family(detect_family(index, denoiser)).native_resolution(denoiser, vae)
    except (SdLoraError, OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return size if size >= 8 and size % 8 == 0 else None


def known_family(pretrained: str, family: str | None = None, revision: str | None = None,
                 allow_pickle: bool = False) -> str | None:
    """The model's family when it can be read without loading weights (a local model, a cached hub id), else None."""
    location, is_local = resolve_pretrained(pretrained)
    if not is_local and not _cached_file(pretrained, "model_index.json", revision):
        return family
    return inspect_model(pretrained, family, None, allow_pickle, revision).family


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def download_hub_model(repo_id: str, revision: str | None = None) -> str:
    """The local snapshot folder of hub model `repo_id` (only the files a pipeline needs; from the cache when there)."""
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    if _offline() and not _cached_file(repo_id, "model_index.json", revision):
        rev = f" --revision {revision}" if revision else ""
        raise SdLoraError(f"model.pretrained: the hub model {repo_id!r} is not in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it. Download it once "
                          f"with network access (`hf download {repo_id}{rev}`, or run again without HF_HUB_OFFLINE), "
                          "or point model.pretrained at a local folder or file")
    try:
        return str(DiffusionPipeline.download(repo_id, revision=revision))
    except Exception as e:  # the hub client raises many types (HTTP, repo/revision not found, offline, OS)
        rev = f" at revision {revision!r}" if revision else ""
        raise SdLoraError(f"model.pretrained: could not get the hub model {repo_id!r}{rev}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}. Check the id and revision, your network and "
                          "login (`hf auth login` for gated models), or use a local folder") from e


def _denoiser_folder(index: dict) -> str:
    folder = next((name for name in DENOISER_FOLDERS if name in index), None)
    if folder is None:
        raise SdLoraError(f"model.pretrained: a diffusers model without a UNet or transformer "
                          f"({index.get('_class_name', 'unknown pipeline')}); sd-lora trains "
                          f"{', '.join(FAMILY_NAMES.values())}")
    return folder


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SdLoraError(f"model.pretrained: cannot read {what} at {path}: {e}") from e


def inspect_model(pretrained: str, family: str | None = None, prediction_type: str | None = None,
                  allow_pickle: bool = False, revision: str | None = None) -> BaseModelInfo:
    """Read family and prediction type from a model's config files (or a single file's key names), without
    loading weights. A hub id is read from the Hugging Face cache when it is there; otherwise it gets the
    overrides or sd1/epsilon until `load_pipeline` has downloaded it."""
    location, is_local = resolve_pretrained(pretrained)
    detected_family, detected_pred = DEFAULT_FAMILY, "epsilon"
    root = Path(location) if is_local else None
    if not is_local:
        cached = _cached_file(pretrained, "model_index.json", revision)
        root = Path(cached).parent if cached else None
    if root is not None and root.is_dir():
        index = _read_json(root / "model_index.json", "model_index.json")
        folder = _denoiser_folder(index)
        detected_family = detect_family(index, _read_json(root / folder / "config.json", f"{folder}/config.json"))
        if family and family != detected_family:
            raise SdLoraError(f"model.family = {family!r} contradicts the model: {pretrained!r} is a "
                              f"{FAMILY_NAMES[detected_family]} model ({detected_family}) by its model_index.json and "
                              f"{folder} config; leave model.family out (it is only needed for single files whose "
                              "keys are ambiguous)")
        sched_path = root / "scheduler" / "scheduler_config.json"
        if get_family(detected_family).objective == "flow":
            detected_pred = "flow"
        elif sched_path.is_file():
            detected_pred = _read_json(sched_path, "scheduler config").get("prediction_type", "epsilon")
    elif is_local:
        from sd_lora.models.families.unet_single_file import inspect_single_file

        detected_family, detected_pred = inspect_single_file(location, family=family, prediction_type=prediction_type,
                                                             allow_pickle=allow_pickle)
    return BaseModelInfo(pretrained, location, family or detected_family, prediction_type or detected_pred, is_local)


def _quantized_denoiser(location: str, folder: str, quantize: str, torch_dtype):
    import importlib

    import torch
    from diffusers import BitsAndBytesConfig

    if quantize == "nf4":
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        qcfg = BitsAndBytesConfig(load_in_8bit=True)
    config = _read_json(Path(location) / folder / "config.json", f"{folder}/config.json")
    cls = getattr(importlib.import_module("diffusers"), config["_class_name"])
    return cls.from_pretrained(location, subfolder=folder, quantization_config=qcfg, local_files_only=True,
                               **dtype_kwarg(torch_dtype))


def load_pipeline(pretrained: str, *, family: str | None = None, prediction_type: str | None = None,
                  torch_dtype=None, allow_pickle: bool = False, quantize: str | None = None,
                  revision: str | None = None, options=None):
    """Load the whole diffusers pipeline; returns (pipeline, BaseModelInfo).

    `options(family_name) -> dict`: extra from_pretrained arguments once the family is known (the family's
    `load_options`, e.g. SD3 without T5).

    A hub id is fetched into (or read from) the Hugging Face cache first, then loaded from that folder.
    `quantize` ('nf4' / 'int8') loads the UNet through bitsandbytes (CUDA only; the caller checks).
    """
    import torch

    quiet_libraries()
    from diffusers import DiffusionPipeline

    torch_dtype = torch_dtype or torch.float32
    location, is_local = resolve_pretrained(pretrained)
    if not is_local:
        location = download_hub_model(pretrained, revision)
    if Path(location).is_file():
        from sd_lora.models.families.unet_single_file import load_single_file_pipeline

        if quantize:
            raise SdLoraError(
                "model.quantize: not supported for single-file checkpoints; convert the checkpoint to a diffusers "
                "directory first, offline: python -c \"from sd_lora.models.families.unet_single_file import load_single_file_pipeline "
                "as f; f('MODEL.safetensors')[0].save_pretrained('MODEL_DIR')\" and set model.pretrained to that folder")
        pipe, fam = load_single_file_pipeline(location, family=family, prediction_type=prediction_type,
                                              torch_dtype=torch_dtype, allow_pickle=allow_pickle)
        return pipe, BaseModelInfo(pretrained, location, fam, pipe.scheduler.config.prediction_type, True)
    _check_diffusers_dir(Path(location), pretrained)
    info = inspect_model(location, family, prediction_type, allow_pickle)
    kwargs = dict(local_files_only=True, **dtype_kwarg(torch_dtype))
    index = _read_json(Path(location) / "model_index.json", "model_index.json")
    if quantize:
        kwargs[_denoiser_folder(index)] = _quantized_denoiser(location, _denoiser_folder(index), quantize, torch_dtype)
    # components the folder was saved without (e.g. SD3 without T5) load as None, as they were saved
    kwargs.update({name: None for name, value in index.items()
                   if not name.startswith("_") and isinstance(value, list) and value[0] is None})
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    kwargs.update(options(info.family) if options else {})
    try:
        pipe = DiffusionPipeline.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as e:
        raise SdLoraError(f"model.pretrained: could not load {pretrained!r} from {location}: {e}") from e
    if getattr(pipe, get_family(info.family).denoiser, None) is None or not hasattr(pipe, "vae"):
        raise SdLoraError(f"model.pretrained: {pretrained!r} is not a Stable Diffusion pipeline ({type(pipe).__name__})")
    require_filled_folder(pipe.components, location)
    return pipe, BaseModelInfo(pretrained, location, info.family, info.prediction_type, is_local)
