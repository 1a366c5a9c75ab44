"""A toy LoRA that draws people striped, and the evaluation that shows it acting per person.

    python -m finecontrol.toyworld lora train --out DIR [--steps 600] [--rank 8] ...
    python -m finecontrol.toyworld lora evaluate --out DIR [--lora FILE] [--scenes 64] [--seed 4321]

(or `python -m finecontrol.toyworld.lora train|evaluate ...`). The toy world never draws stripes:
`draw_striped_person` draws a person as `world.draw_person` does, then cuts every other band of
`STRIPE_PERIOD // 2` image rows out of the body (not the head), so the body is bands of the
person's colour with what lies behind showing between them. The bands keep the person's colour
(white or dark bands would pull the colour vote of identity scoring to pink or purple once the
toy VAE blends them). The period is 16 px (two latent cells of the toy VAE per band) because the
toy VAE, trained on plain figures only, blurs finer stripes away (see `vae_carries_stripes`).

Training freezes the toy model and trains a rank-8 PEFT LoRA on the UNet's attention, feed-forward
and resnet convolution layers (not the ControlNet, which conditions the UNet with its residuals
as in train.py's ControlNet stage) on scenes where everybody is striped; it writes a diffusers
LoRA file (`StableDiffusionPipeline.save_lora_weights` layout) and a JSON training record.

The evaluation generates held-out 2-person scenes three ways with the same noise: no LoRA, the
LoRA on person 1 only, and the same LoRA global; per person it scores whether the person is
striped (`stripe_score` above `STRIPE_THRESHOLD`) and identity as `evaluate.score_image` does.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from finecontrol.toyworld.world import (
    COLORS,
    SIZE,
    ToyScene,
    condition_image,
    draw_background,
    draw_person,
    random_scene,
)

LORA_NAME = "stripes"
STRIPE_PERIOD = 16  # image rows per coloured + cut-out band pair
# A person is striped when their body's distance from the drawn background swings by more than
# this down the rows at the stripe period (amplitude of the profile's Fourier component, RGB
# distance units; plain figures: 0 drawn, 90 % below 21 through the toy VAE; striped: 90 % above
# 85 drawn, above 60 through the VAE).
STRIPE_THRESHOLD = 40.0
# The UNet layers the LoRA adapts: attention projections, feed-forward, the transformer's
# in/out projections and the resnets' convolutions, in the down, mid and up blocks.
TARGET_MODULES = (
    r".*(down_blocks|mid_block|up_blocks).*\."
    r"(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2)"
)


# ---------------------------------------------------------------------------------------------
# Drawing


def body_region(pose: np.ndarray) -> np.ndarray:
    """The pixels `draw_person` paints in the person's colour (torso and limbs, not the head)."""
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
    draw_person(canvas, pose, (255, 0, 0))
    return np.all(canvas == (255, 0, 0), axis=2)


def stripe_rows(period: int = STRIPE_PERIOD) -> np.ndarray:
    """(SIZE,) bool: the image rows cut out of a striped body (the first half of every period)."""
    return (np.arange(SIZE) % period) < period // 2


def draw_striped_person(
    image: np.ndarray, pose: np.ndarray, color: tuple[int, int, int], period: int = STRIPE_PERIOD
) -> None:
    """`draw_person`, with the body's pixels in the cut-out rows left as they were, in place."""
    behind = image.copy()
    draw_person(image, pose, color)
    cut = body_region(pose) & stripe_rows(period)[:, None]
    image[cut] = behind[cut]


def render_striped_scene(
    scene: ToyScene, rng: np.random.Generator, striped: list[bool] | None = None, period: int = STRIPE_PERIOD
) -> np.ndarray:
    """`world.render_scene` with the people `striped` says (default: everyone) drawn striped."""
    striped = [True] * len(scene.colors) if striped is None else striped
    image = draw_background(scene.setting, rng)
    for pose, color, stripes in zip(scene.poses, scene.colors, striped):
        if stripes:
            draw_striped_person(image, pose, COLORS[color], period)
        else:
            draw_person(image, pose, COLORS[color])
    return image


# ---------------------------------------------------------------------------------------------
# Detecting


def stripe_score(image: np.ndarray, mask: np.ndarray, background: np.ndarray, period: int = STRIPE_PERIOD) -> float:
    """How strongly the image's distance from `background` (an RGB colour) on `mask` alternates
    down the rows at `period`: the amplitude of that Fourier component of the row-mean profile,
    less its linear trend, over the rows the mask covers. The phase is free, so stripes shifted by
    a few rows score the same."""
    rows = np.nonzero(mask.any(axis=1))[0]
    if len(rows) < period // 2:
        return 0.0
    distance = np.linalg.norm(image.astype(np.float32) - np.asarray(background, np.float32), axis=2)
    profile = np.array([distance[y][mask[y]].mean() for y in rows])
    profile -= np.polyval(np.polyfit(rows, profile, 1), rows)  # a slow trend (shaded legs) is not stripes
    return float(2 * abs(np.sum(profile * np.exp(-2j * np.pi * rows / period))) / len(rows))


