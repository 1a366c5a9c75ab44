"""The scene document shared by the app, the CLI and the tests.

On disk a scene is OpenPose JSON as pose editors write it (`canvas_width`, `canvas_height`,
`people[].pose_keypoints_2d` with 18 x [x, y, confidence] in pixels) plus FineControl's fields:
a `prompt` (and optional `negative_prompt`, `control_strength`) per person, and the scene's
`setting`, `negative_prompt` and `format` version. A person's hands and face
(`hand_left_keypoints_2d`, `hand_right_keypoints_2d`: 21 x [x, y, confidence]; `face_keypoints_2d`:
70 of them; each may also be an empty list) are read in the body's coordinates. Fields this module
does not know (3D keypoints, editor extras) are kept and written back, so nothing a user made is lost.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finecontrol.pose import NUM_KEYPOINTS, PART_KEYPOINTS, Parts, visible_limbs

FORMAT_VERSION = 1
MAX_PEOPLE = 8
MIN_CANVAS, MAX_CANVAS = 64, 1536
DEFAULT_CANVAS = 512
DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
MAX_CONTROL_STRENGTH = 5.0
# Keypoints may lie off the canvas (a person cut by the frame) by up to one canvas size beyond
# each edge: every limb that can cross the picture still has both ends in range, and coordinates
# stay small enough for the renderer (OpenCV draws with 32-bit integers).
OFF_CANVAS = 1.0  # canvas sizes beyond each edge
MAX_TEXT_CHARS = 2000  # per prompt, setting or negative prompt (CLIP reads the first 77 tokens)
MAX_EXTRA_BYTES = 256 * 1024  # fields FineControl does not use (3D keypoints, editor extras...), as JSON
MAX_SCENE_BYTES = 4 * 1024 * 1024  # a scene document's JSON text
MAX_NESTING = 64  # JSON depth
COORDINATES = ("pixels", "normalized")  # the optional "coordinates" field's values
# Without a "coordinates" field, a document is read as normalised (0..1 of the canvas) when every
# visible keypoint lies within this many units of 0: as pixels, such people would be 2 px tall.
NORMALISED_GUESS_LIMIT = 2.0
MAX_LORAS_PER_PERSON = 4
LORA_SCALE_LIMIT = 4.0  # a LoRA's scale lies in -LORA_SCALE_LIMIT..LORA_SCALE_LIMIT
MAX_LORA_NAME_CHARS = 500

_NUMBER_LIST = re.compile(r"\[([-+0-9.eE,\s]+)\]")
_PERSON_FIELDS = {"pose_keypoints_2d", "prompt", "negative_prompt", "control_strength", "loras", *PART_KEYPOINTS}
_SCENE_FIELDS = {"canvas_width", "canvas_height", "people", "setting", "negative_prompt", "format", "coordinates"}


class SceneError(ValueError):
    """A scene document that cannot be used, with a message that says exactly why."""


def brief(value: Any, limit: int = 80) -> str:
    """`repr(value)` for a message, cut to `limit` characters (a message never echoes a huge input)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond Python's digit limit; a deeply nested list
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite as a float; False for ints too large for one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def text_problem(text: str) -> str | None:
    """What is wrong with a prompt, setting or text setting, as the end of a message: longer than
    MAX_TEXT_CHARS, or half of a UTF-16 surrogate pair (which no UTF-8 file or tokenizer takes);
    None when nothing is."""
    if len(text) > MAX_TEXT_CHARS:
        return f"is {len(text)} characters long: at most {MAX_TEXT_CHARS}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"holds an invalid character at position {err.start}: half of a UTF-16 pair"
    return None


@dataclass(frozen=True)
class LoraRef:
    """A LoRA by name (a file, a folder, a name in a LoRA folder or a hub id) and its scale."""

    name: str
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}


