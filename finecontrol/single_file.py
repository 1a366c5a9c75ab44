"""Single-file checkpoints: one `.safetensors` file holding a Stable Diffusion 1.x or SDXL fine-tune
in the original (LDM) layout, as model sites distribute them.

The architecture is read from the file's tensor names and shapes (diffusers'
`infer_diffusers_model_type`, given the header only: no weight is read for it). The weights are
converted by diffusers' own `from_single_file`, which takes the configs and tokenizers of the
architecture's reference model: a local folder `models/<name>` (as the offline instructions
download it), the hub cache, or the hub when it can be reached. The OpenPose ControlNet is the
architecture's default unless one is given.
"""

from __future__ import annotations

from pathlib import Path

import torch

from finecontrol import models
from finecontrol.pipeline import FineControlPipeline

# diffusers' names for the architectures handled, and the reference model of each (configs, tokenizers).
ARCHITECTURES = {"v1": ("sd15", models.DEFAULT_BASE), "xl_base": ("sdxl", models.DEFAULT_SDXL_BASE)}
LOCAL_MODELS = Path("models")


def checkpoint_architecture(path: str | Path) -> str:
    """ "sd15" or "sdxl" for a single-file checkpoint, from its header; ModelNotAvailableError for
    a file that is not a safetensors checkpoint of either (SD2, inpainting, refiner...)."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:  # shapes on the meta device: nothing is read
            header = {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise models.ModelNotAvailableError(f"{Path(path).name} is not a readable safetensors file: {err}") from err
    kind = infer_diffusers_model_type(header)
    if kind == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in header:  # diffusers' fallback for anything unknown
        raise models.ModelNotAvailableError(
            f"{Path(path).name} is not a Stable Diffusion checkpoint (no UNet in the original layout found); "
            f"LoRAs go in --lora, ControlNets in --controlnet"
        )
    if kind not in ARCHITECTURES:
        raise models.ModelNotAvailableError(
            f"{Path(path).name} holds a {kind!r} model; single-file checkpoints of Stable Diffusion 1.x "
            f"and SDXL base are supported"
        )
    return ARCHITECTURES[kind][0]


def load_single_file(path: str | Path, controlnet: str | None = None) -> FineControlPipeline:
    """A FineControlPipeline of the checkpoint at `path` (SD1.x or SDXL) and `controlnet` (default:
    the architecture's OpenPose ControlNet)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    if not path.is_file():
        raise models.ModelNotAvailableError(f"checkpoint file {path} does not exist")
    if path.suffix != ".safetensors":
        raise models.ModelNotAvailableError(
            f"{path.name}: only .safetensors checkpoints are loaded (a pickled .ckpt can run code when "
            f"loaded); use the model's .safetensors release"
        )
    architecture = checkpoint_architecture(path)
    sdxl = architecture == "sdxl"
    config = reference_configs(dict(ARCHITECTURES.values())[architecture])
    loader = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    loaded = loader.from_single_file(str(path), config=config, local_files_only=True, **extra)
    controlnet = controlnet or (models.DEFAULT_SDXL_CONTROLNET if sdxl else models.DEFAULT_CONTROLNET)
    parts = {name: getattr(loaded, name) for name in ("vae", "text_encoder", "tokenizer", "unet")}
    if sdxl:
        parts |= {"text_encoder_2": loaded.text_encoder_2, "tokenizer_2": loaded.tokenizer_2}
    return FineControlPipeline(
        **parts,
        controlnet=models.load_controlnet(controlnet),
        scheduler=DDIMScheduler.from_config(loaded.scheduler.config),
        info=models.default_info(sdxl, controlnet),
        force_zeros_for_empty_prompt=loaded.config.get("force_zeros_for_empty_prompt", True),
    )


def reference_configs(repo: str) -> str:
    """Where the reference model's configs and tokenizers are: `models/<name>` if that folder exists,
    else the hub id (from the hub cache, or the hub when reachable: downloaded there and cached)."""
    local = LOCAL_MODELS / repo.split("/")[-1]
    if local.is_dir():
        return str(local)
    from diffusers import DiffusionPipeline

    try:
        DiffusionPipeline.load_config(repo, local_files_only=True)
        cached = True
    except (OSError, ValueError):
        cached = False
    if not cached and models._hub_unavailable():
        raise models.ModelNotAvailableError(
            f"a single-file checkpoint needs the configs and tokenizers of {repo}, which are not in "
            f"{local} nor in the local cache, and the Hugging Face hub cannot be reached. On a machine "
            f'with internet run `hf download {repo} --include "*.json" "*.txt" --local-dir {local}` '
            f"(a few MB) and copy the folder here."
        )
    if not cached:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, allow_patterns=["*.json", "*.txt"])
    return repo
