"""Loading models: `tiny` and `sd15-random` (random weights built offline), hub ids or local folders.

A model is a FineControlPipeline: SD1.5-style components (VAE, CLIP text encoder and tokenizer,
UNet, scheduler) plus an OpenPose ControlNet.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from finecontrol.model_info import MODEL_INFO, ModelInfo
from finecontrol.paths import ASSETS
from finecontrol.pipeline import FineControlPipeline

TINY_TOKENIZER = ASSETS / "tokenizers" / "tiny"
SD15_CONFIGS = ASSETS / "configs" / "sd15"
TOY_MODEL = ASSETS / "models" / "toyworld"
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_openpose"
HUB_HOST = "huggingface.co"
RANDOM_WEIGHT_MODELS = ("tiny", "sd15-random")  # their images are noise: for plumbing, cost and shapes
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # as the CLIs spell them
TINY_RESOLUTION = 128  # pixels; 64x64 latents would make each CPU step ~10x slower

# Words the tiny model's tokenizer keeps whole: those of the example scenes and the default
# prompts. Anything else still tokenizes, letter by letter.
TINY_WORDS = sorted(
    set(
        """
a an and the in on at of with by best quality lowres bad anatomy hands cropped worst
person man woman child boy girl people astronaut samurai knight chef dancer robot wizard
firefighter doctor skater surfer runner monk pirate clown student teacher
red blue green yellow black white orange purple pink grey brown golden silver
forest beach street park city snow desert space stage kitchen garden mountain night
standing walking sitting jumping dancing running waving raised arms suit armor dress coat
""".split()
    )
)


class ModelNotAvailableError(RuntimeError):
    """A model that cannot be loaded here, with what to download and where to put it."""


def toy_model_available() -> bool:
    """True when the toy model's folder (shipped in assets/, or trained there) is complete enough to load."""
    return (TOY_MODEL / MODEL_INFO).is_file()


def offline_default() -> str:
    """The model to use without a GPU: the shipped toy model, else the random tiny one."""
    return "toy" if toy_model_available() else "tiny"