def person_stripes(image: np.ndarray, toy: ToyScene, period: int = STRIPE_PERIOD) -> list[float]:
    """`stripe_score` of each person on their thin body mask (`evaluate.body_masks`), against the
    background the image drew (`evaluate.drawn_background`)."""
    from finecontrol.toyworld.evaluate import body_masks, drawn_background

    background = drawn_background(image.astype(np.float32), toy.poses)
    return [stripe_score(image, mask, background, period) for mask in body_masks(toy.poses)]


def vae_carries_stripes(vae, scenes: int = 32, seed: int = 0, period: int = STRIPE_PERIOD) -> dict:
    """Stripe scores of striped and plain 2-person renders after the VAE's encode + decode:
    whether the toy VAE can carry stripes of this period at all."""
    rng = np.random.default_rng(seed)
    toys = [random_scene(rng, people=2) for _ in range(scenes)]
    result = {}
    for name, striped in (("striped", True), ("plain", False)):
        images = np.stack([render_striped_scene(t, rng, [striped] * 2, period) for t in toys])
        decoded = _decode(vae, _encode(vae, images))
        scores = [s for image, toy in zip(decoded, toys) for s in person_stripes(image, toy, period)]
        result[name] = {
            "median_score": round(float(np.median(scores)), 2),
            "detected": round(float(np.mean(np.array(scores) > STRIPE_THRESHOLD)), 4),
        }
    return result


