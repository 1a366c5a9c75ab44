"""Loading models: `tiny`, `tiny-sdxl`, `sd15-random` and `sdxl-random` (random weights built offline), `sd15`
and `sdxl` (the real ones, by hub id), other hub ids, local folders and single-file checkpoints.

A model is a FineControlPipeline: Stable Diffusion 1.x components (VAE, CLIP text encoder and
tokenizer, UNet, scheduler), or SDXL's (a second text encoder and tokenizer), plus an OpenPose
ControlNet for that architecture.
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
SDXL_CONFIGS = ASSETS / "configs" / "sdxl"
TOY_MODEL = ASSETS / "models" / "toyworld"
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_openpose"
DEFAULT_SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
# xinsir's rather than thibaud's SDXL OpenPose ControlNet: Apache-2.0 (thibaud's points to
# OpenPose's non-commercial licence), one 2.5 GB safetensors file in diffusers layout (thibaud's
# diffusers weights are a 5 GB pickle), and a better pose score on its card's benchmark (mAP
# 0.357 vs 0.209, self-reported). It was trained on thicker strokes: ModelInfo.stroke_scaling.
DEFAULT_SDXL_CONTROLNET = "xinsir/controlnet-openpose-sdxl-1.0"
SDXL_RESOLUTION = 1024
HUB_HOST = "huggingface.co"
RANDOM_WEIGHT_MODELS = (
    "tiny",
    "tiny-sdxl",
    "sd15-random",
    "sdxl-random",
)  # their images are noise: for plumbing, cost and shapes
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
    """Load a model by name (`toy`, `tiny`, `tiny-sdxl`, `sd15`, `sd15-random`, `sdxl`, `sdxl-random`), hub id,
    local folder or single-file checkpoint (`.safetensors`).

    `name` is the base model (a diffusers Stable Diffusion 1.x or SDXL folder or hub id, told
    apart by the UNet's config); `controlnet` the OpenPose ControlNet, by default the base folder's
    `controlnet/` subfolder if it has one, else DEFAULT_CONTROLNET (SD1.x) or
    DEFAULT_SDXL_CONTROLNET (SDXL). On CUDA the weights are fp16 unless `dtype` says otherwise
    (an SDXL VAE stays fp32: FineControlPipeline.to); on CPU fp32.
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
    elif name == "tiny-sdxl":
        pipe = tiny_sdxl_pipeline()
    elif name == "sd15-random":
        pipe = sd15_random_pipeline()
    elif name == "sdxl-random":
        pipe = sdxl_random_pipeline()
    elif name.endswith(SINGLE_FILE_SUFFIXES):
        from finecontrol.single_file import load_single_file

        pipe = load_single_file(name, controlnet)
    else:
        base = {"sd15": DEFAULT_BASE, "sdxl": DEFAULT_SDXL_BASE}.get(name, name)
        try:
            pipe = _load_pretrained(base, controlnet)
        except ModelNotAvailableError as err:
            if name not in ("sd15", "sdxl") or controlnet is not None:
                raise
            pair = DEFAULT_CONTROLNET if name == "sd15" else DEFAULT_SDXL_CONTROLNET
            raise ModelNotAvailableError(
                f"{err} It needs its OpenPose ControlNet too: `hf download {pair} --local-dir "
                f"models/{pair.split('/')[-1]}`, then --model models/{base.split('/')[-1]} "
                f"--controlnet models/{pair.split('/')[-1]}."
            ) from err
    return pipe.to(device, dtype)


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def default_controlnet(base: str, sdxl: bool) -> str:
    """The base folder's own `controlnet/` if it has one, else the default OpenPose ControlNet of its architecture."""
    local = Path(base) / "controlnet"
    if local.is_dir():
        return str(local)
    return DEFAULT_SDXL_CONTROLNET if sdxl else DEFAULT_CONTROLNET


def default_info(sdxl: bool, controlnet: str) -> ModelInfo | None:
    """What a model without a finecontrol.json is taken to declare: SDXL is generated at its
    native 1024 px, with the strokes its default ControlNet was trained on; SD1.x at the canvas size."""
    if not sdxl:
        return None
    return ModelInfo(
        resolution=SDXL_RESOLUTION, stroke_scaling="xinsir" if controlnet == DEFAULT_SDXL_CONTROLNET else "fixed"
    )


def _load_pretrained(base: str, controlnet: str | None) -> FineControlPipeline:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    local = Path(base).is_dir()
    info = ModelInfo.read(base) if local and (Path(base) / MODEL_INFO).is_file() else None  # fails before any weights
    sdxl = (
        _from_pretrained(UNet2DConditionModel, base, "unet", config_only=True).get("addition_embed_type") == "text_time"
    )
    controlnet = controlnet or default_controlnet(base, sdxl)
    parts = {
        "tokenizer": (CLIPTokenizer, base, "tokenizer"),
        "text_encoder": (CLIPTextModel, base, "text_encoder"),
        "vae": (AutoencoderKL, base, "vae"),
        "unet": (UNet2DConditionModel, base, "unet"),
        "scheduler": (DDIMScheduler, base, "scheduler"),
        "controlnet": (ControlNetModel, controlnet, None),
    }
    if sdxl:
        parts["tokenizer_2"] = (CLIPTokenizer, base, "tokenizer_2")
        parts["text_encoder_2"] = (CLIPTextModelWithProjection, base, "text_encoder_2")
    loaded = {key: _from_pretrained(cls, source, subfolder) for key, (cls, source, subfolder) in parts.items()}
    pipe = FineControlPipeline(
        **loaded,
        info=info or default_info(sdxl, controlnet),
        force_zeros_for_empty_prompt=_pipeline_config(base).get("force_zeros_for_empty_prompt", True),
    )
    pipe.folder = Path(base).resolve() if local else None
    return pipe


def load_controlnet(source: str):
    """An OpenPose ControlNet from a local folder, the hub cache or the hub (fails fast offline)."""
    from diffusers import ControlNetModel

    return _from_pretrained(ControlNetModel, source, None)


def _pipeline_config(base: str) -> dict:
    """The base's model_index.json (a local folder's, or the hub cache's), {} when there is none."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(base, local_files_only=True))
    except (OSError, ValueError):
        return {}


def _from_pretrained(cls, source: str, subfolder: str | None, config_only: bool = False):
    """Load from a local folder, the local hub cache, or the hub when it is reachable
    (`config_only`: only the component's config, as a dict)."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    load = cls.load_config if config_only else cls.from_pretrained
    if Path(source).is_dir():
        if subfolder and not (Path(source) / subfolder).is_dir():
            raise ModelNotAvailableError(f"{source} has no '{subfolder}' folder: expected a diffusers model folder")
        return load(source, **kwargs)
    if _looks_like_path(source):
        raise ModelNotAvailableError(f"model folder {source} does not exist")
    try:
        return load(source, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if _hub_unavailable():
        raise ModelNotAvailableError(
            f"{source} is not in the local cache and the Hugging Face hub cannot be reached. "
            f"On a machine with internet run `hf download {source} --local-dir models/{source.split('/')[-1]}`, "
            f"copy the folder here and pass it as the model (e.g. --model models/... --controlnet models/...)."
        )
    return load(source, **kwargs)


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


def load_pose_detector(source: str = DEFAULT_ANNOTATORS, hands_and_faces: bool = True, device: str | None = None):
    """controlnet_aux's OpenPose detector from a local folder (body_pose_model.pth,
    hand_pose_model.pth, facenet.pth) or the hub; returns `detect(rgb_array) -> people`, each
    person a controlnet_aux PoseResult: the body's 18 keypoints (normalised x, y; None when missing)
    and the hands and face it found (None when not found; a missing point at negative x or y;
    not looked for without `hands_and_faces`). On `device` if given. Offline without the files it
    fails fast."""
    from controlnet_aux import OpenposeDetector

    if not Path(source).is_dir():
        try:
            detector = OpenposeDetector.from_pretrained(source, local_files_only=True)
        except Exception as err:
            if _hub_unavailable():
                raise ModelNotAvailableError(
                    f"the OpenPose detector weights ({source}) are not here and the hub cannot be reached; "
                    f"on a machine with internet run `hf download {source} body_pose_model.pth hand_pose_model.pth "
                    f"facenet.pth --local-dir annotators`, copy the folder here and pass it with "
                    f"--annotators annotators"
                ) from err
            detector = OpenposeDetector.from_pretrained(source)
    else:
        detector = OpenposeDetector.from_pretrained(source)

    if device is not None:
        detector.to(device)

    def detect(image):
        return detector.detect_poses(image, include_hand=hands_and_faces, include_face=hands_and_faces)

    return detect


def tiny_tokenizer():
    """The tiny model's tokenizer, from the files shipped in assets."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TINY_TOKENIZER), model_max_length=77)


def small_text_config(tokenizer, hidden: int, layers: int, max_positions: int = 77, **extra):
    """The config of a small CLIP text encoder for `tokenizer`: `hidden` wide with a feed-forward
    twice that, 4 heads, `layers` deep, `max_positions` tokens; `extra`: other config fields
    (e.g. projection_dim)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_pipeline(seed: int = 0) -> FineControlPipeline:
    """An SD1.5-shaped model with random weights (4 resolution levels, 12 ControlNet residuals).

    Small enough for CPU tests: it shows the plumbing, not meaningful pictures. Cross-attention
    replaces self-attention in the transformer blocks to keep 64x64 latents cheap.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(small_text_config(tokenizer, hidden=32, layers=2))
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
        controlnet = _tiny_controlnet(unet)
        vae = _tiny_vae(sample_size=512)
    scheduler = _tiny_scheduler()
    return FineControlPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        info=ModelInfo(resolution=TINY_RESOLUTION),
    )


def tiny_sdxl_pipeline(seed: int = 0) -> FineControlPipeline:
    """An SDXL-shaped model with random weights, for CPU tests of the SDXL path.

    - Two text encoders of different widths. The second has a projection, whose pooled output
      conditions the UNet with the size time ids through `text_time`, and 10 layers (diffusers
      recognises an SDXL single file by its 10th layer).
    - A UNet of 3 resolution levels laid out as SDXL's: a plain down block, then two
      cross-attention ones with 2 layers each, so 9 ControlNet residuals, of which the first up
      block takes 3.
    - An SDXL-style ControlNet and a VAE marked `force_upcast`, as SDXL's is.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    time_embed_dim, pooled_dim = 8, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # more than 2 layers each: SDXL reads the penultimate one
        text_encoder = CLIPTextModel(small_text_config(tokenizer, hidden=32, layers=3, projection_dim=pooled_dim))
        text_encoder_2 = CLIPTextModelWithProjection(
            small_text_config(tokenizer, hidden=48, layers=10, projection_dim=pooled_dim)
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 8),
            use_linear_projection=True,
            cross_attention_dim=80,  # the two encoders' hidden sizes, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim,
            norm_num_groups=16,
        )
        controlnet = _tiny_controlnet(unet)
        vae = _tiny_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
    scheduler = _tiny_scheduler(timestep_spacing="leading")
    return FineControlPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        info=ModelInfo(resolution=TINY_RESOLUTION),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_tokenizer(),
    )


def _tiny_controlnet(unet):
    """A ControlNet of `unet`'s shape whose zero convolutions are random: a trained ControlNet's
    are no longer zero, and random ones make the residuals (and every test of their composition)
    non-trivial."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 64))
    for conv in [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]:
        conv.reset_parameters()
    return controlnet


def _tiny_vae(**config):
    """A 4-level VAE (8x downsampling, 4 latent channels) with few channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        **config,
    )


