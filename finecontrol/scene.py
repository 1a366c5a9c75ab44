"""The scene document shared by the app, the CLI and the tests.

On disk a scene is OpenPose JSON as pose editors write it (`canvas_width`, `canvas_height`,
`people[].pose_keypoints_2d` with 18 x [x, y, confidence] in pixels) plus FineControl's fields:
a `prompt` (and optional `negative_prompt`, `control_strength`) per person, and the scene's
`setting`, `negative_prompt` and `format` version. Fields this module does not know (hand or face
keypoints, editor extras) are kept and written back, so nothing a user made is lost.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finecontrol.pose import NUM_KEYPOINTS, visible_limbs

FORMAT_VERSION = 1
MAX_PEOPLE = 8
MIN_CANVAS, MAX_CANVAS = 64, 1536
DEFAULT_CANVAS = 512
DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
MAX_CONTROL_STRENGTH = 5.0

_NUMBER_LIST = re.compile(r"\[([-+0-9.eE,\s]+)\]")
_PERSON_FIELDS = {"pose_keypoints_2d", "prompt", "negative_prompt", "control_strength"}
_SCENE_FIELDS = {"canvas_width", "canvas_height", "people", "setting", "negative_prompt", "format"}


class SceneError(ValueError):
    """A scene document that cannot be used, with a message that says exactly why."""


@dataclass(eq=False)
class Person:
    """One person: an (18, 3) pose in canvas pixels and the text that describes them."""

    keypoints: np.ndarray
    prompt: str = ""
    negative_prompt: str | None = None
    control_strength: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Person):
            return NotImplemented
        return np.array_equal(self.keypoints, other.keypoints) and (
            self.prompt,
            self.negative_prompt,
            self.control_strength,
            self.extra,
        ) == (other.prompt, other.negative_prompt, other.control_strength, other.extra)


@dataclass
class Scene:
    """A canvas, the people on it, the shared setting and the negative prompt."""

    width: int = DEFAULT_CANVAS
    height: int = DEFAULT_CANVAS
    people: list[Person] = field(default_factory=list)
    setting: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The scene as an OpenPose-compatible JSON object (extra fields kept)."""
        people = []
        for person in self.people:
            entry: dict[str, Any] = dict(person.extra)
            entry["pose_keypoints_2d"] = [float(v) for v in person.keypoints.reshape(-1)]
            entry["prompt"] = person.prompt
            if person.negative_prompt is not None:
                entry["negative_prompt"] = person.negative_prompt
            if person.control_strength is not None:
                entry["control_strength"] = person.control_strength
            people.append(entry)
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT_VERSION,
            canvas_width=self.width,
            canvas_height=self.height,
            people=people,
            setting=self.setting,
            negative_prompt=self.negative_prompt,
        )
        return doc

    def to_json(self) -> str:
        """Indented JSON with each person's keypoints on one line."""
        text = json.dumps(self.to_dict(), indent=1)
        return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def load_scene(path: str | Path) -> Scene:
    """Read and validate a scene (or plain OpenPose JSON) file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SceneError(f"{path} is not a text file: expected scene or OpenPose JSON") from err
    except OSError as err:
        raise SceneError(f"cannot read {path}: {err.strerror or err}") from err
    return scene_from_json(text)


def scene_from_json(text: str) -> Scene:
    """Parse and validate scene JSON text."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise SceneError(f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from err
    return scene_from_dict(doc)


def scene_from_dict(doc: Any) -> Scene:
    """Validate a decoded JSON object and build a Scene. Raises SceneError with a specific reason."""
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
        doc = doc[0]  # some editors export a list with one frame
    if not isinstance(doc, dict):
        raise SceneError("expected a JSON object with 'people' (OpenPose format)")
    version = doc.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SceneError(f"unknown scene format version {version!r}: this FineControl reads version {FORMAT_VERSION}")
    people_doc = doc.get("people")
    if not isinstance(people_doc, list):
        raise SceneError("'people' must be a list of persons with 'pose_keypoints_2d'")
    if len(people_doc) > MAX_PEOPLE:
        raise SceneError(f"too many people: {len(people_doc)} (at most {MAX_PEOPLE})")

    width = _canvas_size(doc, "canvas_width")
    height = _canvas_size(doc, "canvas_height")
    poses = [_keypoints(entry, i) for i, entry in enumerate(people_doc)]
    if poses and all(np.abs(p[:, :2]).max() <= 1.0 for p in poses):
        for p in poses:  # normalised coordinates, as editors accept them
            p[:, 0] *= width
            p[:, 1] *= height

    people = []
    for i, (entry, pose) in enumerate(zip(people_doc, poses)):
        if len(visible_limbs(pose)) == 0:
            raise SceneError(f"person {i + 1} has fewer than 2 visible connected keypoints: show at least one limb")
        people.append(
            Person(
                keypoints=pose,
                prompt=_text(entry, "prompt", f"person {i + 1}") or "",
                negative_prompt=_text(entry, "negative_prompt", f"person {i + 1}"),
                control_strength=_strength(entry.get("control_strength"), i),
                extra={k: v for k, v in entry.items() if k not in _PERSON_FIELDS},
            )
        )
    negative = _text(doc, "negative_prompt", "scene")
    return Scene(
        width=width,
        height=height,
        people=people,
        setting=_text(doc, "setting", "scene") or "",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative is None else negative,
        extra={k: v for k, v in doc.items() if k not in _SCENE_FIELDS},
    )


def _canvas_size(doc: dict, key: str) -> int:
    value = doc.get(key, DEFAULT_CANVAS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SceneError(f"{key} must be a number of pixels, got {value!r}")
    if value != int(value):
        raise SceneError(f"{key} must be a whole number of pixels, got {value}")
    value = int(value)
    if not MIN_CANVAS <= value <= MAX_CANVAS:
        raise SceneError(f"{key} {value} is out of range: use {MIN_CANVAS}..{MAX_CANVAS} pixels")
    if value % 8:
        raise SceneError(f"{key} {value} is not a multiple of 8 (try {round(value / 8) * 8})")
    return value


def _keypoints(entry: Any, i: int) -> np.ndarray:
    if not isinstance(entry, dict) or "pose_keypoints_2d" not in entry:
        raise SceneError(f"person {i + 1} has no 'pose_keypoints_2d'")
    values = entry["pose_keypoints_2d"]
    if not isinstance(values, list) or len(values) != NUM_KEYPOINTS * 3:
        count = len(values) if isinstance(values, list) else type(values).__name__
        raise SceneError(
            f"person {i + 1} has {count} keypoint values: expected {NUM_KEYPOINTS * 3} "
            f"({NUM_KEYPOINTS} BODY-18 keypoints as x, y, confidence)"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SceneError(f"person {i + 1} has keypoint values that are not numbers")
    pose = np.asarray(values, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
    if not np.isfinite(pose).all():
        raise SceneError(f"person {i + 1} has non-finite keypoint values (NaN or infinity)")
    return pose


def _text(doc: dict, key: str, owner: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise SceneError(f"{owner}: '{key}' must be text, got {type(value).__name__}")
    return value


def _strength(value: Any, i: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SceneError(f"person {i + 1}: control_strength must be a number, got {value!r}")
    if not 0.0 <= value <= MAX_CONTROL_STRENGTH:
        raise SceneError(f"person {i + 1}: control_strength {value} is out of range 0..{MAX_CONTROL_STRENGTH}")
    return float(value)
