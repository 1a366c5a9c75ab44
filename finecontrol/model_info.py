"""What a model folder declares beyond diffusers' configs: its `finecontrol.json`."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from finecontrol.render import ANNOTATOR_JOINT_RADIUS, ANNOTATOR_STICK_WIDTH
from finecontrol.scene import MAX_CANVAS, MIN_CANVAS, brief, is_finite_number
from finecontrol.settings import Settings, SettingsError

MODEL_INFO = "finecontrol.json"
# What counts as a word when a prompt is checked against a model's vocabulary: a run of letters or
# digits, lower-cased (punctuation and spaces separate words). WORD_PATTERN is the same rule for
# the browser (a JavaScript regular expression with the u flag).
WORD_PATTERN = r"[\p{L}\p{N}]+"
_WORD = re.compile(r"[^\W_]+")
STROKE_SCALINGS = ("fixed", "xinsir")
MAX_DRAWING_PIXELS = 64  # largest stick width or joint radius (the annotator's are 4)


@dataclass(frozen=True)
class ModelInfo:
    """A model's own facts; every field is optional in the file, unknown keys are refused.

    resolution: native size in pixels (longer side, MIN_CANVAS..MAX_CANVAS); scenes are generated at
        that size unless the settings give width and height. None: at the canvas size.
    stick_width, joint_radius: how its control images are drawn, 1..MAX_DRAWING_PIXELS pixels
        (default: the OpenPose annotator's 4 and 4, what the public OpenPose ControlNets were trained on).
    stroke_scaling: "fixed" (those sizes at any image size) or "xinsir" (multiplied by
        `render.stroke_ratio` of the image's size, as xinsir's SDXL OpenPose ControlNet's training
        poses were drawn: 3x at 1024 px).
    vocabulary: the only words the model understands (the toy model); empty: any text.
    defaults: Settings values that replace the paper's defaults for this model.
    negative_prompt: the app's default negative prompt for this model; None: the paper's.
    training_minutes: how long it took to train (informative).
    """

    resolution: int | None = None
    stick_width: int = ANNOTATOR_STICK_WIDTH
    joint_radius: int = ANNOTATOR_JOINT_RADIUS
    stroke_scaling: str = "fixed"
    vocabulary: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    negative_prompt: str | None = None
    training_minutes: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vocabulary, str) or not isinstance(self.vocabulary, (list, tuple)):
            raise SettingsError(f"{MODEL_INFO}: vocabulary must be a list of words, got {brief(self.vocabulary)}")
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        for name in ("stick_width", "joint_radius"):
            _check_whole(name, getattr(self, name), 1, MAX_DRAWING_PIXELS)
        if self.stroke_scaling not in STROKE_SCALINGS:
            raise SettingsError(
                f"{MODEL_INFO}: stroke_scaling must be one of {', '.join(STROKE_SCALINGS)}, "
                f"got {brief(self.stroke_scaling)}"
            )
        if self.resolution is not None:
            _check_whole("resolution", self.resolution, MIN_CANVAS, MAX_CANVAS)
        if not all(isinstance(word, str) for word in self.vocabulary):
            raise SettingsError(f"{MODEL_INFO}: vocabulary must be a list of words")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise SettingsError(
                f"{MODEL_INFO}: negative_prompt must be text or null, got {brief(self.negative_prompt)}"
            )
        if self.training_minutes is not None and not is_finite_number(self.training_minutes):
            raise SettingsError(
                f"{MODEL_INFO}: training_minutes must be a number or null, got {brief(self.training_minutes)}"
            )
        if not isinstance(self.defaults, dict):
            raise SettingsError(
                f'{MODEL_INFO}: defaults must be an object of settings such as {{"steps": 30}}, '
                f"got {brief(self.defaults)}"
            )
        self.default_settings()  # refuses unknown or invalid defaults, by name

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelInfo:
        """The info in `values`, refusing keys it does not know (a misspelt key would otherwise be ignored)."""
        if not isinstance(values, dict):
            raise SettingsError(f"{MODEL_INFO} must hold a JSON object, got {brief(values)}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"{MODEL_INFO}: unknown key(s) {brief(', '.join(unknown))}; known: {', '.join(known)}")
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> ModelInfo:
        """The folder's `finecontrol.json`, or the defaults when it has none."""
        path = Path(folder) / MODEL_INFO
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
            raise SettingsError(f"{MODEL_INFO} is not valid JSON: {brief(str(err))}") from err
        return cls.from_dict(values)

    def write(self, folder: str | Path) -> None:
        values = asdict(self)
        values["vocabulary"] = list(self.vocabulary)
        (Path(folder) / MODEL_INFO).write_text(json.dumps(values, indent=1) + "\n")

    def default_settings(self) -> Settings:
        """The paper's defaults with this model's `defaults` applied."""
        try:
            return Settings.from_dict({**Settings().to_dict(), **self.defaults})
        except SettingsError as err:
            raise SettingsError(f"{MODEL_INFO}: defaults: {err}") from err


def _check_whole(name: str, value: Any, low: int, high: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise SettingsError(f"{MODEL_INFO}: {name} must be a positive whole number ({low}..{high}), got {brief(value)}")


def unknown_words(text: str, vocabulary: tuple[str, ...] | list[str]) -> list[str]:
    """The words of `text` outside `vocabulary`, lower-cased, each once, in order of appearance;
    none when the vocabulary is empty (a model that takes any text)."""
    if not vocabulary:
        return []
    known = set(vocabulary)
    return list(dict.fromkeys(w for w in _WORD.findall(text.lower()) if w not in known))