@torch.no_grad()
def _encode(vae, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return vae.encode(x.to(vae.dtype)).latent_dist.mean.float()


@torch.no_grad()
def _decode(vae, latents: torch.Tensor) -> np.ndarray:
    x = vae.decode(latents.to(vae.dtype)).sample.float()
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------
# Training


def train_lora(
    out: Path | str,
    model: Path | str | None = None,
    steps: int = 1000,
    rank: int = 8,
    lr: float = 2e-3,
    batch_size: int = 16,
    pool_size: int = 2048,
    seed: int = 0,
    period: int = STRIPE_PERIOD,
    name: str = LORA_NAME,
    threads: int = 1,
) -> dict:
    """Train the stripes LoRA on the toy model in `model` (default: the shipped one) and write
    OUT/NAME.safetensors and OUT/NAME.json (the training record). Seeded: the same seed gives
    the same file on the same machine."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from tqdm import tqdm

    from finecontrol.models import TOY_MODEL, load_model
    from finecontrol.toyworld.train import (
        Pool,
        TrainConfig,
        controlled_eps,
        diffusion_loss,
        draw_batch,
        library_versions,
    )

    started = time.time()
    out = Path(out)
    # one thread: on 2 shared cores, two threads per process ran 20x slower (oversubscribed)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pipe = load_model(str(model or TOY_MODEL), device="cpu", dtype=torch.float32)
    vae, unet, controlnet, text_encoder, tokenizer = (
        pipe.vae,
        pipe.unet,
        pipe.controlnet,
        pipe.text_encoder,
        pipe.tokenizer,
    )
    for module in (vae, unet, controlnet, text_encoder):
        module.eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    config = TrainConfig(seed=seed, batch_size=batch_size)

    # Every person striped, 1-4 people per scene, captions as train.py's Pool writes them.
    pool = Pool.__new__(Pool)
    pool.images = np.empty((pool_size, SIZE, SIZE, 3), np.uint8)
    pool.conditions = np.empty((pool_size, SIZE, SIZE, 3), np.uint8)
    pool.captions = []
    for i in range(pool_size):
        scene = random_scene(rng)
        pool.images[i] = render_striped_scene(scene, rng, period=period)
        pool.conditions[i] = condition_image(scene.poses)
        pool.captions.append(scene.caption(list(rng.permutation(len(scene.colors)))))
    shift = vae.config.shift_factor or 0.0
    latents = torch.cat([_encode(vae, pool.images[i : i + 256]) for i in range(0, pool_size, 256)])
    latents = (latents - shift) * vae.config.scaling_factor
    tokenizer.model_max_length = text_encoder.config.max_position_embeddings

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )
    unet.train()
    log = []
    for step in tqdm(range(steps), desc="stripes LoRA", mininterval=10):
        batch = draw_batch(pool, latents, tokenizer, scheduler, rng, config)
        with torch.no_grad():
            context = text_encoder(batch.ids)[0]
        eps = controlled_eps(unet, controlnet, batch, context)  # the frozen ControlNet keeps no graph
        loss = diffusion_loss(eps, batch, scheduler, config.min_snr_gamma)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5)})
            tqdm.write(f"step {step}: loss {loss.item():.4f}")

    # PEFT keys (`...to_q.lora_A.weight`), which diffusers' `load_lora_weights` reads as they are;
    # convert_state_dict_to_diffusers would rename the attention layers' keys only (`lora.down`),
    # and a file mixing both layouts loads without them
    layers = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=layers, weight_name=f"{name}.safetensors", safe_serialization=True
    )
    seconds = time.time() - started
    record = {
        "what": "toy-world LoRA: people drawn in horizontal bands of their colour, the background between",
        "settings": {
            "steps": steps,
            "rank": rank,
            "lora_alpha": rank,
            "lr": lr,
            "batch_size": batch_size,
            "pool_size": pool_size,
            "seed": seed,
            "threads": threads,
            "stripe_period": period,
            "target_modules": TARGET_MODULES,
            "caption_dropout": config.caption_dropout,
            "min_snr_gamma": config.min_snr_gamma,
        },
        "seconds": round(seconds, 1),
        "final_loss_mean_of_last_3_logged": round(float(np.mean([e["loss"] for e in log[-3:]])), 5),
        "log": log,
        "parameters": int(sum(v.numel() for v in layers.values())),
        "versions": {**library_versions(), "peft": __import__("peft").__version__},
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"trained in {seconds / 60:.1f} min -> {out / f'{name}.safetensors'}")
    return record


def lora_rank(path: Path | str) -> int:
    """The largest rank in a diffusers LoRA file (the rows of its `lora_A` matrices)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return max(f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k or "lora.down" in k)


# ---------------------------------------------------------------------------------------------
# Evaluating

CONDITIONS = ("none", "person1", "global")


def generate(pipe, toy: ToyScene, condition: str, lora: str, settings):
    """One image of `toy` with the LoRA `lora` nowhere, on person 1 only (index 0) or global."""
    from finecontrol.scene import LoraRef
    from finecontrol.toyworld.evaluate import to_scene

    scene = to_scene(toy)
    if condition == "person1":
        scene.people[0].loras = [LoraRef(lora, 1.0)]
    elif condition == "person2":
        scene.people[1].loras = [LoraRef(lora, 1.0)]
    settings = replace(settings, loras=f"{lora}:1.0" if condition == "global" else "")
    return np.asarray(pipe(scene, settings).image)


def evaluate_lora(
    pipe,
    lora: str,
    scenes: int = 64,
    seed: int = 4321,
    conditions=CONDITIONS,
    settings=None,
    progress=None,
    examples: int = 0,
) -> dict:
    """Per condition: the share of person 1 and of person 2 striped, their mean stripe scores,
    and identity accuracy (evaluate.py's score) over `scenes` held-out 2-person scenes."""
    from finecontrol.toyworld.evaluate import score_image

    settings = settings or pipe.default_settings()
    rng = np.random.default_rng([seed, 2])
    toys = [random_scene(rng, people=2) for _ in range(scenes)]
    results, images = {}, {}
    for condition in conditions:
        striped, scores, identity = [[], []], [[], []], []
        for k, toy in enumerate(toys):
            image = generate(pipe, toy, condition, lora, replace(settings, seed=seed + k))
            if k < examples:
                images.setdefault(condition, []).append(image)
            for i, s in enumerate(person_stripes(image, toy)):
                scores[i].append(s)
                striped[i].append(s > STRIPE_THRESHOLD)
            identity += score_image(image, toy)["identity"]
            if progress:
                progress()
        results[condition] = {
            "person1_striped": round(float(np.mean(striped[0])), 4),
            "person2_striped": round(float(np.mean(striped[1])), 4),
            "person1_score": round(float(np.mean(scores[0])), 2),
            "person2_score": round(float(np.mean(scores[1])), 2),
            "identity_accuracy": round(float(np.mean(identity)), 4),
            "images": len(toys),
        }
    return {"results": results, "examples": images, "scenes": toys}


def detector_check(scenes: int = 200, seed: int = 7) -> dict:
    """The detector on ground-truth renders: the share of striped and of plain people it calls striped."""
    rng = np.random.default_rng(seed)
    calls = {True: [], False: []}
    for _ in range(scenes):
        toy = random_scene(rng)
        flags = [bool(f) for f in rng.random(len(toy.colors)) < 0.5]
        image = render_striped_scene(toy, rng, flags)
        for flag, score in zip(flags, person_stripes(image, toy)):
            calls[flag].append(score > STRIPE_THRESHOLD)
    return {
        "striped_detected": round(float(np.mean(calls[True])), 4),
        "plain_detected": round(float(np.mean(calls[False])), 4),
        "people": len(calls[True]) + len(calls[False]),
    }


LABELS = {
    "none": "no LoRA",
    "person1": "LoRA on person 1 only",
    "person2": "LoRA on person 2 only",
    "global": "same LoRA global",
}


def write_report(evaluation: dict, out: Path, extra: dict | None = None, figure: Path | None = None) -> None:
    """results.json, results.md (the table) and examples.png (a few images per condition) in `out`;
    the figure also to `figure` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    results = evaluation["results"]
    (out / "results.json").write_text(json.dumps({"results": results, **(extra or {})}, indent=1) + "\n")
    lines = ["| LoRA | person 1 striped | person 2 striped | identity | images |", "|---|---|---|---|---|"]
    for condition, r in results.items():
        lines.append(
            f"| {LABELS[condition]} | {r['person1_striped']:.3f} | {r['person2_striped']:.3f} "
            f"| {r['identity_accuracy']:.3f} | {r['images']} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    examples = evaluation["examples"]
    if examples:
        toys = evaluation["scenes"]
        rows, cols = len(examples), len(next(iter(examples.values())))
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
        for r, (condition, images) in enumerate(examples.items()):
            for c, image in enumerate(images):
                ax = axes[r][c]
                ax.imshow(image, interpolation="nearest")
                # person 1 marked by a small "1" at their head
                head = toys[c].poses[0][0, :2]
                ax.text(head[0], max(head[1] - 6, 3), "1", color="white", fontsize=6, ha="center", weight="bold")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(LABELS[condition], fontsize=6)
        fig.tight_layout(pad=0.2)
        fig.savefig(out / "examples.png", dpi=80)
        plt.close(fig)
        if figure:
            figure.parent.mkdir(parents=True, exist_ok=True)
            figure.write_bytes((out / "examples.png").read_bytes())


def print_table(results: dict) -> None:
    print(f"{'LoRA':<24}{'p1 striped':>11}{'p2 striped':>11}{'identity':>10}")
    for condition, r in results.items():
        print(
            f"{LABELS[condition]:<24}{r['person1_striped']:>11.3f}{r['person2_striped']:>11.3f}"
            f"{r['identity_accuracy']:>10.3f}"
        )


# ---------------------------------------------------------------------------------------------
# Command line


def add_commands(commands) -> None:
    """`lora train` and `lora evaluate` under an argparse subparsers object."""
    lora = commands.add_parser("lora", help="train or evaluate the toy stripes LoRA")
    sub = lora.add_subparsers(dest="lora_command", required=True)
    train = sub.add_parser("train", help="train the stripes LoRA on the toy model (CPU, minutes)")
    train.add_argument("--out", type=Path, required=True, help="folder for NAME.safetensors and NAME.json")
    train.add_argument("--model", type=Path, help="toy model folder (default: the shipped one)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--pool-size", type=int, default=2048)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--period", type=int, default=STRIPE_PERIOD)
    train.add_argument("--name", default=LORA_NAME)
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    evaluate = sub.add_parser("evaluate", help="stripes and identity per person: no LoRA, on person 1, global")
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--model", default="toy")
    evaluate.add_argument("--lora", default=LORA_NAME, help="LoRA name or file (default: the shipped toy LoRA)")
    evaluate.add_argument("--scenes", type=int, default=64)
    evaluate.add_argument("--seed", type=int, default=4321)
    evaluate.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated of {LABELS}")
    evaluate.add_argument("--examples", type=int, default=6, help="images per condition in examples.png")
    evaluate.add_argument("--figure", type=Path, help="also copy examples.png here")


def run_command(args) -> None:
    if args.lora_command == "train":
        train_lora(
            args.out,
            model=args.model,
            steps=args.steps,
            rank=args.rank,
            lr=args.lr,
            batch_size=args.batch_size,
            pool_size=args.pool_size,
            seed=args.seed,
            period=args.period,
            name=args.name,
            threads=args.threads,
        )
        return
    from tqdm import tqdm

    from finecontrol.models import load_model

    conditions = [c.strip() for c in args.conditions.split(",")]
    bar = tqdm(total=len(conditions) * args.scenes, unit="image")
    started = time.time()
    pipe = load_model(args.model, device="cpu")
    evaluation = evaluate_lora(
        pipe, args.lora, args.scenes, args.seed, conditions, progress=lambda: bar.update(1), examples=args.examples
    )
    bar.close()
    extra = {
        "lora": args.lora,
        "scenes": args.scenes,
        "seed": args.seed,
        "stripe_threshold": STRIPE_THRESHOLD,
        "detector_on_renders": detector_check(),
        "seconds": round(time.time() - started, 1),
    }
    write_report(evaluation, args.out, extra, args.figure)
    print_table(evaluation["results"])
    print(f"{extra['seconds']:.0f} s; wrote {args.out}/results.json, results.md, examples.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finecontrol.toyworld.lora", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands)
    args = parser.parse_args(["lora", *(argv if argv is not None else __import__("sys").argv[1:])])
    run_command(args)


if __name__ == "__main__":
    main()
