"""Loading LoRAs: by name from a LoRA folder, from a file or folder, or from the hub.

Files are read and converted by diffusers' own loaders (`lora_state_dict`: diffusers/PEFT
safetensors and A1111/kohya keys) and become named PEFT adapters on the UNet (and on the text
encoder when they hold text-encoder weights), each distinct LoRA once per model, kept in
`pipe.loras`. The ControlNet never gets LoRAs. The adapters stay disabled: `finecontrol.lora_mixing`
applies them per person inside the batched calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finecontrol import models
from finecontrol.lora_mixing import disable_lora_layers, lora_layers
from finecontrol.models import ModelNotAvailableError
from finecontrol.paths import ASSETS
from finecontrol.scene import Scene, parse_loras

LORA_DIRS: list[Path] = [ASSETS.parent / "models" / "loras"]
"""Folders searched for LoRAs by name, besides the loaded model's own `loras/` folder."""
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name in a LoRA folder


class LoraNotAvailableError(ModelNotAvailableError):
    """A LoRA that cannot be found or used here, with what to do about it."""


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA loaded into a model: its PEFT adapter name and what it changes."""

    adapter: str
    source: str  # the file, folder or hub id it was read from
    text_encoder: bool  # it has text-encoder weights


def lora_dirs(pipe) -> list[Path]:
    """Where LoRAs are found by name: LORA_DIRS, then the model folder's own `loras/`."""
    own = [pipe.folder / "loras"] if getattr(pipe, "folder", None) is not None else []
    return [*LORA_DIRS, *own]


def available_loras(pipe) -> list[str]:
    """The names of the LoRAs in `lora_dirs(pipe)` (`NAME.safetensors` files and `NAME/` folders)."""
    names = set()
    for folder in lora_dirs(pipe):
        if folder.is_dir():
            names.update(path.stem for path in folder.glob("*.safetensors") if path.is_file())
            names.update(path.name for path in folder.iterdir() if path.is_dir() and any(path.glob("*.safetensors")))
    return sorted(names)


def resolve_lora(pipe, name: str) -> str:
    """The file, folder or hub id that `name` means: an existing path, else a name in a LoRA
    folder, else a hub id (`owner/repo`). LoraNotAvailableError when it is none of these."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    for folder in lora_dirs(pipe):
        for candidate in (folder / f"{name}.safetensors", folder / name):
            if candidate.exists():
                return str(candidate.resolve())
    if not models._looks_like_path(name):
        return name
    searched = ", ".join(str(folder) for folder in lora_dirs(pipe))
    known = ", ".join(available_loras(pipe)) or "none"
    raise LoraNotAvailableError(
        f"no LoRA {name!r}: not a file or folder, nor a name in {searched} (available: {known}), nor a hub id"
    )


def load_lora(pipe, name: str) -> LoadedLora:
    """The LoRA `name` as an adapter on `pipe`'s UNet (and text encoder), loaded on first use."""
    if pipe.is_sdxl:
        raise LoraNotAvailableError(
            f"{name}: LoRAs work with Stable Diffusion 1.x models only for now, not with this SDXL model"
        )
    source = resolve_lora(pipe, name)
    if source in pipe.loras:
        return pipe.loras[source]
    state_dict, alphas = _read(source, name)
    has_unet = any(key.startswith("unet.") for key in state_dict)
    has_text = any(key.startswith("text_encoder.") for key in state_dict)
    if not has_unet and not has_text:
        raise LoraNotAvailableError(f"{name}: no Stable Diffusion 1.x UNet or text-encoder LoRA weights in {source}")
    adapter = f"lora{len(pipe.loras)}"
    try:
        from diffusers import StableDiffusionPipeline

        if has_unet:
            StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, pipe.unet, adapter_name=adapter)
        if has_text:
            StableDiffusionPipeline.load_lora_into_text_encoder(
                state_dict, alphas, pipe.text_encoder, prefix="text_encoder", adapter_name=adapter
            )
        _check_plain_lora(pipe, adapter, name)
    except (ValueError, KeyError, RuntimeError) as err:
        _remove_adapter(pipe, adapter)
        raise LoraNotAvailableError(f"{name} cannot be used with this model: {err}") from err
    for model in (pipe.unet, pipe.text_encoder):
        disable_lora_layers(model)
    loaded = LoadedLora(adapter, source, has_text)
    pipe.loras[source] = loaded
    return loaded


def load_scene_loras(pipe, scene: Scene, loras: str = "") -> list[LoadedLora]:
    """Load ahead of generating (to fail before any step) the global LoRAs `loras` (the
    Settings text) and every person's."""
    refs = [*parse_loras(loras), *(ref for person in scene.people for ref in person.loras)]
    return [load_lora(pipe, ref.name) for ref in refs]


def _read(source: str, name: str) -> tuple[dict, dict | None]:
    """The LoRA's state dict in diffusers' keys (`unet.` and `text_encoder.` prefixes) and its alphas."""
    from diffusers import StableDiffusionPipeline

    path = Path(source)
    if not path.exists():
        path = _hub_folder(source)
    kwargs = {"weight_name": LORA_WEIGHTS} if path.is_dir() and (path / LORA_WEIGHTS).is_file() else {}
    try:
        return StableDiffusionPipeline.lora_state_dict(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise LoraNotAvailableError(f"{name}: {source} cannot be read as a LoRA: {err}") from err


def _hub_folder(repo: str) -> Path:
    """The local folder of a hub LoRA's safetensors files: from the cache, else downloaded.
    Offline and not cached: LoraNotAvailableError at once."""
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if models._hub_unavailable():
        raise LoraNotAvailableError(
            f"LoRA {repo} is not in the local cache and the Hugging Face hub cannot be reached. On a machine "
            f"with internet run `hf download {repo} --local-dir models/loras/{repo.split('/')[-1]}`, copy that "
            f"folder to the same place here and name the LoRA {repo.split('/')[-1]!r}."
        )
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:
        raise LoraNotAvailableError(f"LoRA {repo} cannot be downloaded: {err}") from err


def _check_plain_lora(pipe, adapter: str, name: str) -> None:
    """Refuse LoRA variants the per-person mixing does not compute (DoRA, embedding LoRAs)."""
    for model in (pipe.unet, pipe.text_encoder):
        for layer in lora_layers(model):
            if adapter in getattr(layer, "lora_variant", {}) or adapter in getattr(layer, "lora_embedding_A", {}):
                raise ValueError(f"{name} is a DoRA or embedding LoRA, which FineControl does not apply per person")


def _remove_adapter(pipe, adapter: str) -> None:
    """Undo a partly loaded adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in (pipe.unet, pipe.text_encoder):
        for layer in model.modules():
            if isinstance(layer, BaseTunerLayer) and adapter in layer.lora_A:
                layer.delete_adapter(adapter)