def lora_ref(name: Any, scale: Any, owner: str) -> LoraRef:
    """A validated LoraRef; SceneError naming `owner` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise SceneError(f"{owner}: a LoRA's name must be non-empty text, got {brief(name)}")
    if len(name) > MAX_LORA_NAME_CHARS or text_problem(name):
        raise SceneError(f"{owner}: LoRA name {brief(name)} is too long or holds an invalid character")
    if not is_finite_number(scale) or not -LORA_SCALE_LIMIT <= scale <= LORA_SCALE_LIMIT:
        raise SceneError(
            f"{owner}: LoRA {brief(name)} has scale {brief(scale)}: "
            f"a number in {-LORA_SCALE_LIMIT:g}..{LORA_SCALE_LIMIT:g}"
        )
    return LoraRef(name.strip(), float(scale))


def parse_loras(text: str, owner: str = "loras") -> list[LoraRef]:
    """`"NAME:SCALE, NAME2"` (scale 1 when left out) -> LoraRefs; SceneError when malformed.
    The scale is what follows the last colon, so a name may hold colons (a Windows path)."""
    refs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, scale = item, 1.0
        head, colon, tail = item.rpartition(":")
        if colon and not head:
            raise SceneError(f"{owner}: {brief(item)} has no name before its scale")
        if colon and not tail.startswith(("\\", "/")):
            try:
                name, scale = head, float(tail)
            except ValueError as err:
                raise SceneError(f"{owner}: {brief(item)} is not NAME or NAME:SCALE (SCALE a number)") from err
        refs.append(lora_ref(name, scale, owner))
    return refs


def format_loras(refs: list[LoraRef]) -> str:
    """LoraRefs as `parse_loras` reads them."""
    return ", ".join(f"{ref.name}:{ref.scale:g}" for ref in refs)


@dataclass(eq=False)
class Person:
    """One person: an (18, 3) pose in canvas pixels, their hands and face (`parts`: field name ->
    (21 or 70, 3) array in the same pixels, or (0, 3) for an empty list) and the text that describes them."""

    keypoints: np.ndarray
    prompt: str = ""
    negative_prompt: str | None = None
    control_strength: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    parts: Parts = field(default_factory=dict)
    loras: list[LoraRef] = field(default_factory=list)  # this person's own LoRAs (their branch only)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Person):
            return NotImplemented
        same_parts = self.parts.keys() == other.parts.keys() and all(
            np.array_equal(points, other.parts[name]) for name, points in self.parts.items()
        )
        return (
            np.array_equal(self.keypoints, other.keypoints)
            and same_parts
            and (self.prompt, self.negative_prompt, self.control_strength, self.extra, self.loras)
            == (other.prompt, other.negative_prompt, other.control_strength, other.extra, other.loras)
        )


@dataclass
class Scene:
    """A canvas, the people on it, the shared setting and the negative prompt."""

    width: int = DEFAULT_CANVAS
    height: int = DEFAULT_CANVAS
    people: list[Person] = field(default_factory=list)
    setting: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)
    # What the reader assumed and the user should know (e.g. coordinates read as normalised);
    # not part of the document.
    notes: list[str] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The scene as an OpenPose-compatible JSON object (extra fields kept)."""
        people = []
        for person in self.people:
            entry: dict[str, Any] = dict(person.extra)
            entry["pose_keypoints_2d"] = [float(v) for v in person.keypoints.reshape(-1)]
            for name in PART_KEYPOINTS:  # in OpenPose's order
                if name in person.parts:
                    entry[name] = [float(v) for v in person.parts[name].reshape(-1)]
            entry["prompt"] = person.prompt
            if person.negative_prompt is not None:
                entry["negative_prompt"] = person.negative_prompt
            if person.control_strength is not None:
                entry["control_strength"] = person.control_strength
            if person.loras:
                entry["loras"] = [ref.to_dict() for ref in person.loras]
            people.append(entry)
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT_VERSION,
            coordinates="pixels",
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
    return scene_from_dict(read_document(path))


