"""Train the toy model from scratch on CPU: a VAE, then a UNet with its text encoder, then a ControlNet.

    python -m finecontrol.toyworld train --out DIR [--resume] [--unet-steps 100] ...

writes a diffusers-format model folder that `load_model(DIR)` (and the name `toy`) reads. The file
reads top to bottom: the settings (`TrainConfig`), the models, the data, the losses, the loop the
three stages share (`run_stage`), its checkpoint, and `train`, which runs the stages in order.

Besides the weights, DIR gets `finecontrol.json` (what the app reads), `training_log.json` (the
training loss every `log_interval` steps, with the held-out loss where it was measured) and
`training_config.json` (the settings, seed, steps run and library versions). While training, the
latest checkpoint is kept in DIR/checkpoint; `--resume` continues from it, and the resumed run gives
the same weights bit for bit as an uninterrupted one. A run is reproducible from its seed on the
same machine: every random draw of training comes from numpy's `Run.rng` or torch's global
generator, in a fixed order; the held-out loss uses generators of its own.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from finecontrol.model_info import ModelInfo
from finecontrol.toyworld.world import (
    JOINT_RADIUS,
    SIZE,
    STICK_WIDTH,
    VOCABULARY,
    condition_image,
    random_scene,
    render_scene,
)


def _setting(default: int | float, help: str):
    """A TrainConfig field; `help` is its command-line help."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a run. Each is also a flag of the train command (`--unet-steps 100`)."""

    seed: int = _setting(0, "seeds the scenes, the initial weights and every training draw")
    # data: scenes are rendered once and, after the VAE stage, encoded once; the later stages
    # train on the stored latents
    pool_size: int = _setting(32768, "training scenes")
    batch_size: int = _setting(32, "scenes per step")
    # classifier-free guidance needs the model to predict the noise without a caption too
    caption_dropout: float = _setting(0.1, "share of captions replaced by the empty caption")
    # the longest caption (4 people "on a beach") is 20 tokens with BOS and EOS; captions are never cut
    max_tokens: int = _setting(24, "tokens the text encoder reads")
    # steps per stage (the shipped model: 78 minutes on 2 CPU cores)
    vae_steps: int = _setting(300, "VAE steps")
    unet_steps: int = _setting(4500, "UNet + text encoder steps")
    controlnet_steps: int = _setting(2000, "ControlNet steps, UNet and text encoder frozen")
    # optimiser: AdamW; the learning rate rises linearly over the warm-up, then follows a cosine to 0
    vae_lr: float = _setting(2e-3, "VAE peak learning rate")
    unet_lr: float = _setting(1e-3, "UNet + text encoder peak learning rate")
    controlnet_lr: float = _setting(1e-3, "ControlNet peak learning rate")
    weight_decay: float = _setting(1e-4, "AdamW weight decay")
    # a short warm-up: Adam's first updates rest on moment estimates from very few gradients
    warmup_percent: int = _setting(5, "warm-up, in percent of a stage's steps")
    # the VAE trains without clipping; the UNet and ControlNet are clipped against rare large gradients
    grad_clip: float = _setting(1.0, "largest gradient norm in the UNet and ControlNet stages")
    # the shipped UNet, text encoder and ControlNet are exponential moving averages (EMA) of the
    # trained weights. Their decay, (1 + step) / (ema_ramp + step), averages over roughly the last
    # ninth of the steps so far (it would reach ema_decay only after ~9,000 steps)
    ema_decay: float = _setting(0.999, "largest EMA decay")
    ema_ramp: int = _setting(10, "EMA decay = min(ema_decay, (1 + step) / (ema_ramp + step))")
    # VAE loss: L1 keeps pushing on small reconstruction errors, which MSE barely does; the KL term
    # only keeps the latents bounded (they are standardised after the stage), so it is tiny
    vae_mse: float = _setting(1.0, "weight of the VAE's mean squared reconstruction error")
    vae_l1: float = _setting(0.1, "weight of the VAE's mean absolute reconstruction error")
    vae_kl: float = _setting(1e-6, "weight of the VAE's KL divergence from N(0, 1)")
    # min-SNR weighting (Hang et al. 2023, whose gamma this is): low-noise timesteps, easy to fit,
    # are down-weighted so they do not pull against the noisy ones
    min_snr_gamma: float = _setting(5.0, "diffusion loss weight min(SNR, gamma) / SNR")
    # logging, held-out loss, checkpoints
    log_interval: int = _setting(50, "steps between training-loss log entries")
    heldout_size: int = _setting(256, "held-out scenes, never trained on")
    heldout_interval: int = _setting(250, "steps between held-out losses (and the last step); 0: none")
    checkpoint_interval: int = _setting(500, "steps between checkpoints (and the end of each stage)")


