"""Generation settings: one source for every knob's meaning, default, valid range, the paper's value,
its command-line flag and its control in the app.

`Settings` holds the values (immutable once validated; change one with `dataclasses.replace`);
each field's `Knob` (in its metadata, read with `knobs()`) says what it means and how it is
offered, so the CLI's flags and help and the app's Advanced panel are generated from here.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

from finecontrol.pose import PART_CHOICES
from finecontrol.scene import MAX_CANVAS, MIN_CANVAS, SceneError, brief, is_finite_number, parse_loras, text_problem

METHODS = ("finecontrol", "controlnet", "multicontrolnet", "finecontrol-all")
COMPOSING_METHODS = ("finecontrol", "finecontrol-all")  # one branch per person, merged with masks
COMPARED_METHODS = ("finecontrol", "controlnet", "multicontrolnet")  # the paper's method and its baselines
SCHEDULERS = ("ddim", "ddim-original", "dpm++", "unipc", "lcm", "tcd")
MAX_SEED = 2**32 - 1
POSE_PARTS = tuple(PART_CHOICES)  # what the control image draws of each person


@dataclass(frozen=True)
class Knob:
    """What a setting means and how it is offered.

    `kind` is "choice", "int", "number" or "text"; `low`..`high` the valid range of numbers;
    `flag` the command-line flag (None: not on the command line); `widget` the app's control
    ("dropdown", "slider", "number", "text"; None: not in the app), shown with `label`; a slider
    spans the whole valid range in steps of `ui_step`, and `ui_none` is the control's value that
    stands for None (the automatic value) where the field has one.
    """

    help: str
    kind: str
    paper: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None
    widget: str | None = None
    label: str = ""
    ui_step: float | None = None
    ui_none: float | None = None


def _knob(default: Any, **knob: Any) -> Any:
    return field(default=default, metadata={"knob": Knob(**knob)})


@dataclass(frozen=True)
class Settings:
    """Generation knobs; the defaults are the paper's evaluation settings.

    Every field's meaning, unit, valid range and the paper's value are in its `Knob` below, listed
    under "Fields" at the end of this docstring (also by `python -m finecontrol generate --help`).

    """

    method: str = _knob(
        "finecontrol",
        kind="choice",
        choices=METHODS,
        paper="finecontrol",
        flag="method",
        widget="dropdown",
        label="Method",
        help="how the people are combined: finecontrol (the paper's h-control), finecontrol-all (also "
        "after every UNet transformer block, the paper's Figure 4), controlnet (one global prompt, all "
        "skeletons in one map), multicontrolnet (ControlNet per person, residuals summed, one UNet "
        "pass with the global prompt)",
    )
    steps: int = _knob(
        20,
        kind="int",
        low=1,
        high=200,
        paper="20 for evaluation, 30 in the demo",
        flag="steps",
        widget="slider",
        label="Steps",
        ui_step=1,
        help="denoising steps (ddim-original runs one more when they do not divide 1000, as the original)",
    )
    guidance_scale: float = _knob(
        9.0,
        kind="number",
        low=0.0,
        high=50.0,
        paper="9.0",
        flag="guidance",
        widget="slider",
        label="Guidance scale",
        ui_step=0.5,
        help="classifier-free guidance scale",
    )
    control_strength: float = _knob(
        1.5,
        kind="number",
        low=0.0,
        high=5.0,
        paper="1.5",
        flag="strength",
        widget="slider",
        label="Control strength (people without their own)",
        ui_step=0.05,
        help="ControlNet scale for people without their own control_strength",
    )
    harmony: float = _knob(
        0.5,
        kind="number",
        low=0.0,
        high=1.0,
        paper="0.5 (steps // 2)",
        flag="harmony",
        widget="slider",
        label="Harmony (fraction of final steps with soft masks)",
        ui_step=0.05,
        help="fraction of the final steps whose masks blend softly (int(steps * harmony) steps); "
        "the earlier steps give every pixel to one person",
    )
    temperature: float = _knob(
        0.001,
        kind="number",
        low=1e-6,
        high=100.0,
        paper="0.001",
        flag="temperature",
        widget="number",
        label="Mask temperature",
        help="softmax temperature of the soft masks",
    )
    mask_dilation: int | None = _knob(
        None,
        kind="int",
        low=1,
        high=512,
        paper="shorter side // 8, made odd",
        flag="dilation",
        widget="slider",
        label="Mask dilation, px (0: automatic, shorter side / 8)",
        ui_step=1,
        ui_none=0,
        help="square dilation kernel of the person masks, pixels (1: none); automatic: the image's shorter "
        "side // 8, made odd (65 at 512x512 and 512x768, 97 at 768x768)",
    )
    mask_blur: float = _knob(
        1.0,
        kind="number",
        low=0.0,
        high=64.0,
        paper="1.0",
        flag="blur",
        widget="slider",
        label="Mask blur sigma, px",
        ui_step=0.5,
        help="Gaussian blur sigma of the person masks, pixels",
    )
    seed: int = _knob(
        0,
        kind="int",
        low=0,
        high=MAX_SEED,
        flag="seed",
        widget="number",
        label="Seed",
        help="initial noise seed, drawn on the CPU so that a seed gives the same image on any device",
    )
    width: int | None = _knob(
        None,
        kind="int",
        low=MIN_CANVAS,
        high=MAX_CANVAS,
        flag="width",
        help="generation width in pixels, a multiple of 8, given with height; none: the scene's canvas "
        "scaled to the model's native resolution",
    )
    height: int | None = _knob(
        None,
        kind="int",
        low=MIN_CANVAS,
        high=MAX_CANVAS,
        flag="height",
        help="generation height in pixels, a multiple of 8, given with width",
    )
    scheduler: str = _knob(
        "ddim",
        kind="choice",
        choices=SCHEDULERS,
        paper="ddim (the original grid)",
        flag="scheduler",
        widget="dropdown",
        label="Scheduler",
        help="sampler: ddim (diffusers' leading grid, the original's when the steps divide 1000), "
        "ddim-original (the original grid at any step count), dpm++, unipc, lcm and tcd (for few-step "
        "models and LoRAs such as LCM-LoRA, 4-8 steps at guidance 1-2)",
    )
    quality_suffix: str = _knob(
        "best quality",
        kind="text",
        paper="best quality",
        flag="suffix",
        widget="text",
        label="Quality suffix",
        help="appended to every prompt",
    )
    eta: float = _knob(0.0, kind="number", low=0.0, high=1.0, paper="0", flag="eta", help="DDIM eta (0: deterministic)")
    pose_parts: str = _knob(
        "body+hands+face",
        kind="choice",
        choices=POSE_PARTS,
        flag="pose-parts",
        widget="dropdown",
        label="Control image draws",
        help="what the control image (and so each person's mask) draws of the people who have hand and "
        "face keypoints: body, body+hands or body+hands+face, as ControlNet's OpenPose annotator draws "
        "them (the OpenPose ControlNet v1.1 was trained with and without hands and faces); people "
        "without them are drawn the same either way",
    )
    loras: str = _knob(
        "",
        kind="text",
        flag="lora",
        widget="text",
        label="Global LoRAs (NAME:SCALE, ...)",
        help="LoRAs for every person's branch, as NAME[:SCALE] separated by commas (scale 1 when left out): "
        "a file, a folder, a name in a loras/ folder or a hub id; people's own LoRAs are in the scene",
    )

    def __post_init__(self) -> None:
        for name, knob in knobs().items():
            _validate(name, knob, getattr(self, name), nullable=Settings.__dataclass_fields__[name].default is None)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check(
                value is None or value % 8 == 0,
                f"{name} must be a multiple of 8 in {MIN_CANVAS}..{MAX_CANVAS}, got {brief(value)}",
            )
        _check((self.width is None) == (self.height is None), "give width and height together, or neither")
        try:
            parse_loras(self.loras)
        except SceneError as err:
            raise SettingsError(str(err)) from err

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        """Settings from a dict, rejecting unknown keys by name."""
        _check(isinstance(values, dict), f"settings must be a JSON object of named values, got {brief(values)}")
        unknown = sorted(set(values) - set(knobs()))
        names = ", ".join(map(str, unknown))
        _check(not unknown, f"unknown settings: {names if len(names) <= 80 else names[:77] + '...'}")
        return cls(**values)


def _field_docs() -> str:
    """Every field's meaning, default and the paper's value, for Settings' docstring (help(Settings))."""
    lines = ["Fields:"]
    for f in fields(Settings):
        knob = f.metadata["knob"]
        paper = f"; the paper: {knob.paper}" if knob.paper else ""
        lines.append(f"        {f.name} (default {f.default!r}{paper}): {knob.help}.")
    return "\n".join(lines)


Settings.__doc__ += _field_docs()


@cache
def knobs() -> dict[str, Knob]:
    """Every Settings field's Knob, in field order (built once; do not modify)."""
    return {f.name: f.metadata["knob"] for f in fields(Settings)}


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


def _validate(name: str, knob: Knob, value: Any, nullable: bool) -> None:
    if value is None and nullable:
        return
    if knob.kind == "choice":
        _check(value in knob.choices, f"{name} must be one of {', '.join(knob.choices)}, got {brief(value)}")
    elif knob.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and knob.low <= value <= knob.high
        _check(ok, f"{name} must be a whole number in {knob.low}..{knob.high}, got {brief(value)}")
    elif knob.kind == "number":
        _check(
            is_finite_number(value) and knob.low <= value <= knob.high,
            f"{name} must be a number in {knob.low:g}..{knob.high:g}, got {brief(value)}",
        )
    else:
        _check(isinstance(value, str), f"{name} must be text, got {brief(value)}")
        problem = text_problem(value)
        _check(problem is None, f"{name} {problem}")


class SettingsError(ValueError):
    """A setting (or a model's declared default) that is not valid, with what is expected."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)
