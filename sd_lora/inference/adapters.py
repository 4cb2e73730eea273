"""Adapters on a loaded pipeline: load files by name, set per-adapter weights, mixed batches, fuse/unfuse.

Every adapter is one peft adapter inside the pipeline's UNet / text encoders, named after its file. Weights
are peft's per-adapter `scaling` (set absolutely, never multiplied up), so changing a weight between prompts
costs nothing and never reloads the base model.

Mixed batches: peft LoRA layers accept `adapter_names` (one name per sample, "__base__" for none) and then
add each sample's own adapter only. diffusers' UNet does not pass that keyword down, so `mixed_forward`
installs a forward pre-hook on every adapter layer that adds it. A sample can use one adapter this way,
and the weight is the adapter's scaling, so when one batch needs the same file at two weights the file is
loaded a second time under a variant name (a weight is a property of an adapter in peft).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path, PurePath
from typing import Iterable, Iterator

import torch

from sd_lora.errors import SdLoraError
from sd_lora.models.families import family_of_pipeline

__all__ = ["ADAPTER_SUFFIXES", "apply_adapter", "lora_hash", "AdapterSet"]

ADAPTER_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


def apply_adapter(pipe, path: str | Path, adapter_name: str, *, family: str | None = None,
                  allow_pickle: bool = False) -> None:
    """Inject the adapter file at `path` into `pipe` as `adapter_name` (all modules or none).

    The one place inference loads adapter files: sd_lora.formats reads every supported format (kohya
    LoRA/LoCon/LoHa/LoKr/DoRA, diffusers files, peft directories) and refuses files for another family.
    """
    from sd_lora.formats import apply_adapter_file

    apply_adapter_file(pipe, path, adapter_name, family=family, allow_pickle=allow_pickle)


def lora_hash(path: str | Path) -> str:
    """AUTOMATIC1111's short LoRA hash (AutoV3): sha256 of a safetensors file's tensor bytes, 12 hex digits.

    Other files hash all their bytes; a peft directory hashes its adapter_model file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("adapter_model.*")) or sorted(path.glob("*.safetensors"))
        if not found:
            return ""
        path = found[0]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            header = int.from_bytes(f.read(8), "little")
            f.seek(8 + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _denoiser(pipe) -> str:
    return family_of_pipeline(pipe).denoiser


def _tuner_layers(pipe, components: tuple[str, ...] | None = None) -> Iterator[torch.nn.Module]:
    yield from (layer for _, layer in _component_layers(pipe, components))


def _component_layers(pipe, components: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.nn.Module]]:
    """(component, peft layer) of the denoiser and text encoders (or of `components`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in components or tuple(family_of_pipeline(pipe).components(pipe)):
        model = getattr(pipe, component, None)
        if model is not None:
            yield from ((component, m) for m in model.modules() if isinstance(m, BaseTunerLayer))


def _weights(entry: tuple) -> tuple[float, float]:
    """(text-encoder weight, UNet weight) of an activation entry (file, weight) or (file, te, unet)."""
    return (entry[1], entry[1]) if len(entry) == 2 else (entry[1], entry[2])


class AdapterSet:
    """The adapter files loaded into one pipeline, addressed by the names users write.

    A name is resolved as: a name given to `add`, an existing path, then `lora_dir/NAME[.safetensors|...]`.
    Names from prompts and prompt files (`in_folder=True`) resolve only inside `lora_dir`: no absolute path,
    no `..`, no `~`, no link leading out of the folder (a prompt file can come from anyone).
    """

    def __init__(self, pipe, *, family: str | None = None, lora_dir: str | Path | None = None,
                 allow_pickle: bool = False):
        self.pipe = pipe
        self.family = family
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.allow_pickle = allow_pickle
        self._aliases: dict[str, Path] = {}
        self._names: dict[tuple[Path, float | None], str] = {}  # (file, None) = primary; (file, w) = variant
        self._hashes: dict[Path, str] = {}
        self._fused: dict[str, float] = {}
        self._snapshot: dict[torch.nn.Module, list[torch.Tensor]] = {}

    # ---- names and files -------------------------------------------------------------------------
    def resolve(self, name: str, in_folder: bool = False) -> Path:
        """The adapter file for a user-written name, or an SdLoraError saying where it was looked for."""
        if name in self._aliases:
            return self._aliases[name]
        if in_folder:
            return self._resolve_in_folder(name)
        direct = Path(name).expanduser()
        if direct.exists():
            return direct.resolve()
        tried = [str(direct)]
        if self.lora_dir is not None:
            for candidate in [self.lora_dir / name] + [self.lora_dir / (name + s) for s in ADAPTER_SUFFIXES]:
                if candidate.exists():
                    return candidate.resolve()
            tried.append(f"{self.lora_dir}/{name}[{'|'.join(ADAPTER_SUFFIXES)}]")
            known = sorted(p.stem for p in self.lora_dir.iterdir() if p.suffix in ADAPTER_SUFFIXES or p.is_dir()) \
                if self.lora_dir.is_dir() else []
            hint = f"; LoRAs in {self.lora_dir}: {', '.join(known) or 'none'}"
        else:
            hint = "; give a path, or --lora-dir to look names up in a folder"
        raise SdLoraError(f"LoRA {name!r} not found (looked for {' and '.join(tried)}){hint}")

    def _resolve_in_folder(self, name: str) -> Path:
        where = f"LoRA {name!r} (named in a prompt or prompt file)"
        if self.lora_dir is None:
            raise SdLoraError(f"{where}: names in <lora:...> tags and prompt files are looked up in the LoRA folder "
                              "only; give --lora-dir FOLDER (or pass the file with --lora PATH)")
        parts = PurePath(name).parts
        if PurePath(name).is_absolute() or ".." in parts or name.startswith("~") or "\\" in name:
            raise SdLoraError(f"{where}: must name a file inside --lora-dir {self.lora_dir} (no absolute path, "
                              "'..', '~' or backslash); put the adapter in that folder and write its name")
        root = self.lora_dir.resolve()
        for candidate in [self.lora_dir / name] + [self.lora_dir / (name + s) for s in ADAPTER_SUFFIXES]:
            if candidate.exists():
                real = candidate.resolve()
                if not real.is_relative_to(root):
                    raise SdLoraError(f"{where}: {candidate} is a link leading out of --lora-dir {self.lora_dir}; "
                                      "names in prompts resolve only inside it. Copy the adapter into the folder")
                return real
        known = sorted(p.stem for p in self.lora_dir.iterdir() if p.suffix in ADAPTER_SUFFIXES or p.is_dir()) \
            if self.lora_dir.is_dir() else []
        raise SdLoraError(f"LoRA {name!r} not found in {self.lora_dir} (named in a prompt or prompt file; looked for "
                          f"{name}[{'|'.join(ADAPTER_SUFFIXES)}]); LoRAs there: {', '.join(known) or 'none'}")

    def add(self, path: str | Path, name: str | None = None) -> str:
        """Load a file now (validating it against the pipeline) and optionally give it a short name."""
        file = self.resolve(str(path))
        if name:
            self._aliases[name] = file
        return self._adapter(file, None)

    def load(self, names: Iterable[str], in_folder: Iterable[bool] | None = None) -> list[Path]:
        """Resolve and load every name (each file once); errors come before anything is generated.
        `in_folder`: per name, whether it came from a prompt (see `resolve`)."""
        names = list(names)
        flags = list(in_folder) if in_folder is not None else [False] * len(names)
        files = [self.resolve(n, f) for n, f in zip(names, flags)]
        for file in files:
            self._adapter(file, None)
        return files

    def hash(self, file: Path) -> str:
        if file not in self._hashes:
            self._hashes[file] = lora_hash(file)
        return self._hashes[file]

    def _adapter(self, file: Path, variant: float | None) -> str:
        key = (file, variant)
        if key not in self._names:
            stem = re.sub(r"\W", "_", file.stem if file.is_file() else file.name) or "lora"
            name = stem if variant is None else f"{stem}_w{str(variant).replace('.', 'p').replace('-', 'm')}"
            taken, base, i = set(self._names.values()), name, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            apply_adapter(self.pipe, file, name, family=self.family, allow_pickle=self.allow_pickle)
            self._names[key] = name
        return self._names[key]

    # ---- weights -----------------------------------------------------------------------------------
    def activate(self, loras: list[tuple]) -> None:
        """Make exactly these adapters active; an empty list runs the base model. Entries are (file, weight)
        or (file, text-encoder weight, UNet weight), as AUTOMATIC1111's `<lora:NAME:TE:UNET>`."""
        self._check_unfused()
        self._set([(self._adapter(e[0], None), *_weights(e)) for e in loras])

    def _set(self, entries: list[tuple[str, float, float]]) -> None:
        names, denoiser = [e[0] for e in entries], _denoiser(self.pipe)
        for component, layer in _component_layers(self.pipe):
            if not entries:
                layer.enable_adapters(False)
                continue
            layer.enable_adapters(True)
            layer.set_adapter(names, inference_mode=True)
            for name, te, unet in entries:
                layer.set_scale(name, unet if component == denoiser else te)

    def supports_mixed(self, file: Path) -> bool:
        """Whether peft can mix this adapter per sample (LoRA layers without DoRA)."""
        from peft.tuners.lora import LoraLayer

        name = self._adapter(file, None)
        layers = [m for m in _tuner_layers(self.pipe) if name in getattr(m, "scaling", {}) or
                  name in getattr(m, "active_adapters", [])]
        return all(isinstance(m, LoraLayer) and not m.use_dora.get(name, False) for m in layers)

    @contextlib.contextmanager
    def mixed_forward(self, per_sample: list[tuple | None]) -> Iterator[None]:
        """Inside the block the UNet runs each sample with its own adapter (None = base model).

        The UNet batch may hold the samples several times (classifier-free guidance: uncond half, then cond
        half, each in sample order); the names are repeated to match."""
        self._check_unfused()
        names, weights = [], {}
        for item in per_sample:
            if item is None:
                names.append("__base__")
                continue
            file, weight = item[0], _weights(item)[1]  # only the UNet runs mixed
            name = self._adapter(file, None)
            if weights.get(name, weight) != weight:
                name = self._adapter(file, weight)
            weights[name] = weight
            names.append(name)
        self._set([(name, w, w) for name, w in weights.items()])
        handles = [layer.register_forward_pre_hook(_names_hook(names), with_kwargs=True)
                   for layer in _tuner_layers(self.pipe, (_denoiser(self.pipe),))]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- fusing ------------------------------------------------------------------------------------
    @property
    def fused(self) -> dict[str, float]:
        return dict(self._fused)

    def fuse(self, loras: list[tuple]) -> None:
        """Merge these adapters at these weights into the base weights (no per-step overhead afterwards).

        The base weights are kept in memory first, so `unfuse` restores them bit for bit rather than by
        subtracting the update again (which rounds)."""
        self._check_unfused()
        self.activate(loras)
        names = [self._adapter(f, None) for f, _ in loras]
        layers = [m for m in _tuner_layers(self.pipe) if any(n in getattr(m, "scaling", {}) for n in names)]
        self._snapshot = {m: [p.detach().clone() for p in m.get_base_layer().parameters(recurse=False)]
                          for m in layers}
        for layer in layers:
            layer.merge(adapter_names=[n for n in names if n in layer.scaling])
        self._fused = {n: e[1] for n, e in zip(names, loras)}

    def unfuse(self) -> None:
        """Undo `fuse`: the base weights become exactly what they were before."""
        with torch.no_grad():
            for layer, saved in self._snapshot.items():
                layer.merged_adapters.clear()
                for param, value in zip(layer.get_base_layer().parameters(recurse=False), saved):
                    param.copy_(value)
        self._snapshot, self._fused = {}, {}

    def _check_unfused(self) -> None:
        if self._fused:
            raise SdLoraError(f"adapters {sorted(self._fused)} are fused into the model; per-prompt LoRAs need "
                              "them unfused (AdapterSet.unfuse(), or run without --fuse)")


def _names_hook(names: list[str]):
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        repeat, rest = divmod(x.shape[0], len(names))
        if rest:
            raise RuntimeError(f"mixed-adapter batch: layer input batch {x.shape[0]} is not a multiple of "
                               f"{len(names)} samples")
        kwargs["adapter_names"] = names * repeat
        return args, kwargs

    return hook
