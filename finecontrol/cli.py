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

import torch
from PIL import Image

from finecontrol.lora_mixing import LoraMixError
from finecontrol.model_info import ModelInfo
from finecontrol.models import DTYPES, RANDOM_WEIGHT_MODELS, TOY_MODEL, ModelNotAvailableError
from finecontrol.pipeline import NonFiniteError, NotEnoughMemoryError
from finecontrol.pose import drawn_parts
from finecontrol.render import labelled_grid, mask_previews
from finecontrol.scene import Scene, SceneError, brief, load_scene
from finecontrol.settings import COMPARED_METHODS, METHODS, Settings, SettingsError, knobs, random_seed

# Errors in what the user gave or has (a scene, a setting, a model that is not here, a file that
# cannot be read or written, a GPU without the memory): one `error:` line. Anything else is a bug
# and keeps its traceback.
_USER_ERRORS = (
    SceneError,
    SettingsError,
    ModelNotAvailableError,
    OSError,
    torch.OutOfMemoryError,
    NotEnoughMemoryError,
    NonFiniteError,
    LoraMixError,
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except _USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finecontrol", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    toy = ModelInfo.read(TOY_MODEL).defaults if TOY_MODEL.is_dir() else {}  # for the help texts

    generate = commands.add_parser("generate", help="generate one image")
    _common(generate, toy)
    _settings_flags(generate, ["method", "seed"], toy)
    generate.set_defaults(run=_generate)

    compare = commands.add_parser("compare", help="methods side by side over seeds, as a labelled grid")
    _common(compare, toy)
    compare.add_argument(
        "--methods",
        default=",".join(COMPARED_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(COMPARED_METHODS)})",
    )
    compare.add_argument("--seeds", default="0", help="comma-separated seeds, one grid row each")
    compare.set_defaults(run=_compare)

    masks = commands.add_parser("masks", help="skeletons over each person's mask, early and late steps")
    masks.add_argument("scene", type=Path)
    masks.add_argument("--out", type=Path, required=True)
    _settings_flags(masks, ["mask_dilation", "mask_blur", "temperature", "pose_parts"], toy)
    masks.set_defaults(run=_masks)
    return parser


def _common(parser: argparse.ArgumentParser, toy: dict) -> None:
    parser.add_argument("scene", type=Path, help="scene JSON, OpenPose JSON or a FineControl PNG")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--model",
        help="toy, tiny, tiny-sdxl, sd15, sd15-random, sdxl, a hub id, a local folder or a single-file "
        "checkpoint (FILE.safetensors) (default: toy, else tiny); tiny, tiny-sdxl and sd15-random have "
        "random weights: their images are noise",
    )
    parser.add_argument(
        "--controlnet",
        help="OpenPose ControlNet hub id or folder (default: lllyasviel/control_v11p_sd15_openpose for SD1.x, "
        "xinsir/controlnet-openpose-sdxl-1.0 for SDXL)",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="weights and compute (default: float16 on CUDA, float32 on CPU)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        help="most branches per model call, to fit in memory; the image is the same "
        "(default: all on CPU, what the free memory holds on CUDA)",
    )
    _settings_flags(
        parser, [name for name, knob in knobs().items() if knob.flag and name not in ("method", "seed")], toy
    )


def _settings_flags(parser: argparse.ArgumentParser, names: list[str], toy: dict) -> None:
    """One flag per Settings field, its help and defaults (the paper's; the toy model's, `toy`,
    where it has its own) from the field's Knob."""
    paper = Settings()
    for name in names:
        knob = knobs()[name]
        default = "the PNG's, else random" if name == "seed" else _shown(getattr(paper, name))
        if name in toy and toy[name] != getattr(paper, name):
            default += f"; toy: {_shown(toy[name])}"
        if name == "loras":  # repeatable: --lora A:0.8 --lora B
            parser.add_argument(
                "--lora", dest=name, action="append", metavar="NAME[:SCALE]", help=f"{knob.help}; repeatable"
            )
            continue
        parser.add_argument(
            f"--{knob.flag}",
            dest=name,
            type={"int": int, "number": float}.get(knob.kind, str),
            choices=knob.choices or None,
            metavar=None if knob.choices else knob.flag.upper(),
            help=f"{knob.help} (default: {default})",
        )


def _flag(args: argparse.Namespace, name: str):
    """A settings flag's value (None when not given); the repeated --lora flags joined."""
    value = getattr(args, name, None)
    return ", ".join(value) if isinstance(value, list) else value


