"""FineControlPipeline: per-person prompts and skeletons -> one image (FineControlNet, h-control).

It runs Stable Diffusion 1.x and SDXL models (SDXL: two text encoders, a pooled prompt embedding
and size "time ids" per branch, passed to the ControlNet and the UNet as diffusers' SDXL pipelines do).

One denoising loop serves the paper's method, its every-layer variant and the two baselines, so
one seed gives comparable images:
- `finecontrol`: one ControlNet+UNet branch per person (own prompt, own skeleton) on the same
  latent; high-resolution ControlNet residuals and the feature entering `conv_norm_out` are
  composed with the person masks (docs/method.md, "One denoising step"; the paper's h-control).
- `finecontrol-all`: as `finecontrol`, and the output of every transformer block of the UNet is
  composed too (the paper's Figure 4, the original code's h-all).
- `controlnet`: one branch, one global prompt, all skeletons in one control image.
- `multicontrolnet`: ControlNet once per person, residuals summed, one UNet pass with the global prompt.
Every step makes one batched ControlNet call and one batched UNet call for all people and both
classifier-free-guidance halves (one half when guidance_scale is 1: the unconditional half would
not change eps). `max_batch` splits those calls into chunks when a batch would not fit in memory;
the result is the same. Each person's LoRAs (and the global ones) act on that person's branch
only, inside the same batched UNet call (finecontrol/lora_mixing.py); the ControlNet has none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finecontrol.fusion import FeatureComposer, MaskPyramid, compose_residuals, residual_split, sum_over_people
from finecontrol.lora_mixing import LoraMix
from finecontrol.model_info import ModelInfo
from finecontrol.pose import drawn_parts
from finecontrol.render import (
    hard_masks,
    harmony_steps,
    people_off_canvas,
    scene_maps,
    soft_masks,
    stroke_ratio,
    uses_soft_masks,
)
from finecontrol.scene import LoraRef, Scene, SceneError, parse_loras
from finecontrol.settings import COMPOSING_METHODS, Settings

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each step with (step index from 0, total steps, current x0 estimate latents)."""

ZEROS = ("", "zeros")  # the prompt cache's key of SDXL's all-zero "no negative prompt"
PROMPT_CACHE_SIZE = 128  # distinct texts whose embeddings are kept (about 0.1 MB each for SD1.5 in fp16)
# Bytes of activations one ControlNet + UNet branch (one batch item) needs at inference, per latent
# pixel and per byte of the compute dtype: SD1.5 at 512 px in fp32 on CPU peaks 250 MiB above the
# weights per item (16,000), plus half again for GPU workspaces and fragmentation. It sets the chunk
# size on CUDA before any work starts; a step that still runs out of memory is retried in halves.
ACTIVATION_BYTES_PER_LATENT_PIXEL = 24_000


class NotEnoughMemoryError(RuntimeError):
    """The generation cannot fit in the device's memory even one branch at a time."""


class NonFiniteError(RuntimeError):
    """The latents or the decoded image became NaN or infinite: the model's weights hold such
    values, or a computation overflowed (fp16). Raised at the first step where it shows, rather than
    returning a black image."""


@dataclass
class Prompts:
    """The exact texts the model is given."""

    people: list[str]
    people_negative: list[str]
    global_prompt: str
    global_negative: str


@dataclass
class Conditioning:
    """The text conditioning of a batch of branches, one row per batch item.

    hidden: (B, 77, D) per-token embeddings (SDXL: both text encoders' penultimate layers, concatenated).
    pooled: (B, P) the pooled embedding of SDXL's second text encoder; None for SD1.x.
    time_ids: (B, 6) SDXL's size conditioning (original height, width, crop top, left, target
        height, width); None for SD1.x.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __getitem__(self, rows) -> Conditioning:
        return Conditioning(
            *(None if part is None else part[rows] for part in (self.hidden, self.pooled, self.time_ids))
        )

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def kwargs(self) -> dict:
        """The keyword arguments a diffusers UNet or ControlNet forward takes for this conditioning."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden}
        return {
            "encoder_hidden_states": self.hidden,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids},
        }

    def with_size(self, height: int, width: int) -> Conditioning:
        """SDXL: the time ids of an image generated whole at height x width (no crop), as
        diffusers' SDXL pipelines build them by default; SD1.x: unchanged."""
        if self.pooled is None:
            return self
        ids = torch.tensor([height, width, 0, 0, height, width], device=self.hidden.device, dtype=self.hidden.dtype)
        return Conditioning(self.hidden, self.pooled, ids.expand(len(self), -1))