def load_model(
    name: str = "tiny",
    controlnet: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> FineControlPipeline:
    """Load a model by name (`toy`, `tiny`, `sd15`, `sd15-random`), hub id or local folder.

    `name` is the base model (a diffusers Stable Diffusion 1.x folder or hub id); `controlnet`
    the OpenPose ControlNet, by default the base folder's `controlnet/` subfolder if it has one,
    else `lllyasviel/control_v11p_sd15_openpose`. On CUDA the weights are fp16 unless `dtype`
    says otherwise; on CPU fp32.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if name == "toy":
        if not toy_model_available():
            raise ModelNotAvailableError(
                f"the toy model is not in {TOY_MODEL}: train it with "
                f"`python -m finecontrol.toyworld train --out {TOY_MODEL}`"
            )
        name = str(TOY_MODEL)
    if name == "tiny":
        pipe = tiny_pipeline()
    elif name == "sd15-random":
        pipe = sd15_random_pipeline()
    else:
        base = DEFAULT_BASE if name == "sd15" else name
        if controlnet is None:
            local_cn = Path(base) / "controlnet"
            controlnet = str(local_cn) if local_cn.is_dir() else DEFAULT_CONTROLNET
        pipe = _load_pretrained(base, controlnet)
    return pipe.to(device, dtype)


def _load_pretrained(base: str, controlnet: str) -> FineControlPipeline:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    info = ModelInfo.read(base) if Path(base).is_dir() else None  # a bad finecontrol.json fails before any weight loads
    parts = {
        "tokenizer": (CLIPTokenizer, base, "tokenizer"),
        "text_encoder": (CLIPTextModel, base, "text_encoder"),
        "vae": (AutoencoderKL, base, "vae"),
        "unet": (UNet2DConditionModel, base, "unet"),
        "scheduler": (DDIMScheduler, base, "scheduler"),
        "controlnet": (ControlNetModel, controlnet, None),
    }
    loaded = {key: _from_pretrained(cls, source, subfolder) for key, (cls, source, subfolder) in parts.items()}
    pipe = FineControlPipeline(**loaded, info=info)
    pipe.folder = Path(base).resolve() if Path(base).is_dir() else None
    return pipe


def _from_pretrained(cls, source: str, subfolder: str | None):
    """Load from a local folder, the local hub cache, or the hub when it is reachable."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if Path(source).is_dir():
        if subfolder and not (Path(source) / subfolder).is_dir():
            raise ModelNotAvailableError(f"{source} has no '{subfolder}' folder: expected a diffusers model folder")
        return cls.from_pretrained(source, **kwargs)
    if _looks_like_path(source):
        raise ModelNotAvailableError(f"model folder {source} does not exist")
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if _hub_unavailable():
        raise ModelNotAvailableError(
            f"{source} is not in the local cache and the Hugging Face hub cannot be reached. "
            f"On a machine with internet run `hf download {source} --local-dir models/{source.split('/')[-1]}`, "
            f"copy the folder here and pass it as the model (e.g. --model models/... --controlnet models/...)."
        )
    return cls.from_pretrained(source, **kwargs)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _hub_unavailable() -> bool:
    """True when downloads are switched off (HF_HUB_OFFLINE) or the hub does not answer."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _hub_reachable()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check so that an offline machine fails in seconds instead of hanging."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


DEFAULT_ANNOTATORS = "lllyasviel/Annotators"


def load_pose_detector(source: str = DEFAULT_ANNOTATORS):
    """controlnet_aux's OpenPose detector from a local folder (body_pose_model.pth,
    hand_pose_model.pth, facenet.pth) or the hub; returns `detect(rgb_array) -> people`, each
    person a controlnet_aux PoseResult: the body's 18 keypoints (normalised x, y; None when missing)
    and the hands and face it found (None when not found; a missing point at negative x or y).
    Offline without the files it fails fast."""
    from controlnet_aux import OpenposeDetector

    if not Path(source).is_dir():
        try:
            detector = OpenposeDetector.from_pretrained(source, local_files_only=True)
        except Exception as err:
            if _hub_unavailable():
                raise ModelNotAvailableError(
                    f"the OpenPose detector weights ({source}) are not here and the hub cannot be reached; "
                    f"on a machine with internet run `hf download {source} body_pose_model.pth hand_pose_model.pth "
                    f"facenet.pth --local-dir annotators`, copy the folder here and start the app with "
                    f"--annotators annotators"
                ) from err
            detector = OpenposeDetector.from_pretrained(source)
    else:
        detector = OpenposeDetector.from_pretrained(source)

    def detect(image):
        return detector.detect_poses(image, include_hand=True, include_face=True)

    return detect


def tiny_tokenizer():
    """The tiny model's tokenizer, from the files shipped in assets."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TINY_TOKENIZER), model_max_length=77)


def tiny_pipeline(seed: int = 0) -> FineControlPipeline:
    """An SD1.5-shaped model with random weights (4 resolution levels, 12 ControlNet residuals).

    Small enough for CPU tests: it shows the plumbing, not meaningful pictures. Cross-attention
    replaces self-attention in the transformer blocks to keep 64x64 latents cheap.
    """
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(32, 64, 128, 128),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
            only_cross_attention=True,
        )
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 64))
        # A trained ControlNet's zero convolutions are no longer zero; random ones make the
        # residuals (and so every test of their composition) non-trivial.
        for conv in [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]:
            conv.reset_parameters()
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return FineControlPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        info=ModelInfo(resolution=TINY_RESOLUTION),
    )


def sd15_random_pipeline(seed: int = 0) -> FineControlPipeline:
    """Stable Diffusion 1.5 and ControlNet v1.1 OpenPose, their exact architectures (built from
    the published configs in assets/configs/sd15) with random weights: for cost, memory and shape
    checks without a download. Its images are noise. The tokenizer is the tiny model's (CLIP's
    vocabulary cannot be downloaded here); its ids index the same 49408-row embedding."""
    import json

    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def config(name: str) -> dict:
        return json.loads((SD15_CONFIGS / f"{name}.json").read_text())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {
            "vae": AutoencoderKL.from_config(config("vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config("text_encoder"))),
            "unet": UNet2DConditionModel.from_config(config("unet")),
            "controlnet": ControlNetModel.from_config(config("controlnet")),
        }
    return FineControlPipeline(
        **parts,
        tokenizer=tiny_tokenizer(),
        scheduler=DDIMScheduler.from_config(config("scheduler")),
        info=ModelInfo(resolution=512),
    )