def _shown(value) -> str:
    return "automatic" if value is None else repr(value) if isinstance(value, str) else str(value)


def _read_input(path: Path) -> tuple[Scene, Settings | None]:
    if path.suffix.lower() == ".png":
        from finecontrol.metadata import read_png

        scene, settings = read_png(path)
    else:
        scene, settings = load_scene(path), None
    for note in scene.notes:
        print(f"note: {note}", file=sys.stderr)
    return scene, settings


def _check_out(path: Path, png: bool = True) -> None:
    """Refuse an --out that cannot be written as asked before any work starts: a directory, or
    (`png`) a name that is not .png, since only a PNG carries the scene and settings."""
    if path.is_dir():
        raise SettingsError(f"--out {path} is a folder: give a file name, e.g. {path / 'out.png'}")
    if png and path.suffix.lower() != ".png":
        raise SettingsError(
            f"--out {path}: FineControl writes PNGs, which carry the scene and settings; use a .png name"
        )
    if not png and Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise SettingsError(f"--out {path}: unknown image type {path.suffix!r}; use .png, .jpg or .webp")


def _settings(args: argparse.Namespace, stored: Settings | None, defaults: Settings) -> Settings:
    """The stored settings (from a PNG) or the model's defaults, with the command line's flags."""
    changes = {name: _flag(args, name) for name in knobs() if _flag(args, name) is not None}
    if stored is None and "seed" not in changes:
        changes["seed"] = random_seed()
    return replace(stored or defaults, **changes)


def _load(args: argparse.Namespace, stored: Settings | None):
    """The model, once the flags are known to be valid with the settings they change (checked
    before loading, which takes seconds)."""

    from finecontrol.models import load_model, offline_default

    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.max_batch is not None and args.max_batch < 1:
        raise SettingsError(f"--max-batch must be at least 1, got {args.max_batch}")
    for name in knobs():  # each flag's value valid on its own now (the model's defaults come later)
        if (value := _flag(args, name)) is not None:
            pair = {"width": value, "height": value} if name in ("width", "height") else {name: value}
            replace(Settings(), **pair)
    args.model = args.model or offline_default()
    pipe = load_model(args.model, controlnet=args.controlnet, device=args.device, dtype=dtype)
    pipe.max_batch = args.max_batch
    if args.model in RANDOM_WEIGHT_MODELS:
        print(f"note: {args.model} has random weights: its images are noise", file=sys.stderr)
    return pipe


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
    from finecontrol.loras import load_scene_loras
    from finecontrol.metadata import save_png

    _check_out(args.out)
    scene, stored = _read_input(args.scene)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipe = _load(args, stored)
    settings = _settings(args, stored, pipe.default_settings())
    load_scene_loras(pipe, scene, settings.loras)  # a missing LoRA fails before the first step
    progress = _Progress(len(pipe.timestep_scheduler(settings).timesteps))
    result = pipe(scene, settings, callback=progress)
    progress.close()
    save_png(result.image, args.out, scene, settings, model=args.model)
    print(f"wrote {args.out} ({result.image.width}x{result.image.height}, {settings.method}, seed {settings.seed})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from finecontrol.metadata import save_png

    _check_out(args.out)
    scene, stored = _read_input(args.scene)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SettingsError(
            f"--methods takes a comma-separated list of {', '.join(METHODS)}; got {brief(args.methods)}"
        )
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as err:
        raise SettingsError(f"--seeds takes comma-separated whole numbers, got {brief(args.seeds)}") from err
    for seed in seeds:
        replace(Settings(), seed=seed)  # each seed valid before the model loads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pipe = _load(args, stored)
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
    _check_out(args.out, png=False)
    scene, stored = _read_input(args.scene)
    if not scene.people:
        raise SceneError("the scene has no people: add at least one person")
    settings = _settings(args, stored or Settings(), Settings())  # a PNG's own mask settings, then the flags
    panels = mask_previews(
        [p.keypoints for p in scene.people],
        (scene.width, scene.height),
        settings.mask_dilation,
        settings.mask_blur,
        settings.temperature,
        [drawn_parts(p.parts, settings.pose_parts) for p in scene.people],
    )
    grid = labelled_grid([[Image.fromarray(p) for p in panels]], ["early steps (hard)", "late steps (soft)"], [""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")
    return 0