# the stages in the order they run, with their names on the progress bar
STAGES = {"vae": "VAE", "unet": "UNet + text encoder", "controlnet": "ControlNet"}
CHECKPOINT = "checkpoint.pt"


def build_models(tokenizer_dir: Path, max_tokens: int):
    """The tokenizer, text encoder, VAE, UNet and noise scheduler, freshly initialised."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from finecontrol.models import small_text_config

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=max_tokens)
    text_encoder = CLIPTextModel(small_text_config(tokenizer, hidden=64, layers=2, max_positions=max_tokens))
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4,
        block_out_channels=(32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        # one attention head: 1.7x faster on CPU than eight (0.55 vs 0.93 s a batch-32 step here)
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=1,
        norm_num_groups=16,
        # the caption, pooled, also joins the time embedding: a global path for the setting word,
        # which cross-attention alone under-learned (backgrounds drifted between settings)
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=False, steps_offset=1
    )
    return tokenizer, text_encoder, vae, unet, scheduler


class Pool:
    """Scenes rendered once: images, condition images, per-scene captions (people in random order)."""

    def __init__(self, count: int, seed: int | list[int]):
        rng = np.random.default_rng(seed)
        self.images = np.empty((count, SIZE, SIZE, 3), np.uint8)
        self.conditions = np.empty((count, SIZE, SIZE, 3), np.uint8)
        self.captions = []
        for i in tqdm(range(count), desc="rendering scenes", mininterval=5):
            scene = random_scene(rng)
            self.images[i] = render_scene(scene, rng)
            self.conditions[i] = condition_image(scene.poses)
            self.captions.append(scene.caption(list(rng.permutation(len(scene.colors)))))

    @staticmethod
    def to_tensor(images: np.ndarray) -> torch.Tensor:
        """uint8 images (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as the VAE reads them."""
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    @staticmethod
    def to_conditions(conditions: np.ndarray) -> torch.Tensor:
        """uint8 condition images -> float (N, 3, H, W) in [0, 1], as the ControlNet reads them."""
        return torch.from_numpy(conditions).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def encode(vae, images: np.ndarray) -> torch.Tensor:
    """Posterior means of `images`, 256 at a time."""
    return torch.cat(
        [vae.encode(Pool.to_tensor(images[i : i + 256])).latent_dist.mean for i in range(0, len(images), 256)]
    )


def _tokens(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the model's length; a caption that does not fit is an error, not cut."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=False, return_tensors="pt"
    ).input_ids
    if ids.shape[1] > tokenizer.model_max_length:
        raise ValueError(
            f"a caption has {ids.shape[1]} tokens, more than the {tokenizer.model_max_length} the model reads"
        )
    return ids


class Batch(NamedTuple):
    """What one diffusion step trains on."""

    ids: torch.Tensor  # caption token ids
    noisy: torch.Tensor  # latents with noise added at timesteps t
    noise: torch.Tensor  # the noise the model predicts
    t: torch.Tensor  # timesteps
    cond: torch.Tensor  # condition images (the skeletons)


def draw_batch(
    pool: Pool, latents: torch.Tensor, tokenizer, scheduler, rng: np.random.Generator, config: TrainConfig
) -> Batch:
    """A random training batch: scenes, dropped captions and timesteps from `rng`, noise from torch."""
    index = rng.integers(len(latents), size=config.batch_size)
    captions = ["" if rng.random() < config.caption_dropout else pool.captions[i] for i in index]
    x0 = latents[index]
    noise = torch.randn_like(x0)
    t = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, size=config.batch_size))
    return Batch(
        ids=_tokens(tokenizer, captions),
        noisy=scheduler.add_noise(x0, noise, t),
        noise=noise,
        t=t,
        cond=Pool.to_conditions(pool.conditions[index]),
    )


def heldout_batch(scenes: Pool, latents: torch.Tensor, tokenizer, scheduler, seed: int) -> Batch:
    """All held-out scenes as one fixed batch: full captions, timesteps spread evenly over the
    schedule, noise from a generator of its own, so training's random draws stay untouched."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.linspace(0, scheduler.config.num_train_timesteps - 1, len(latents)).round().long()
    return Batch(
        ids=_tokens(tokenizer, scenes.captions),
        noisy=scheduler.add_noise(latents, noise, t),
        noise=noise,
        t=t,
        cond=Pool.to_conditions(scenes.conditions),
    )


def vae_loss(vae, x: torch.Tensor, config: TrainConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reconstruction error of `x` through a latent sampled from the posterior, plus the KL term."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    return (
        config.vae_mse * F.mse_loss(recon, x)
        + config.vae_l1 * F.l1_loss(recon, x)
        + config.vae_kl * posterior.kl().mean()
    )


def controlled_eps(unet, controlnet, batch: Batch, context: torch.Tensor) -> torch.Tensor:
    """The UNet's noise prediction for `batch` given `context`, with the ControlNet's residuals
    for the batch's skeleton images added."""
    down, mid = controlnet(
        batch.noisy, batch.t, encoder_hidden_states=context, controlnet_cond=batch.cond, return_dict=False
    )
    return unet(
        batch.noisy,
        batch.t,
        encoder_hidden_states=context,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample


def diffusion_loss(eps_pred: torch.Tensor, batch: Batch, scheduler, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weighted epsilon loss."""
    alphas = scheduler.alphas_cumprod[batch.t]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=gamma) / snr
    per_sample = F.mse_loss(eps_pred, batch.noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def _optimizer(params: list[torch.nn.Parameter], lr: float, steps: int, config: TrainConfig):
    """AdamW, and a schedule: linear warm-up, then cosine decay to 0 at `steps`."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    warmup = max(1, steps * config.warmup_percent // 100)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return optimizer, schedule


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


class Run:
    """What the stages share: the settings, numpy's training stream, the log and the checkpoint."""

    def __init__(self, config: TrainConfig, checkpoint: Path, saved: dict | None = None):
        self.config = config
        self.rng = np.random.default_rng(config.seed)  # batches, caption dropout, timesteps
        self.checkpoint = checkpoint  # the folder checkpoints are saved in
        self.saved = saved  # the checkpoint resumed from, until training has caught up with it
        self.modules: dict[str, torch.nn.Module] = {}  # by name, every module a checkpoint holds
        self.log: list[dict] = []
        self.steps: dict[str, int] = {}  # steps run per stage
        self.resumed: list[dict] = []  # where the run was resumed
        self.started = time.time()
        if saved:
            self.log, self.steps = saved["log"], saved["steps"]
            self.resumed = saved["resumed"] + [{"stage": saved["stage"], "step": saved["step"]}]
            self.started -= saved["seconds"]  # the time before the resume counts too

    def seconds(self) -> float:
        """Training time so far, resumed runs included."""
        return time.time() - self.started


def save_checkpoint(run: Run, stage: str, step: int, optimizer, schedule) -> None:
    """Save everything a resumed run needs to continue bit for bit after `step` steps of `stage`."""
    state = {
        "config": asdict(run.config),
        "stage": stage,
        "step": step,
        "modules": {name: module.state_dict() for name, module in run.modules.items()},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "numpy_rng": run.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "log": run.log,
        "steps": run.steps,
        "resumed": run.resumed,
        "seconds": run.seconds(),
    }
    run.checkpoint.mkdir(parents=True, exist_ok=True)
    partial = run.checkpoint / (CHECKPOINT + ".partial")
    torch.save(state, partial)
    partial.replace(run.checkpoint / CHECKPOINT)  # a run killed while saving keeps the previous checkpoint


def run_stage(
    run: Run,
    stage: str,
    steps: int,
    lr: float,
    models: dict[str, torch.nn.Module],
    train_loss: Callable[[], torch.Tensor],
    heldout_loss: Callable[[], torch.Tensor],
    emas: dict[str, torch.nn.Module] | None = None,
    clip: bool = False,
) -> None:
    """Train `models` for `steps` steps on `train_loss()`, which draws its own batch: the loop of every stage.

    AdamW with warm-up and cosine decay, gradients clipped if `clip`, and `emas[name]` following
    `models[name]` as a moving average. The training loss is logged every `log_interval` steps and
    `heldout_loss()` of the same weights every `heldout_interval` steps; a checkpoint is saved every
    `checkpoint_interval` steps and at the end. When resuming, a stage that had ended before the
    checkpoint only takes its weights from it, and the checkpoint's own stage continues from it.
    """
    config, saved = run.config, run.saved
    emas = emas or {}
    trained = {**models, **{f"{name}_ema": ema for name, ema in emas.items()}}
    run.modules.update(trained)
    if saved and list(STAGES).index(stage) < list(STAGES).index(saved["stage"]):
        # resuming, and this stage had ended before the checkpoint: take its weights, skip its loop
        for name, module in trained.items():
            module.load_state_dict(saved["modules"][name])
        return

    params = [p for model in models.values() for p in model.parameters()]
    optimizer, schedule = _optimizer(params, lr, steps, config)
    first = 0
    if saved:  # resuming inside this stage: continue exactly where the checkpoint was saved
        for name, module in trained.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        run.rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        first, run.saved = saved["step"], None

    for model in models.values():
        model.train()
    for step in tqdm(range(first, steps), desc=STAGES[stage], initial=first, total=steps, mininterval=10):
        heldout = None
        if config.heldout_interval and (step % config.heldout_interval == 0 or step == steps - 1):
            heldout = _evaluate(heldout_loss, models.values())

        loss = train_loss()
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        decay = min(config.ema_decay, (1 + step) / (config.ema_ramp + step))
        for name, ema in emas.items():
            _ema_update(ema, models[name], decay)

        if step % config.log_interval == 0 or heldout is not None:
            entry = {"stage": stage, "step": step, "loss": loss.item()}
            if heldout is not None:
                entry["heldout_loss"] = heldout
                tqdm.write(f"{stage} step {step}: loss {loss.item():.4f}, held-out loss {heldout:.4f}")
            run.log.append(entry)
        run.steps[stage] = step + 1
        if (step + 1) % config.checkpoint_interval == 0 or step + 1 == steps:
            save_checkpoint(run, stage, step + 1, optimizer, schedule)


def _evaluate(loss: Callable[[], torch.Tensor], models) -> float:
    """`loss()` with the models in eval mode and without gradients."""
    for model in models:
        model.eval()
    with torch.no_grad():
        value = loss().item()
    for model in models:
        model.train()
    return value


def library_versions() -> dict[str, str]:
    """The versions a run's weights depend on, for training_config.json."""
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }


def train(out: Path | str, resume: bool = False, checkpoint: Path | str | None = None, **settings) -> None:
    """Train the three stages and write the model folder; `settings` are TrainConfig fields.

    Checkpoints go to `checkpoint` (default OUT/checkpoint), which is removed once the model is
    written. `resume=True` continues the run saved there, with its settings: any given must match.
    """
    from diffusers import ControlNetModel, DDIMScheduler

    from finecontrol.tokenizer import write_tokenizer

    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint else out / "checkpoint"
    saved = torch.load(checkpoint / CHECKPOINT) if resume else None
    config = TrainConfig(**saved["config"]) if saved else TrainConfig(**settings)
    changed = {name: value for name, value in settings.items() if getattr(config, name) != value}
    if changed:
        raise ValueError(f"a resumed run keeps the settings of its checkpoint, not {changed}")
    torch.manual_seed(config.seed)  # the initial weights, then torch's training draws (noise, VAE samples)
    run = Run(config, checkpoint, saved)

    write_tokenizer(VOCABULARY, out / "tokenizer")
    tokenizer, text_encoder, vae, unet, scheduler = build_models(out / "tokenizer", config.max_tokens)
    pool = Pool(config.pool_size, config.seed)
    heldout = Pool(config.heldout_size, [config.seed, 1])  # another stream of the seed: other scenes

    # Stage 1: the VAE, 64x64 images <-> 16x16x4 latents.
    def vae_batch() -> torch.Tensor:
        return Pool.to_tensor(pool.images[run.rng.integers(len(pool.images), size=config.batch_size)])

    heldout_images = Pool.to_tensor(heldout.images)
    run_stage(
        run,
        "vae",
        steps=config.vae_steps,
        lr=config.vae_lr,
        models={"vae": vae},
        train_loss=lambda: vae_loss(vae, vae_batch(), config),
        heldout_loss=lambda: vae_loss(vae, heldout_images, config, torch.Generator().manual_seed(config.seed)),
    )
    vae.eval().requires_grad_(False)

    # Latents standardised to mean 0, std 1 (the scale the noise schedule assumes); the shift and
    # scale go into the VAE's config, where the pipeline reads them.
    latents = encode(vae, pool.images)
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (latents - shift) * scale
    heldout_diffusion = heldout_batch(
        heldout, (encode(vae, heldout.images) - shift) * scale, tokenizer, scheduler, config.seed
    )

    # Stage 2: the UNet and the text encoder together; their averages are what ships.
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)

    def unet_loss(batch: Batch) -> torch.Tensor:
        eps = unet(batch.noisy, batch.t, encoder_hidden_states=text_encoder(batch.ids)[0]).sample
        return diffusion_loss(eps, batch, scheduler, config.min_snr_gamma)

    run_stage(
        run,
        "unet",
        steps=config.unet_steps,
        lr=config.unet_lr,
        models={"unet": unet, "text_encoder": text_encoder},
        train_loss=lambda: unet_loss(draw_batch(pool, latents, tokenizer, scheduler, run.rng, config)),
        heldout_loss=lambda: unet_loss(heldout_diffusion),
        emas={"unet": ema_unet, "text_encoder": ema_text_encoder},
        clip=True,
    )
    ema_unet.eval()
    ema_text_encoder.eval()

    # Stage 3: a ControlNet (a copy of the UNet's encoder) against the averaged UNet, which stays frozen.
    controlnet = ControlNetModel.from_unet(ema_unet, conditioning_embedding_out_channels=(16, 32, 64))
    ema_controlnet = copy.deepcopy(controlnet).requires_grad_(False)

    def controlnet_loss(batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            context = ema_text_encoder(batch.ids)[0]
        eps = controlled_eps(ema_unet, controlnet, batch, context)
        return diffusion_loss(eps, batch, scheduler, config.min_snr_gamma)

    run_stage(
        run,
        "controlnet",
        steps=config.controlnet_steps,
        lr=config.controlnet_lr,
        models={"controlnet": controlnet},
        train_loss=lambda: controlnet_loss(draw_batch(pool, latents, tokenizer, scheduler, run.rng, config)),
        heldout_loss=lambda: controlnet_loss(heldout_diffusion),
        emas={"controlnet": ema_controlnet},
        clip=True,
    )

    minutes = run.seconds() / 60
    shipped = {"vae": vae, "text_encoder": ema_text_encoder, "unet": ema_unet, "controlnet": ema_controlnet}
    for name, module in shipped.items():
        module.to(torch.float16).save_pretrained(out / name)
    tokenizer.save_pretrained(out / "tokenizer")
    DDIMScheduler.from_config(scheduler.config).save_pretrained(out / "scheduler")
    # what the app and the loader read; ModelInfo validates it (the toy model's own defaults included)
    ModelInfo(
        resolution=SIZE,
        stick_width=STICK_WIDTH,
        joint_radius=JOINT_RADIUS,
        vocabulary=VOCABULARY,
        # "pose_parts": its world's figures have no hands or faces, so it was trained on bodies alone
        defaults={
            "quality_suffix": "",
            "guidance_scale": 3.0,
            "control_strength": 1.0,
            "harmony": 0.0,
            "steps": 20,
            "pose_parts": "body",
        },
        negative_prompt="",
        training_minutes=round(minutes, 1),
    ).write(out)
    (out / "training_log.json").write_text(json.dumps(run.log) + "\n")
    record = {
        "config": asdict(config),
        "seed": config.seed,
        "steps": run.steps,
        "resumed": run.resumed,
        "versions": library_versions(),
    }
    (out / "training_config.json").write_text(json.dumps(record, indent=1) + "\n")
    (checkpoint / CHECKPOINT).unlink()
    if not any(checkpoint.iterdir()):
        checkpoint.rmdir()
    print(f"trained in {minutes:.1f} min -> {out}")