def read_document(path: str | Path) -> Any:
    """A scene (or plain OpenPose JSON) file, decoded but not yet validated."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SceneError(f"{path} is not a text file: expected scene or OpenPose JSON") from err
    except OSError as err:
        raise SceneError(f"cannot read {path}: {err.strerror or err}") from err
    return parse_json(text)


def scene_frame(doc: Any) -> Any:
    """The scene object of a decoded document: the document itself, or the one frame some
    editors wrap in a list."""
    return doc[0] if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict) else doc


def scene_from_json(text: str) -> Scene:
    """Parse and validate scene JSON text."""
    return scene_from_dict(parse_json(text))


def parse_json(text: str) -> Any:
    """JSON text of at most MAX_SCENE_BYTES, decoded; SceneError with the reason otherwise."""
    if len(text) > MAX_SCENE_BYTES:
        raise SceneError(f"the scene is {len(text) / 2**20:.1f} MB of text: at most {MAX_SCENE_BYTES // 2**20} MB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SceneError(f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from err
    except RecursionError as err:
        raise SceneError(f"the JSON is nested too deeply (at most {MAX_NESTING} levels)") from err
    except ValueError as err:  # an integer beyond Python's digit limit
        raise SceneError(
            f"the JSON holds a number with more than {sys.get_int_max_str_digits()} digits"
            if "integer string conversion" in str(err)
            else f"not valid JSON: {brief(str(err))}"
        ) from err


def scene_from_dict(doc: Any) -> Scene:
    """Validate a decoded JSON object and build a Scene. Raises SceneError with a specific reason."""
    doc = scene_frame(doc)
    if not isinstance(doc, dict):
        raise SceneError("expected a JSON object with 'people' (OpenPose format)")
    version = doc.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SceneError(
            f"unknown scene format version {brief(version)}: this FineControl reads version {FORMAT_VERSION}"
        )
    people_doc = doc.get("people")
    if not isinstance(people_doc, list):
        raise SceneError("'people' must be a list of persons with 'pose_keypoints_2d'")
    if len(people_doc) > MAX_PEOPLE:
        raise SceneError(f"too many people: {len(people_doc)} (at most {MAX_PEOPLE})")
    scene_extra = _unknown_fields(doc, _SCENE_FIELDS)
    person_extras = [_unknown_fields(entry, _PERSON_FIELDS) for entry in people_doc]
    _check_extra_size([scene_extra, *person_extras])

    width = _canvas_size(doc, "canvas_width")
    height = _canvas_size(doc, "canvas_height")
    poses = [_keypoints(entry, i) for i, entry in enumerate(people_doc)]
    parts = [_parts(entry, i) for i, entry in enumerate(people_doc)]
    notes = []
    if _normalised(doc, poses):
        if "coordinates" not in doc:
            notes.append(
                f"keypoints read as normalised coordinates (0..1 of the canvas): every visible one lies "
                f'within {NORMALISED_GUESS_LIMIT:g} of 0; add "coordinates": "pixels" to the scene if they are pixels'
            )
        for p in poses + [points for own in parts for points in own.values()]:
            p[:, 0] *= width
            p[:, 1] *= height
    for i, (pose, own) in enumerate(zip(poses, parts)):
        _check_on_canvas(pose, width, height, i)
        for name, points in own.items():  # hidden points are never drawn: only the shown ones count
            _check_on_canvas(points, width, height, i, f"'{name}' keypoint", only_shown=True)

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
                extra=person_extras[i],
                parts=parts[i],
                loras=_loras(entry.get("loras"), i),
            )
        )
    from finecontrol.render import people_off_canvas  # (cv2: imported only when a scene is read)

    for i in people_off_canvas(poses, (width, height)):
        notes.append(
            f"person {i + 1} is outside the canvas: nothing of them shows, so they cannot be generated until moved in"
        )
    negative = _text(doc, "negative_prompt", "scene")
    return Scene(
        width=width,
        height=height,
        people=people,
        setting=_text(doc, "setting", "scene") or "",
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative is None else negative,
        extra=scene_extra,
        notes=notes,
    )


def _normalised(doc: dict, poses: list[np.ndarray]) -> bool:
    """Whether the keypoints are fractions of the canvas: as the "coordinates" field says, else
    guessed from the visible keypoints (all within NORMALISED_GUESS_LIMIT of 0)."""
    if "coordinates" in doc:
        if doc["coordinates"] not in COORDINATES:
            raise SceneError(f"'coordinates' must be one of {', '.join(COORDINATES)}, got {brief(doc['coordinates'])}")
        return doc["coordinates"] == "normalized"
    shown = [p[p[:, 2] > 0, :2] for p in poses]
    values = np.concatenate(shown) if shown else np.zeros((0, 2))
    return values.size > 0 and bool(np.abs(values).max() <= NORMALISED_GUESS_LIMIT)


def _check_on_canvas(
    pose: np.ndarray, width: int, height: int, i: int, what: str = "keypoint", only_shown: bool = False
) -> None:
    """Every keypoint (`only_shown`: every shown one) within OFF_CANVAS canvas sizes of the canvas."""
    for axis, (name, side) in enumerate((("x", width), ("y", height))):
        low, high = -OFF_CANVAS * side, (1 + OFF_CANVAS) * side
        values = pose[:, axis]
        out = (values < low) | (values > high)
        bad = np.flatnonzero(out & (pose[:, 2] > 0) if only_shown else out)
        if bad.size:
            raise SceneError(
                f"person {i + 1}: {what} {bad[0] + 1} has {name} = {values[bad[0]]:.6g}, too far off the "
                f"canvas: keypoints may lie at most one canvas size beyond its edges ({low:g}..{high:g})"
            )


def _unknown_fields(entry: Any, known: set[str]) -> dict[str, Any]:
    """The fields of `entry` (a JSON object; anything else has none) that FineControl keeps without using."""
    return {k: v for k, v in entry.items() if k not in known} if isinstance(entry, dict) else {}


def _check_extra_size(extra: list[dict[str, Any]]) -> None:
    """The fields FineControl keeps without using them fit in MAX_EXTRA_BYTES (and nest at most MAX_NESTING deep)."""
    if _depth(extra) > MAX_NESTING:
        raise SceneError(f"the scene is nested too deeply (at most {MAX_NESTING} levels)")
    try:
        size = len(json.dumps(extra, allow_nan=True))
    except (TypeError, ValueError) as err:
        raise SceneError(f"the scene's extra fields cannot be written back as JSON: {brief(str(err))}") from err
    if size > MAX_EXTRA_BYTES:
        raise SceneError(
            f"the scene's extra fields (those FineControl keeps but does not use) take {size / 1024:.0f} KB: "
            f"at most {MAX_EXTRA_BYTES // 1024} KB are kept; remove the large ones"
        )


def _depth(value: Any, limit: int = MAX_NESTING + 1) -> int:
    """Nesting depth of lists and dicts in `value`, counted up to `limit` (without recursion)."""
    depth, level = 0, [value]
    while depth < limit:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, dict) else c)]
    return depth


def _canvas_size(doc: dict, key: str) -> int:
    value = doc.get(key, DEFAULT_CANVAS)
    if not is_finite_number(value):
        raise SceneError(f"{key} must be a number of pixels, got {brief(value)}")
    if value != int(value):
        raise SceneError(f"{key} must be a whole number of pixels, got {brief(value)}")
    value = int(value)
    if not MIN_CANVAS <= value <= MAX_CANVAS:
        raise SceneError(f"{key} {brief(value)} is out of range: use {MIN_CANVAS}..{MAX_CANVAS} pixels")
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
    if not all(is_finite_number(v) for v in values):
        raise SceneError(f"person {i + 1} has non-finite keypoint values (NaN, infinity or too large)")
    return np.asarray(values, dtype=np.float64).reshape(NUM_KEYPOINTS, 3)


def _parts(entry: dict, i: int) -> Parts:
    """The person's hands and face present in `entry`, each (count, 3) or (0, 3) for an empty list."""
    parts = {}
    for name, count in PART_KEYPOINTS.items():
        if name not in entry:
            continue
        values = entry[name]
        if not isinstance(values, list) or len(values) not in (0, count * 3):
            got = f"{len(values)} values" if isinstance(values, list) else f"a {type(values).__name__}"
            raise SceneError(
                f"person {i + 1}: '{name}' has {got}: expected {count * 3} ({count} keypoints as x, y, "
                f"confidence) or an empty list"
            )
        if not all(is_finite_number(v) for v in values):
            raise SceneError(f"person {i + 1}: '{name}' holds values that are not finite numbers")
        parts[name] = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    return parts