def _tiny_scheduler(**config):
    """Stable Diffusion's noise schedule (scaled linear betas 0.00085..0.012) in a DDIM scheduler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        **config,
    )


def sd15_random_pipeline(seed: int = 0) -> FineControlPipeline:
    """Stable Diffusion 1.5 and ControlNet v1.1 OpenPose, their exact architectures (built from
    the published configs in assets/configs/sd15) with random weights: for cost, memory and shape
    checks without a download. Its images are noise. The tokenizer is the tiny model's (CLIP's
    vocabulary cannot be downloaded here); its ids index the same 49408-row embedding."""
    return _random_from_configs(SD15_CONFIGS, seed, ModelInfo(resolution=512))


def sdxl_random_pipeline(seed: int = 0) -> FineControlPipeline:
    """SDXL base 1.0 with an SDXL OpenPose ControlNet (xinsir's architecture), built from the
    published configs in assets/configs/sdxl with random weights, drawn on the current default
    device (`with torch.device("cuda"):` builds it on the GPU): for cost and memory at 1024 px
    without a download. About 4.7 billion parameters: 19 GB in float32."""
    return _random_from_configs(SDXL_CONFIGS, seed, ModelInfo(resolution=SDXL_RESOLUTION, stroke_scaling="xinsir"))


def _random_from_configs(folder: Path, seed: int, info: ModelInfo) -> FineControlPipeline:
    import json

    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(name: str) -> dict:
        return json.loads((folder / f"{name}.json").read_text())

    sdxl = (folder / "text_encoder_2.json").is_file()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {
            "vae": AutoencoderKL.from_config(config("vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config("text_encoder"))),
            "unet": UNet2DConditionModel.from_config(config("unet")),
            "controlnet": ControlNetModel.from_config(config("controlnet")),
        }
        if sdxl:
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2")))
            parts["tokenizer_2"] = tiny_tokenizer()
    return FineControlPipeline(
        **parts, tokenizer=tiny_tokenizer(), scheduler=DDIMScheduler.from_config(config("scheduler")), info=info
    )
