"""Command line: generate one image, compare methods over seeds, or preview the person masks.

    python -m finecontrol generate SCENE.json --out OUT.png [--method M] [--seed S] [--steps K] [--model NAME]
    python -m finecontrol compare SCENE.json --out GRID.png --methods finecontrol,controlnet --seeds 0,1,2
    python -m finecontrol masks SCENE.json --out MASKS.png

SCENE may also be a PNG made by FineControl: its scene and settings are read back from it, and
flags given on the command line replace the stored settings.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

from finecontrol.pipeline import COMPARED_METHODS, METHODS, SCHEDULERS, Settings, random_seed
from finecontrol.render import labelled_grid, mask_previews
from finecontrol.scene import Scene, SceneError, load_scene

# Command-line flag -> Settings field.
_KNOBS = {
    "method": "method", "seed": "seed", "steps": "steps", "guidance": "guidance_scale",
    "strength": "control_strength", "harmony": "harmony", "temperature": "temperature",
    "dilation": "mask_dilation", "blur": "mask_blur", "scheduler": "scheduler",
    "suffix": "quality_suffix", "width": "width", "height": "height",
}
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (SceneError, ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finecontrol", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate one image")
    _common(generate)
    generate.add_argument("--method", choices=METHODS)
    generate.add_argument("--seed", type=int, help="noise seed (default: the PNG's, else random)")
    generate.set_defaults(run=_generate)

    compare = commands.add_parser("compare", help="methods side by side over seeds, as a labelled grid")
    _common(compare)
    compare.add_argument("--methods", default=",".join(COMPARED_METHODS),
                         help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(COMPARED_METHODS)})")
    compare.add_argument("--seeds", default="0", help="comma-separated seeds, one grid row each")
    compare.set_defaults(run=_compare)

    masks = commands.add_parser("masks", help="skeletons over each person's mask, early and late steps")
    masks.add_argument("scene", type=Path)
    masks.add_argument("--out", type=Path, required=True)
    masks.add_argument("--dilation", type=int)
    masks.add_argument("--blur", type=float)
    masks.add_argument("--temperature", type=float)
    masks.set_defaults(run=_masks)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="scene JSON, OpenPose JSON or a FineControl PNG")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="toy, tiny, sd15, a hub id or a local folder (default: toy, else tiny)")
    parser.add_argument("--controlnet", help="OpenPose ControlNet hub id or folder (default: lllyasviel/control_v11p_sd15_openpose)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), help="weights and compute (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (SD1.5: 9.0, toy: 3.0)")
    parser.add_argument("--strength", type=float, help="ControlNet strength for people without their own (SD1.5: 1.5, toy: 1.0)")
    parser.add_argument("--harmony", type=float, help="fraction of final steps that blend masks softly (SD1.5: 0.5, toy: 0)")
    parser.add_argument("--temperature", type=float, help="mask softmax temperature (0.001)")
    parser.add_argument("--dilation", type=int, help="mask dilation kernel in pixels (shorter side // 8, odd)")
    parser.add_argument("--blur", type=float, help="mask blur sigma in pixels (1.0)")
    parser.add_argument("--scheduler", choices=SCHEDULERS)
    parser.add_argument("--suffix", help='quality suffix appended to prompts (SD1.5: "best quality", toy: none)')
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)


def _read_input(path: Path) -> tuple[Scene, Settings | None]:
    if path.suffix.lower() == ".png":
        from finecontrol.metadata import read_png

        return read_png(path)
    return load_scene(path), None


def _settings(args: argparse.Namespace, stored: Settings | None, defaults: Settings) -> Settings:
    """The stored settings (from a PNG) or the model's defaults, with the command line's flags."""
    changes = {
        field: getattr(args, flag)
        for flag, field in _KNOBS.items()
        if getattr(args, flag, None) is not None
    }
    if stored is None and "seed" not in changes:
        changes["seed"] = random_seed()
    return replace(stored or defaults, **changes)


def _load(args: argparse.Namespace):
    import torch

    from finecontrol.models import load_model, offline_default

    dtype = getattr(torch, _DTYPES[args.dtype]) if args.dtype else None
    args.model = args.model or offline_default()
    return load_model(args.model, controlnet=args.controlnet, device=args.device, dtype=dtype)


class _Progress:
    """A tqdm bar over denoising steps, shared by every image of a run."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", file=sys.stderr)

    def __call__(self, step: int, total: int, x0) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _generate(args: argparse.Namespace) -> int:
    from finecontrol.metadata import save_png

    scene, stored = _read_input(args.scene)
    pipe = _load(args)
    settings = _settings(args, stored, pipe.default_settings())
    progress = _Progress(len(pipe.timestep_scheduler(settings).timesteps))
    result = pipe(scene, settings, callback=progress)
    progress.close()
    save_png(result.image, args.out, scene, settings, model=args.model)
    print(f"wrote {args.out} ({result.image.width}x{result.image.height}, {settings.method}, seed {settings.seed})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from finecontrol.metadata import save_png

    scene, stored = _read_input(args.scene)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods takes a comma-separated list of {', '.join(METHODS)}; got {args.methods!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}") from None
    pipe = _load(args)
    base = _settings(args, stored, pipe.default_settings())
    runs = [[replace(base, method=m, seed=s) for m in methods] for s in seeds]
    progress = _Progress(len(pipe.timestep_scheduler(base).timesteps) * len(methods) * len(seeds))
    images = [[pipe(scene, settings, callback=progress).image for settings in row] for row in runs]
    progress.close()
    grid = labelled_grid(images, methods, [f"seed {s}" for s in seeds])
    save_png(grid, args.out, scene, base, model=args.model, methods=",".join(methods), seeds=args.seeds)
    print(f"wrote {args.out} ({len(seeds)} seeds x {len(methods)} methods)")
    return 0


def _masks(args: argparse.Namespace) -> int:
    scene = _read_input(args.scene)[0]
    if not scene.people:
        raise SceneError("the scene has no people: add at least one person")
    settings = _settings(args, Settings(), Settings())
    panels = mask_previews(
        [p.keypoints for p in scene.people], (scene.width, scene.height),
        settings.mask_dilation, settings.mask_blur, settings.temperature,
    )
    grid = labelled_grid([[Image.fromarray(p) for p in panels]], ["early steps (hard)", "late steps (soft)"], [""])
    grid.save(args.out)
    print(f"wrote {args.out}")
    return 0