def join_prompt(prompt: str, setting: str, suffix: str) -> str:
    """`"{prompt} {setting}, {suffix}"`, leaving out empty parts."""
    text = " ".join(part for part in (prompt.strip(), setting.strip()) if part)
    return ", ".join(part for part in (text, suffix.strip()) if part)


def build_prompts(scene: Scene, quality_suffix: str) -> Prompts:
    """Person prompts, their negatives, and the baselines' single global prompt (docs/method.md, "Prompts")."""
    own = [p.prompt for p in scene.people]
    return Prompts(
        people=[join_prompt(text, scene.setting, quality_suffix) for text in own],
        people_negative=[
            scene.negative_prompt if p.negative_prompt is None else p.negative_prompt for p in scene.people
        ],
        global_prompt=join_prompt(" and ".join(t.strip() for t in own if t.strip()), scene.setting, quality_suffix),
        global_negative=scene.negative_prompt,
    )


@dataclass
class Generation:
    """An image and what explains it."""

    image: Image.Image | None  # None when generated with decode=False
    latents: torch.Tensor
    control_image: np.ndarray
    person_control_images: list[np.ndarray]
    raw_masks: np.ndarray
    early_masks: np.ndarray
    late_masks: np.ndarray
    prompts: Prompts
    scene: Scene
    settings: Settings
    loras: list[list[LoraRef]] = field(default_factory=list)  # per person: the global LoRAs, then their own


@dataclass
class _Branches:
    """The batched inputs of one method, built once per generation (negative half first)."""

    people: int  # ControlNet copies per half
    halves: int  # 2: unconditional then conditional; 1: conditional only (guidance_scale 1)
    controlnet_context: Conditioning
    control_images: torch.Tensor
    control_scales: torch.Tensor
    unet_context: Conditioning
    masks: list[MaskPyramid] = field(default_factory=list)  # [early, late], finecontrol only
    loras: LoraMix | None = None  # each UNet batch row's LoRA scales; None: no LoRA acts


