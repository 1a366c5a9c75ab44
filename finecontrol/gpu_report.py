"""The prepared GPU report: `python -m finecontrol.benchmark --gpu --json OUT/gpu.json`.

Built for a CUDA machine without internet: `sd15-random` (SD1.5 + ControlNet v1.1 shapes, random
weights) in fp16 with PyTorch's scaled-dot-product attention, then for each variant (eager,
channels_last, torch.compile of the repeated blocks) and each size, number of people and method:
seconds per step (median of the intervals between step callbacks), seconds per image at 20 steps
(prompt encoding and VAE decoding included) and peak memory above the weights; and how far fp16's
final latents are from fp32's on one scene. A time budget (default 420 s) skips what would not
fit, and the JSON and Markdown are rewritten after every configuration, so a run that is cut short
still leaves its figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from finecontrol.costs import crowd, memory_peak, memory_reset, synchronize
from finecontrol.models import DTYPES, load_model
from finecontrol.pipeline import FineControlPipeline
from finecontrol.settings import Settings

# The blocks compiled by the `compile` variant (regional compilation: each distinct block is
# compiled once and reused, so compiling takes a minute or two rather than many).
COMPILED_BLOCKS = ("BasicTransformerBlock", "ResnetBlock2D")


def apply_variant(pipe: FineControlPipeline, variant: str) -> None:
    """Put the pipeline's models in the variant's form (cumulative: compile keeps channels_last)."""
    if variant in ("channels_last", "compile"):
        for model in (pipe.unet, pipe.controlnet, pipe.vae):
            model.to(memory_format=torch.channels_last)
    if variant == "compile":
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for model in (pipe.unet, pipe.controlnet):
            for module in model.modules():
                if type(module).__name__ in COMPILED_BLOCKS:
                    module.compile(dynamic=True)


def time_image(pipe: FineControlPipeline, scene, settings: Settings) -> dict:
    """One full generation: seconds per step (median interval between step callbacks), seconds
    for the image (prompt encoding and decoding included, no prompt cache), peak extra memory."""
    stamps = []

    def stamp(*_):
        synchronize(pipe.device)
        stamps.append(time.perf_counter())

    pipe.clear_caches()
    before = memory_reset(pipe.device)
    start = time.perf_counter()
    result = pipe(scene, settings, callback=stamp)
    synchronize(pipe.device)
    seconds = time.perf_counter() - start
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "s_per_step": statistics.median(intervals) if intervals else seconds,
        "s_per_image": seconds,
        "peak_bytes": memory_peak(pipe.device) - before,
        "finite": bool(torch.isfinite(result.latents).all()),
    }


def precision_agreement(pipe: FineControlPipeline, scene, settings: Settings) -> dict:
    """Final latents of `scene` in fp32 and in the pipeline's own dtype, from the same noise."""
    own = pipe.dtype
    low = pipe(scene, settings, decode=False).latents.float()
    pipe.to(pipe.device, torch.float32)
    try:
        full = pipe(scene, settings, decode=False).latents.float()
    finally:
        pipe.to(pipe.device, own)
    difference = (low - full).abs()
    return {
        "dtype": str(own).replace("torch.", ""),
        "max_abs_difference": difference.max().item(),
        "mean_abs_difference": difference.mean().item(),
        "latent_scale": full.abs().max().item(),
        "relative": (difference.norm() / full.norm()).item(),
    }


def markdown(doc: dict) -> str:
    """The report's tables."""
    env = doc["environment"]
    lines = [
        f"{env['device']}, {env['model']} in {env['dtype']}, attention: {env['attention']}, "
        f"{doc['steps']} steps, torch {env['torch']}.",
        "",
        "| variant | size | N | method | s/step | s/image | peak memory | vs controlnet |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = doc["runs"]
    single = {(r["variant"], r["size"], r["people"]): r["s_per_step"] for r in rows if r["method"] == "controlnet"}
    for r in rows:
        key = (r["variant"], r["size"], r["people"])
        versus = f"{r['s_per_step'] / single[key]:.2f}x" if key in single else "-"
        flag = "" if r["finite"] else " (non-finite latents)"
        lines.append(
            f"| {r['variant']} | {r['size']} | {r['people']} | {r['method']} | {r['s_per_step']:.4f} | "
            f"{r['s_per_image']:.2f} | {r['peak_bytes'] / 2**30:.2f} GiB | {versus}{flag} |"
        )
    if doc.get("precision"):
        p = doc["precision"]
        lines += [
            "",
            f"{p['dtype']} against fp32, final latents of one scene: max |difference| "
            f"{p['max_abs_difference']:.3g} (latents up to {p['latent_scale']:.3g}), relative L2 {p['relative']:.3g}.",
        ]
    if doc.get("compile_seconds") is not None:
        lines += ["", f"torch.compile (regional) warm-up: {doc['compile_seconds']:.0f} s."]
    if doc.get("skipped"):
        lines += ["", "Skipped for the time budget: " + ", ".join(doc["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    """Run the report (arguments from finecontrol.benchmark: --model, --device, --dtype, --size,
    --people, --methods, --json; --steps for the image; --budget in seconds)."""
    started = time.perf_counter()
    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (or --device cpu to try the code path)")
    dtype = DTYPES[args.dtype or "fp16"]
    with torch.device(device):  # random weights drawn where they will live: fast on a GPU
        pipe = load_model(args.model, device=device, dtype=dtype)
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    sizes = [int(v) for v in args.size.split(",")]
    people = [int(v) for v in args.people.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    out = Path(args.json)
    doc = {
        "environment": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "model": args.model,
            "dtype": str(dtype).replace("torch.", ""),
            "attention": ", ".join(sorted(processors)),
            "torch": torch.__version__,
        },
        "steps": args.steps,
        "runs": [],
        "precision": None,
        "compile_seconds": None,
        "skipped": [],
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(doc))

    def left() -> float:
        return args.budget - (time.perf_counter() - started)

    base = Settings(steps=args.steps, seed=0)
    one = crowd(2, sizes[0], sizes[0])
    doc["precision"] = precision_agreement(pipe, one, replace(base, width=sizes[0], height=sizes[0]))
    print(f"precision: {doc['precision']}", flush=True)
    save()
    for variant in variants:
        apply_variant(pipe, variant)
        if variant == "compile":
            start = time.perf_counter()
            for size in sizes:  # compile for every size before timing anything
                pipe(crowd(1, size, size), replace(base, steps=2, width=size, height=size), decode=False)
            doc["compile_seconds"] = time.perf_counter() - start
        for size in sizes:
            for n in people:
                for method in methods:
                    name = f"{variant} {size} px N={n} {method}"
                    if left() < 0:
                        doc["skipped"].append(name)
                        continue
                    scene = crowd(n, size, size)
                    settings = replace(base, method=method, width=size, height=size)
                    pipe(scene, replace(settings, steps=2), decode=False)  # warm-up
                    figures = time_image(pipe, scene, settings)
                    doc["runs"].append({"variant": variant, "size": size, "people": n, "method": method, **figures})
                    print(f"{name}: {figures}", flush=True)
                    save()
    save()
    print(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.md')} in {time.perf_counter() - started:.0f} s")
