"""Command line: generate one image, compare methods over seeds, or preview the person masks.

    python -m finecontrol generate SCENE.json --out OUT.png [--method M] [--seed S] [--steps K] [--model NAME]
    python -m finecontrol compare SCENE.json --out GRID.png --methods finecontrol,controlnet --seeds 0,1,2
    python -m finecontrol masks SCENE.json --out MASKS.png
    python -m finecontrol batch SCENES... --out DIR --methods finecontrol,controlnet --seeds 0,1 [--metrics ...]
    python -m finecontrol robustness --out DIR [--model toy] [--scenes K]

`batch` and `robustness` share their work between processes under `accelerate launch`.

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

from finecontrol.experiments import Item, SceneInput
from finecontrol.lora_mixing import LoraMixError
from finecontrol.model_info import ModelInfo
from finecontrol.models import DTYPES, RANDOM_WEIGHT_MODELS, TOY_MODEL, ModelNotAvailableError
from finecontrol.pipeline import NonFiniteError, NotEnoughMemoryError
from finecontrol.pose import drawn_parts
from finecontrol.render import labelled_grid, mask_previews
from finecontrol.scene import Scene, SceneError, brief
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
    _methods_and_seeds(compare)
    compare.set_defaults(run=_compare)

    batch = commands.add_parser("batch", help="scenes x methods x seeds, every person scored, report.html")
    batch.add_argument("scenes", type=Path, nargs="+", help="scene JSON files, FineControl PNGs or folders of them")
    _model_flags(batch, toy)
    _methods_and_seeds(batch)
    _metric_flags(batch)
    batch.set_defaults(run=_batch)

    robustness = commands.add_parser(
        "robustness", help="identity against the number of people, their distance and their size ratio"
    )
    robustness.add_argument("--out", type=Path, required=True)
    robustness.add_argument("--scenes", type=int, default=8, help="scenes per value of each axis (default: 8)")
    robustness.add_argument("--axes", default="people,distance,scale", help="comma-separated (default: all)")
    robustness.add_argument(
        "--scenes-only", action="store_true", help="write the scene files to OUT/scenes and stop (no model)"
    )
    _model_flags(robustness, toy, out=False)
    _methods_and_seeds(robustness)
    _metric_flags(robustness)
    robustness.set_defaults(run=_robustness)

    masks = commands.add_parser("masks", help="skeletons over each person's mask, early and late steps")
    masks.add_argument("scene", type=Path)
    masks.add_argument("--out", type=Path, required=True)
    _settings_flags(masks, ["mask_dilation", "mask_blur", "temperature", "pose_parts"], toy)
    masks.set_defaults(run=_masks)
    return parser


def _common(parser: argparse.ArgumentParser, toy: dict) -> None:
    parser.add_argument("scene", type=Path, help="scene JSON, OpenPose JSON or a FineControl PNG")
    _model_flags(parser, toy)


def _methods_and_seeds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default=",".join(COMPARED_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(COMPARED_METHODS)})",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")


def _metric_flags(parser: argparse.ArgumentParser) -> None:
    from finecontrol.experiments import METRICS

    parser.add_argument(
        "--metrics",
        default="auto",
        help=f"comma-separated, of {', '.join(METRICS)}, or none (default auto: toy on the toy model, else clip,pose)",
    )
    parser.add_argument(
        "--clip", help="CLIP hub id or folder for the clip metric (default: openai/clip-vit-base-patch32)"
    )
    parser.add_argument(
        "--annotators",
        help="OpenPose detector weights (hub id or folder) for the pose metric (default: lllyasviel/Annotators)",
    )


def _model_flags(parser: argparse.ArgumentParser, toy: dict, out: bool = True) -> None:
    if out:
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
    from finecontrol.metadata import read_scene_file

    scene, settings = read_scene_file(path)
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


def _parse_methods_and_seeds(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """The --methods and --seeds lists, each value once, in the order given."""
    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SettingsError(
            f"--methods takes a comma-separated list of {', '.join(METHODS)}; got {brief(args.methods)}"
        )
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))
    except ValueError as err:
        raise SettingsError(f"--seeds takes comma-separated whole numbers, got {brief(args.seeds)}") from err
    for seed in seeds:
        replace(Settings(), seed=seed)  # each seed valid before the model loads
    return methods, seeds


def _compare(args: argparse.Namespace) -> int:
    from finecontrol.metadata import save_png

    _check_out(args.out)
    scene, stored = _read_input(args.scene)
    methods, seeds = _parse_methods_and_seeds(args)
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


def _batch_setup(args: argparse.Namespace, scenes: list[SceneInput]) -> tuple:
    """(the process's accelerate state, the model on its device, the base settings, the scorers,
    methods, seeds). Each scene's LoRAs are loaded and the scorers' models too, so that anything
    missing fails before the first image."""
    from accelerate import PartialState

    from finecontrol.experiments import make_scorers
    from finecontrol.loras import load_scene_loras

    if args.out.exists() and not args.out.is_dir():
        raise SettingsError(f"--out {args.out} is a file: give a folder")
    methods, seeds = _parse_methods_and_seeds(args)
    state = PartialState(cpu=args.device == "cpu")
    if args.device is None or (state.num_processes > 1 and args.device == "cuda"):
        args.device = str(state.device)  # under accelerate: this process's own GPU
    pipe = _load(args, None)
    settings = _settings(args, None, pipe.default_settings())
    for source in scenes:  # a PNG's own settings, with the command line's flags over them
        if source.settings is not None:
            source.settings = _settings(args, source.settings, settings)
        load_scene_loras(pipe, source.scene, (source.settings or settings).loras)
    scorers = make_scorers(
        args.metrics,
        args.model,
        [s.scene for s in scenes],
        clip=args.clip,
        annotators=args.annotators,
        device=args.device,
    )
    return state, pipe, settings, scorers, methods, seeds


def _run_shared(
    state, pipe, scenes: list[SceneInput], items: list[Item], out: Path, settings: Settings, scorers: list, model: str
) -> list[dict] | None:
    """This process's share of `items`; then, on the main process, every item's record."""
    from tqdm import tqdm

    from finecontrol.experiments import read_records, run_items, shard

    mine = shard(items, state.process_index, state.num_processes)
    bar = tqdm(total=len(mine), unit="image", file=sys.stderr, disable=not state.is_local_main_process)
    made = run_items(pipe, scenes, mine, out, settings, scorers, progress=lambda: bar.update(1), model=model)
    bar.close()
    who = f"process {state.process_index}: " if state.num_processes > 1 else ""
    print(f"{who}generated {made}, {len(mine) - made} already done", file=sys.stderr)
    state.wait_for_everyone()
    return read_records(out, items) if state.is_main_process else None


def _batch(args: argparse.Namespace) -> int:
    from finecontrol.experiments import find_scenes, plan, write_report, write_results

    scenes = find_scenes(args.scenes)
    state, pipe, settings, scorers, methods, seeds = _batch_setup(args, scenes)
    items = plan(scenes, methods, seeds)
    records = _run_shared(state, pipe, scenes, items, args.out, settings, scorers, args.model)
    if records is not None:
        document = write_results(args.out, records)
        write_report(args.out, records, title=f"FineControl batch: {args.model}")
        for method, values in document["means"].items():
            print(method + ": " + ", ".join(f"{k} {v:g}" for k, v in values.items()))
        print(f"wrote {args.out / 'report.html'}, results.json and results.csv ({len(items)} images)")
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from finecontrol import robustness
    from finecontrol.experiments import write_report, write_results
    from finecontrol.models import offline_default

    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    if not axes or any(a not in robustness.AXES for a in axes):
        raise SettingsError(f"--axes takes a comma-separated list of {', '.join(robustness.AXES)}")
    if args.scenes < 1:
        raise SettingsError(f"--scenes must be at least 1, got {args.scenes}")
    args.model = args.model or offline_default()
    toy = args.model == "toy"
    studies = {axis: robustness.study_scenes(axis, args.scenes, toy) for axis in axes}
    inputs = {axis: [SceneInput(s.name, s.scene) for s in chosen] for axis, chosen in studies.items()}
    if args.scenes_only:
        robustness.write_scenes(args.out / "scenes", studies)
        print(f"wrote {sum(map(len, studies.values()))} scenes to {args.out / 'scenes'}")
        return 0
    state, pipe, settings, scorers, methods, seeds = _batch_setup(args, sum(inputs.values(), []))
    if state.is_main_process:
        robustness.write_scenes(args.out / "scenes", studies)
    score = "toy_identity" if any(s.name == "toy" for s in scorers) else "clip_own_wins"
    for axis, chosen in studies.items():
        items = [Item(s.name, m, seed) for s in inputs[axis] for seed in seeds for m in methods]
        out = args.out / axis
        records = _run_shared(state, pipe, inputs[axis], items, out, settings, scorers, args.model)
        if records is None:
            continue
        write_results(out, records)
        write_report(out, records, title=f"Robustness: {robustness.LABELS[axis]}")
        if not any(p.get(score) is not None for r in records for p in r["people"]):
            print(f"note: no {score} scores (--metrics {args.metrics}): no plot for {axis}", file=sys.stderr)
            (args.out / f"{axis}.png").unlink(missing_ok=True)  # a plot of an earlier run's scores
            continue
        curves = robustness.identity_by_value(records, chosen, score)
        robustness.plot(axis, robustness.AXES[axis], curves, score, args.out / f"{axis}.png")
        for method, means in curves.items():
            print(f"{axis} {method}: " + ", ".join(f"{v:g}: {m:.3f}" for v, m in zip(robustness.AXES[axis], means)))
    if state.is_main_process:
        robustness.write_index(args.out, axes, f"Robustness study: {args.model}")
        print(f"wrote {args.out / 'report.html'}")
    return 0