def _text(doc: dict, key: str, owner: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SceneError(f"{owner}: '{key}' must be text, got {type(value).__name__}")
    if problem := text_problem(value):
        raise SceneError(f"{owner}: '{key}' {problem}")
    return value


def _loras(value: Any, i: int) -> list[LoraRef]:
    """A person's `loras`: a list of at most MAX_LORAS_PER_PERSON `{"name": ..., "scale": ...}`."""
    owner = f"person {i + 1}"
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SceneError(f'{owner}: \'loras\' must be a list of {{"name": ..., "scale": ...}}, got {brief(value)}')
    if len(value) > MAX_LORAS_PER_PERSON:
        raise SceneError(f"{owner} has {len(value)} LoRAs: at most {MAX_LORAS_PER_PERSON}")
    for item in value:
        if unknown := sorted(set(item) - {"name", "scale"}):
            raise SceneError(f"{owner}: unknown LoRA fields {brief(unknown)}: a LoRA has a name and a scale")
    return [lora_ref(item.get("name"), item.get("scale", 1.0), owner) for item in value]


def _strength(value: Any, i: int) -> float | None:
    if value is None:
        return None
    if not is_finite_number(value):
        raise SceneError(f"person {i + 1}: control_strength must be a number, got {brief(value)}")
    if not 0.0 <= value <= MAX_CONTROL_STRENGTH:
        raise SceneError(f"person {i + 1}: control_strength {brief(value)} is out of range 0..{MAX_CONTROL_STRENGTH}")
    return float(value)