class FineControlPipeline:
    """Stable Diffusion 1.x or SDXL + an OpenPose ControlNet, run per person and composed with masks."""

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        controlnet,
        scheduler,
        info: ModelInfo | None = None,
        text_encoder_2=None,
        tokenizer_2=None,
        force_zeros_for_empty_prompt: bool = True,
    ):
        """diffusers components plus `info`, what the model folder's `finecontrol.json` declares
        (native resolution, control-image style, vocabulary, default settings). SDXL models (a UNet
        with `addition_embed_type="text_time"`) also take `text_encoder_2` (CLIPTextModelWithProjection)
        and `tokenizer_2`; `force_zeros_for_empty_prompt` (SDXL only, as in its model_index.json):
        an empty negative prompt is all-zero embeddings rather than the encoded empty text."""
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.unet, self.controlnet, self.scheduler = unet, controlnet, scheduler
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.is_sdxl = unet.config.get("addition_embed_type") == "text_time"
        if self.is_sdxl != (text_encoder_2 is not None and tokenizer_2 is not None):
            raise ValueError(
                "an SDXL UNet needs text_encoder_2 and tokenizer_2, and only an SDXL UNet takes them"
                if self.is_sdxl
                else "text_encoder_2 and tokenizer_2 are for SDXL UNets (addition_embed_type 'text_time')"
            )
        self.zero_empty_negative = self.is_sdxl and force_zeros_for_empty_prompt
        self.info = info or ModelInfo()
        self.resolution = self.info.resolution
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.num_residuals = len(controlnet.controlnet_down_blocks)
        expected = 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks)
        if self.num_residuals != expected:
            raise ValueError(f"ControlNet gives {self.num_residuals} residuals but the UNet takes {expected}")
        self.split = residual_split(self.num_residuals, unet)
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError("only epsilon-prediction models are supported")
        for module in self.modules():
            module.eval().requires_grad_(False)
        self.max_batch: int | None = None
        """Most batch items per ControlNet/UNet call; None: all at once on CPU, what fits on CUDA."""
        self._prompt_cache: OrderedDict[str | tuple, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.folder: Path | None = None
        """The model's local folder, when loaded from one (its `loras/` folder is searched for LoRAs)."""
        self.loras: dict = {}
        """LoRAs loaded as adapters on the UNet and text encoder: source -> finecontrol.loras.LoadedLora."""

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def modules(self) -> list[torch.nn.Module]:
        """The networks: VAE, text encoder(s), UNet, ControlNet."""
        encoders = [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])
        return [self.vae, *encoders, self.unet, self.controlnet]

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> FineControlPipeline:
        """Move to `device` and cast to `dtype`, except a VAE whose config says `force_upcast`
        (SDXL's, which overflows in fp16): it stays in float32 and decodes in float32."""
        for module in self.modules():
            module.to(device)
            wanted = torch.float32 if module is self.vae and self._vae_needs_fp32(dtype) else dtype
            if wanted is not None and wanted != module.dtype:
                module.to(wanted)
        self.clear_caches()
        return self

    def _vae_needs_fp32(self, dtype: torch.dtype | None) -> bool:
        return dtype in (torch.float16, torch.bfloat16) and bool(self.vae.config.get("force_upcast", False))

    def clear_caches(self) -> None:
        """Forget cached prompt embeddings; call after changing the text encoder's weights."""
        self._prompt_cache.clear()

    def save_pretrained(self, folder: str | Path) -> None:
        """Write every component in diffusers layout (plus `controlnet/` and `finecontrol.json`),
        a folder that `load_model(folder)` reads back."""
        folder = Path(folder)
        names = ["vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler"]
        if self.is_sdxl:
            names += ["text_encoder_2", "tokenizer_2"]
        for name in names:
            getattr(self, name).save_pretrained(folder / name)
        self.info.write(folder)

    def default_settings(self) -> Settings:
        """The paper's defaults, with what this model declares in `info.defaults` applied."""
        return self.info.default_settings()

    def people_off_canvas(self, scene: Scene) -> list[int]:
        """Indices of the people of whom nothing shows on the canvas, drawn at this model's stroke size."""
        poses = [p.keypoints for p in scene.people]
        return people_off_canvas(
            poses, (scene.width, scene.height), max(self.stroke_sizes((scene.width, scene.height)))
        )

    def stroke_sizes(self, size: tuple[int, int]) -> tuple[int, int]:
        """(stick width, joint radius) of control images drawn at `size` = (W, H), as the model declares."""
        ratio = stroke_ratio(*size) if self.info.stroke_scaling == "xinsir" else 1
        return self.info.stick_width * ratio, self.info.joint_radius * ratio

    def generation_size(self, scene: Scene, settings: Settings) -> tuple[int, int]:
        """(width, height) in pixels: the settings' override, else the scene's canvas scaled so
        its longer side is the model's native resolution (sides rounded to multiples of 8), else
        the canvas itself."""
        if settings.width is not None:
            return settings.width, settings.height
        if self.resolution is None:
            return scene.width, scene.height
        scale = self.resolution / max(scene.width, scene.height)
        return tuple(max(8, round(side * scale / 8) * 8) for side in (scene.width, scene.height))

    def make_scheduler(self, name: str):
        """A fresh scheduler. `ddim`: diffusers' "leading" grid with offset 1, the original
        sampler's grid whenever the steps divide 1000 (20 steps: 951, 901, ..., 1);
        `ddim-original`: the original sampler's grid at any number of steps (30 -> 31 steps)."""
        from diffusers import (
            DDIMScheduler,
            DPMSolverMultistepScheduler,
            LCMScheduler,
            TCDScheduler,
            UniPCMultistepScheduler,
        )

        from finecontrol.schedulers import original_grid_ddim

        config = self.scheduler.config
        if name == "ddim":
            return DDIMScheduler.from_config(config, timestep_spacing="leading", steps_offset=1)
        if name == "ddim-original":
            return original_grid_ddim(config)
        if name == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        if name == "unipc":
            return UniPCMultistepScheduler.from_config(config)
        if name == "lcm":
            return LCMScheduler.from_config(config)
        if name == "tcd":
            return TCDScheduler.from_config(config)
        raise ValueError(f"unknown scheduler {name!r}")

    def timestep_scheduler(self, settings: Settings):
        """The settings' scheduler with its timesteps set: `len(.timesteps)` steps will run."""
        scheduler = self.make_scheduler(settings.scheduler)
        scheduler.set_timesteps(settings.steps, device=self.device)
        return scheduler

    def encode_prompts(
        self, prompts: list[str], loras: list[tuple] | None = None, negative: bool | list[bool] = False
    ) -> Conditioning:
        """Text embeddings of `prompts` (no time ids yet: `Conditioning.with_size`). SD1.x: CLIP's
        last layer, (len(prompts), 77, D); SDXL: both encoders' penultimate layers concatenated and
        the second encoder's pooled embedding, as diffusers' SDXL pipelines encode them.
        `loras[i]`: the text-encoder LoRAs active for prompt i, ((adapter, scale), ...) (none by
        default). `negative`: whether the texts (or each text) are negative prompts: on SDXL with
        `force_zeros_for_empty_prompt`, an empty negative prompt is all zeros. Each distinct text (with its
        LoRAs) is encoded once and kept for later calls (the last PROMPT_CACHE_SIZE), so
        re-generating with the same prompts runs no text encoder."""
        cache = self._prompt_cache
        negatives = negative if isinstance(negative, list) else [negative] * len(prompts)
        pairs = list(zip(prompts, loras or [()] * len(prompts)))
        keys = [
            ZEROS if self.zero_empty_negative and neg and not text.strip() else text if not own else (text, own)
            for (text, own), neg in zip(pairs, negatives)
        ]  # a text alone without LoRAs
        missing = {key: pair for key, pair in zip(keys, pairs) if key not in cache and key != ZEROS}
        if ZEROS in keys and ZEROS not in cache:
            cache[ZEROS] = self._zero_embeddings()
        for own in dict.fromkeys(own for _, own in missing.values()):  # one text-encoder call per LoRA set
            group = [key for key, (_, other) in missing.items() if other == own]
            texts = [missing[key][0] for key in group]
            mix = LoraMix(self.text_encoder, {name: [scale] * len(texts) for name, scale in own}) if own else None
            with mix or nullcontext():
                hidden, pooled = self._encode_texts(texts)
            cache.update((key, (hidden[i], None if pooled is None else pooled[i])) for i, key in enumerate(group))
        for key in keys:
            cache.move_to_end(key)
        rows = [cache[key] for key in keys]
        result = Conditioning(
            torch.stack([h for h, _ in rows]), None if rows[0][1] is None else torch.stack([p for _, p in rows])
        )
        while len(cache) > PROMPT_CACHE_SIZE:
            cache.popitem(last=False)
        return result

    def _zero_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's "no negative prompt": (77, D) and (P,) zeros."""
        width = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
        hidden = torch.zeros(self.tokenizer.model_max_length, width, device=self.device, dtype=self.dtype)
        return hidden, torch.zeros(self.text_encoder_2.config.projection_dim, device=self.device, dtype=self.dtype)

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden, pooled) of `texts` through the text encoder(s), in the pipeline's dtype."""
        if not self.is_sdxl:
            return self.text_encoder(self._token_ids(self.tokenizer, texts))[0].to(self.dtype), None
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(self._token_ids(tokenizer, texts), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        pooled = output[0]  # text_embeds: the second encoder's projected pooled output
        return torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype)

    def _token_ids(self, tokenizer, texts: list[str]) -> torch.Tensor:
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.to(self.device)

    def initial_latents(self, seed: int, size: tuple[int, int], init_noise_sigma: float) -> torch.Tensor:
        """Seeded noise (1, C, h, w), drawn on the CPU so a seed means the same image on any device."""
        generator = torch.Generator("cpu").manual_seed(seed)
        shape = (1, self.unet.config.in_channels, size[0], size[1])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return (noise * init_noise_sigma).to(self.device, self.dtype)

    def decode(self, latents: torch.Tensor) -> Image.Image:
        """Latents -> RGB image."""
        config = self.vae.config
        latents = latents / config.scaling_factor + (config.shift_factor or 0.0)
        pixels = self.vae.decode(latents.to(self.vae.dtype)).sample
        check_finite(pixels, "the image decoded by the VAE")
        pixels = (pixels[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
        return Image.fromarray((pixels * 255).round().astype(np.uint8))

    @torch.no_grad()
    def __call__(
        self,
        scene: Scene,
        settings: Settings | None = None,
        latents: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        decode: bool = True,
    ) -> Generation:
        """Generate one image of `scene`. `latents` overrides the seeded initial noise;
        `decode=False` leaves `image` None (the final latents only)."""
        settings = settings or Settings()
        if not scene.people:
            raise SceneError("the scene has no people: add at least one person")
        if off := self.people_off_canvas(scene):
            raise SceneError(
                f"person {off[0] + 1} is outside the canvas: nothing of them shows; move them in or delete them"
            )
        width, height = self.generation_size(scene, settings)
        latent_size = (height // self.vae_scale, width // self.vae_scale)
        chunk = self.chunk_size(settings, len(scene.people), latent_size)  # before any work: may refuse
        poses = [p.keypoints for p in scene.people]
        control_image, person_images, raw = scene_maps(
            poses,
            (scene.width, scene.height),
            (width, height),
            latent_size,
            settings.mask_dilation,
            settings.mask_blur,
            *self.stroke_sizes((width, height)),
            parts=[drawn_parts(p.parts, settings.pose_parts) for p in scene.people],
        )
        raw_t = torch.from_numpy(raw)
        early, late = hard_masks(raw_t, settings.temperature), soft_masks(raw_t, settings.temperature)
        prompts = build_prompts(scene, settings.quality_suffix)
        used = [[*parse_loras(settings.loras), *p.loras] for p in scene.people]
        branches = self._branches(settings, scene, prompts, control_image, person_images, early, late, used)

        scheduler = self.timestep_scheduler(settings)
        if latents is None:
            latents = self.initial_latents(settings.seed, latent_size, scheduler.init_noise_sigma)
        step_kwargs = {"eta": settings.eta} if settings.scheduler.startswith("ddim") else {}
        if settings.scheduler in ("lcm", "tcd"):  # they add fresh noise each step: seeded, as the initial noise
            step_kwargs["generator"] = torch.Generator("cpu").manual_seed(settings.seed)
        # The last `soft_steps` of the steps actually run blend softly: int(steps * harmony) of
        # them, also when a grid runs more steps than asked (ddim-original at 30: 16 hard + 15 soft).
        soft_steps = harmony_steps(settings.steps, settings.harmony)
        total = len(scheduler.timesteps)

        composing = settings.method in COMPOSING_METHODS
        every_layer = settings.method == "finecontrol-all"
        with (
            FeatureComposer(self.unet, every_layer) if composing else nullcontext() as composer,
            branches.loras or nullcontext(),
        ):
            for i, t in enumerate(scheduler.timesteps):
                model_input = scheduler.scale_model_input(latents, t)
                masks = branches.masks[int(uses_soft_masks(i, total, soft_steps))] if composing else None
                eps, chunk = self._predict_fitting(settings.method, branches, model_input, t, masks, composer, chunk)
                if branches.halves == 2:  # classifier-free guidance on the composites
                    e_neg, e_pos = eps[0:1], eps[1:2]
                    eps = e_neg + settings.guidance_scale * (e_pos - e_neg)
                if callback is not None:
                    # "predicted x0" of the DDIM paper's eq. 12: x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t),
                    # a_t = alpha_bar_t, the cumulative product of (1 - beta) (docs/method.md, "Samplers")
                    alpha = scheduler.alphas_cumprod[int(t)].to(latents.device, latents.dtype)
                    callback(i, total, (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt())
                latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
                check_finite(latents, f"the latents after step {i + 1} of {total}")

        return Generation(
            image=self.decode(latents) if decode else None,
            latents=latents,
            control_image=control_image,
            person_control_images=person_images,
            raw_masks=raw,
            early_masks=early.numpy(),
            late_masks=late.numpy(),
            prompts=prompts,
            scene=scene,
            settings=settings,
            loras=used,
        )

    def chunk_size(self, settings: Settings, people: int, latent_size: tuple[int, int]) -> int:
        """Batch items per ControlNet/UNet call: `max_batch` if set; on CUDA, as many as the free
        memory holds (ACTIVATION_BYTES_PER_LATENT_PIXEL per item); on CPU, the whole batch.
        Raises NotEnoughMemoryError when not even one item fits, or when finecontrol-all (which
        composes every layer across a half's people) would need chunks smaller than one half."""
        if self.max_batch is not None and (not isinstance(self.max_batch, int) or self.max_batch < 1):
            raise ValueError(f"max_batch must be a whole number of at least 1 (or None), got {self.max_batch!r}")
        halves = guidance_halves(settings)
        batch = halves * (1 if settings.method == "controlnet" else people)
        chunk = self.max_batch or batch
        if self.max_batch is None and self.device.type == "cuda":
            per_item = ACTIVATION_BYTES_PER_LATENT_PIXEL * latent_size[0] * latent_size[1] * self.dtype.itemsize
            free = torch.cuda.mem_get_info(self.device)[0]
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            chunk = int(0.9 * free // per_item)
            if chunk < 1:
                raise NotEnoughMemoryError(
                    f"a {latent_size[1] * self.vae_scale}x{latent_size[0] * self.vae_scale} image needs about "
                    f"{per_item / 2**30:.1f} GiB of GPU memory per branch and {free / 2**30:.1f} GiB are free: "
                    f"use a smaller canvas size"
                )
        if settings.method == "finecontrol-all" and chunk < min(batch, people):
            raise NotEnoughMemoryError(
                f"finecontrol-all composes every layer across all {people} people at once, which needs "
                f"batches of {people} and {chunk} fit: use finecontrol, fewer people or a smaller canvas"
            )
        return min(chunk, batch)

    def _branches(self, settings, scene, prompts, control_image, person_images, early, late, used=None) -> _Branches:
        """Batched prompt embeddings, control images, scales and LoRA scales for the method,
        negative half first (and only the positive half when guidance_scale is 1). `used`: each
        person's LoRAs (global ones first; None: no LoRAs)."""
        halves = guidance_halves(settings)

        def per_half(negative: list, positive: list) -> list:
            return negative + positive if halves == 2 else positive

        def encode(negative: list[str], positive: list[str], loras: list[tuple]) -> Conditioning:
            """Both halves' conditioning (negative first) in one call, at the generation's size."""
            flags = per_half([True] * len(negative), [False] * len(positive))
            texts = self.encode_prompts(per_half(negative, positive), per_half(loras, loras), negative=flags)
            return texts.with_size(*control_image.shape[:2])

        own = self._lora_scales(used or [[] for _ in scene.people])  # per person: adapter -> scale
        single = [merged_lora_scales(own)]  # the one branch of the baselines: everyone's LoRAs
        text_loras = [self._text_loras(scales) for scales in own]
        global_text = [self._text_loras(single[0])]
        if settings.method == "controlnet":
            context = encode([prompts.global_negative], [prompts.global_prompt], global_text)
            images = self._image_batch([control_image] * halves)
            scales = self._scales([settings.control_strength] * halves)
            return _Branches(1, halves, context, images, scales, context, loras=self._unet_loras(single * halves))
        people = len(scene.people)
        scales = [settings.control_strength if p.control_strength is None else p.control_strength for p in scene.people]
        context = encode(prompts.people_negative, prompts.people, text_loras)
        if settings.method == "multicontrolnet":
            unet_context = encode([prompts.global_negative], [prompts.global_prompt], global_text)
            masks, unet_loras = [], self._unet_loras(single * halves)
        else:
            unet_context = context
            masks = [MaskPyramid(early.to(self.device, self.dtype)), MaskPyramid(late.to(self.device, self.dtype))]
            unet_loras = self._unet_loras(own * halves)
        return _Branches(
            people,
            halves,
            context,
            self._image_batch(person_images * halves),
            self._scales(scales * halves),
            unet_context,
            masks,
            unet_loras,
        )

    def _lora_scales(self, used: list[list[LoraRef]]) -> list[dict[str, float]]:
        """Each person's adapter -> scale (a LoRA named twice: the scales add), loading each
        distinct LoRA once (finecontrol.loras)."""
        if not any(used):
            return [{} for _ in used]
        from finecontrol.loras import load_lora  # (it imports the model loader, which imports this module)

        result = []
        for refs in used:
            scales: dict[str, float] = {}
            for ref in refs:
                adapter = load_lora(self, ref.name).adapter
                scales[adapter] = scales.get(adapter, 0.0) + ref.scale
            result.append(scales)
        return result

    def _text_loras(self, scales: dict[str, float]) -> tuple:
        """The text-encoder part of a branch's LoRAs: ((adapter, scale), ...), sorted, nonzero only."""
        with_text = {lora.adapter for lora in self.loras.values() if lora.text_encoder}
        return tuple(sorted((name, scale) for name, scale in scales.items() if name in with_text and scale != 0))

    def _unet_loras(self, rows: list[dict[str, float]]) -> LoraMix | None:
        """Hooks giving each UNet batch row its LoRA scales; None when no LoRA acts on any row."""
        names = sorted({name for scales in rows for name, scale in scales.items() if scale != 0})
        if not names:
            return None
        return LoraMix(self.unet, {name: [scales.get(name, 0.0) for scales in rows] for name in names})

    def _image_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return (batch.to(self.device, self.dtype) / 255.0).contiguous()

    def _scales(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, device=self.device, dtype=self.dtype).view(-1, 1, 1, 1)

    def _predict_fitting(self, method, branches, latents, t, masks, composer, chunk) -> tuple[torch.Tensor, int]:
        """`_predict_noise`, retried with half the chunk size while the GPU runs out of memory;
        returns eps and the chunk size that worked (kept for the next steps)."""
        while True:
            try:
                return self._predict_noise(method, branches, latents, t, masks, composer, chunk), chunk
            except torch.OutOfMemoryError as err:
                smallest = branches.people if method == "finecontrol-all" else 1
                if chunk // 2 < smallest:
                    raise NotEnoughMemoryError(
                        f"out of GPU memory with {chunk} branch(es) per model call, the fewest {method} "
                        f"can run: use a smaller canvas or fewer people"
                    ) from err
                chunk //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def _predict_noise(self, method, branches, latents, t, masks, composer, chunk=None) -> torch.Tensor:
        """eps of each guidance half, (halves, C, h, w) (unconditional first), from one ControlNet
        and one UNet call over the whole batch, or calls of `chunk` items each."""
        batch = len(branches.controlnet_context)
        chunk = chunk or batch
        parts = [
            self.controlnet(
                latents.expand(stop - start, -1, -1, -1),
                t,
                **branches.controlnet_context[start:stop].kwargs(),
                controlnet_cond=branches.control_images[start:stop],
                conditioning_scale=branches.control_scales[start:stop],
                return_dict=False,
            )
            for start, stop in spans(batch, chunk)
        ]
        down, mid = parts[0] if len(parts) == 1 else _concat_residuals(parts)
        if method in COMPOSING_METHODS:
            down = compose_residuals(list(down), masks, self.split)
            composer.masks = masks
        elif method == "multicontrolnet":
            down = [sum_over_people(d, branches.people) for d in down]
            mid = sum_over_people(mid, branches.people)

        def unet(start: int, stop: int) -> torch.Tensor:
            if branches.loras is not None:
                branches.loras.select(start, stop)
            return self.unet(
                latents.expand(stop - start, -1, -1, -1),
                t,
                **branches.unet_context[start:stop].kwargs(),
                down_block_additional_residuals=[d[start:stop] for d in down],
                mid_block_additional_residual=mid[start:stop],
                return_dict=False,
            )[0]

        batch = len(branches.unet_context)
        if chunk >= batch:
            return unet(0, batch)
        if method == "finecontrol-all":  # every layer composes a half's people: chunks of whole halves
            return torch.cat([unet(*span) for span in spans(batch, chunk // branches.people * branches.people)])
        if composer is not None:
            return composer.compose_in_chunks(unet, spans(batch, chunk), branches.halves)
        return torch.cat([unet(*span) for span in spans(batch, chunk)])


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise NonFiniteError if `values` hold NaN or infinity. The loop calls it once per step on the
    latents (one reduction over a few thousand numbers and one wait for the device, next to a
    ControlNet and a UNet call), so a model with NaN weights stops at its first step."""
    if not torch.isfinite(values).all():
        raise NonFiniteError(
            f"NaN or infinite values in {what}: the model's weights hold NaN or infinite values (check "
            f"or download the model files again), or a computation overflowed (with fp16 weights, try fp32)"
        )


def guidance_halves(settings: Settings) -> int:
    """2 (unconditional and conditional); 1 when guidance_scale is 1, where
    eps = e_neg + 1 * (e_pos - e_neg) is e_pos and the unconditional half is not needed."""
    return 1 if settings.guidance_scale == 1 else 2


def merged_lora_scales(people: list[dict[str, float]]) -> dict[str, float]:
    """Every person's LoRAs on one branch (the single-branch baselines): the largest of each
    adapter's scales (global LoRAs, which every person has, keep theirs)."""
    merged: dict[str, float] = {}
    for scales in people:
        for name, scale in scales.items():
            merged[name] = max(merged.get(name, scale), scale)
    return merged


def spans(total: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `size` covering range(total)."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _concat_residuals(parts: list) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ControlNet outputs of consecutive chunks joined into those of the whole batch."""
    down = [torch.cat(level) for level in zip(*(part[0] for part in parts))]
    return down, torch.cat([part[1] for part in parts])
