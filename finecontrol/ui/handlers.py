"""Event handlers of the app, free of layout so that tests can call them directly.

Everything that comes from the browser is validated here: a bad value raises `gr.Error` with a
specific message and the user's scene stays as it was (handlers never rewrite the canvas on error).
"""

from __future__ import annotations

import contextvars
import math
import queue
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageOps

from finecontrol.loras import load_scene_loras
from finecontrol.metadata import read_png, save_png
from finecontrol.models import ModelNotAvailableError
from finecontrol.paths import ASSETS
from finecontrol.pipeline import Generation
from finecontrol.pose import FACE, LEFT_HAND, PART_KEYPOINTS, RIGHT_HAND, drawn_parts, visible_limbs
from finecontrol.render import captioned, labelled_grid, mask_overlay, mask_previews, upsample_masks
from finecontrol.scene import (
    MAX_PEOPLE,
    Person,
    Scene,
    SceneError,
    brief,
    format_loras,
    parse_json,
    read_document,
    scene_frame,
    scene_from_dict,
)
from finecontrol.settings import COMPARED_METHODS, MAX_SEED, Settings
from finecontrol.settings import knobs as knobs_spec
from finecontrol.ui.engine import TORCH_THREAD, Engine, GenerationCancelled, on_torch_thread, run_between_steps
from finecontrol.ui.text import code_span, shorten, shown

PRESETS = ASSETS / "scenes"
PREVIEW_EVERY = 4  # steps between live previews
MASK_CAPTIONS = ("early steps: who owns each pixel", "last steps: soft blend")
# ... and seconds at least: on 2 cores each preview (sent, received, shown) took about 20 ms from
# the steps of a toy-model generation (20 steps in about 0.75 s): 2 previews there, not 4.
PREVIEW_MIN_SECONDS = 0.2
_clock = time.monotonic  # what the previews' spacing is timed with (tests replace it)
# The Advanced panel's inputs, in order: the Settings fields the app offers (those with a widget).
KNOB_FIELDS = tuple(name for name, knob in knobs_spec().items() if knob.widget)
_INTEGER_FIELDS = {name for name in KNOB_FIELDS if knobs_spec()[name].kind == "int"}

_OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="finecontrol-"))
# The output folder keeps at most this many files (results, grids, exported scenes), none older than
# OUTPUT_MAX_SECONDS. Gradio copies each file to its own cache when the handler returns, so only
# the newest few are ever read again.
MAX_OUTPUT_FILES = 64
OUTPUT_MAX_SECONDS = 3600
_OUTPUT_LOCK = threading.Lock()  # Gradio runs handlers on several threads


def _output_path(name: str, suffix: str) -> Path:
    """A fresh file name in the app's output folder, after removing files older than
    OUTPUT_MAX_SECONDS and the oldest beyond MAX_OUTPUT_FILES - 1 (room for this one)."""
    cutoff = time.time() - OUTPUT_MAX_SECONDS
    with _OUTPUT_LOCK:
        dated = []
        for path in _OUTPUT_DIR.iterdir():
            try:
                dated.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # removed meanwhile by someone else
                continue
        dated.sort(reverse=True)
        for rank, (mtime, path) in enumerate(dated):
            if rank >= MAX_OUTPUT_FILES - 1 or mtime < cutoff:
                path.unlink(missing_ok=True)
    return _OUTPUT_DIR / f"{name}-{uuid.uuid4().hex[:8]}{suffix}"


def parse_scene(value: Any, setting: str | None = None, negative: str | None = None) -> Scene:
    """The canvas value, validated into a Scene. The page's canvas holds the setting and the
    negative prompt too; `setting` and `negative` (API clients) replace the value's own unless None."""
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except SceneError as err:
            raise gr.Error(shown(f"The pose canvas sent something that is not a scene: {err}")) from err
    if not isinstance(value, dict):
        raise gr.Error(
            f"The pose canvas sent no scene (a {type(value).__name__}, not an object with 'people'): reload the page."
        )
    for name, text in (("setting", setting), ("negative prompt", negative)):
        if text is not None and not isinstance(text, str):
            raise gr.Error(f"The {name} must be text, not a {type(text).__name__}.")
    doc = dict(value)
    if setting is not None:
        doc["setting"] = setting
    if negative is not None:
        doc["negative_prompt"] = negative
    try:
        return scene_from_dict(doc)
    except SceneError as err:
        raise gr.Error(shown(f"Invalid scene: {err}")) from err


def require_people(scene: Scene) -> None:
    if not scene.people:
        raise gr.Error("The canvas is empty: add at least one person (+ Add person) first.")


def parse_settings(*knobs: Any) -> Settings:
    """Settings from the Advanced panel's values (in KNOB_FIELDS order), with readable errors."""
    if len(knobs) != len(KNOB_FIELDS):
        raise gr.Error(f"expected {len(KNOB_FIELDS)} settings ({', '.join(KNOB_FIELDS)}), got {len(knobs)}")
    values, knobs_by_name = {}, knobs_spec()
    for name, value in zip(KNOB_FIELDS, knobs):
        ui_none = knobs_by_name[name].ui_none
        if ui_none is not None and value in (None, "", ui_none):
            value = None  # the control's "automatic"
        elif name in _INTEGER_FIELDS:
            if isinstance(value, float) and math.isfinite(value) and value == int(value):
                value = int(value)
        values[name] = value
    try:
        return Settings(**values)
    except (TypeError, ValueError) as err:
        raise gr.Error(shown(f"Invalid setting: {err}")) from err


def knob_values(settings: Settings) -> list[Any]:
    """The Advanced panel's values for `settings` (inverse of parse_settings; None shows as the
    control's `ui_none`, e.g. 0 for automatic dilation)."""
    spec = knobs_spec()
    return [spec[name].ui_none if getattr(settings, name) is None else getattr(settings, name) for name in KNOB_FIELDS]


def not_in_panel(settings: Settings) -> dict[str, Any]:
    """The settings the Advanced panel does not offer whose values differ from the paper's defaults."""
    paper = Settings()
    return {
        name: getattr(settings, name)
        for name in knobs_spec()
        if name not in KNOB_FIELDS and getattr(settings, name) != getattr(paper, name)
    }


def error_message(err: BaseException) -> str:
    """What the user reads when generation fails."""
    import torch

    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return "Out of memory: try fewer people, a smaller canvas, fewer steps or the fp16 model."
    if isinstance(err, (SceneError, ValueError, RuntimeError)):
        return shown(str(err))
    return shown(f"Generation failed: {type(err).__name__}: {err}")


def check_scene(engine: Engine, value: Any, *knobs: Any) -> None:
    """What the page runs before Generate, Compare and Show masks: the scene and settings are
    checked (a gr.Error names what is wrong) and empty prompts are warned of, so that a mistake
    reaches the user as a message and never as an error on the output panels."""
    scene = parse_scene(value)
    require_people(scene)
    settings = parse_settings(*knobs)
    if engine.pipe is not None:
        if off := engine.pipe.people_off_canvas(scene):
            listed = ", ".join(str(i + 1) for i in off)
            raise gr.Error(
                f"Person {listed} {'is' if len(off) == 1 else 'are'} outside the canvas: nothing of them "
                "shows, so nothing can be generated for them; drag them back in or delete them."
            )
        try:  # loaded now (each once per model), so that a bad LoRA is said before anything runs
            on_torch_thread(load_scene_loras, engine.pipe, scene, settings.loras)
        except (ModelNotAvailableError, ValueError, OSError) as err:
            raise gr.Error(shown(str(err))) from err  # the loader names the LoRA
    empty = [str(i + 1) for i, person in enumerate(scene.people) if not person.prompt.strip()]
    if empty:
        who = f"Person {empty[0]} has" if len(empty) == 1 else f"People {', '.join(empty)} have"
        gr.Warning(f"{who} no prompt: the setting alone describes them.")


def masks_preview(value: Any, setting: str | None, negative: str | None, *knobs: Any) -> np.ndarray:
    """Each person's region over the skeletons at canvas size, early (hard) steps; no model run."""
    scene = parse_scene(value, setting, negative)
    require_people(scene)
    settings = parse_settings(*knobs)
    early, late = on_torch_thread(
        mask_previews,
        [p.keypoints for p in scene.people],
        (scene.width, scene.height),
        settings.mask_dilation,
        settings.mask_blur,
        settings.temperature,
        [drawn_parts(p.parts, settings.pose_parts) for p in scene.people],
        between_steps=True,  # "instant", even while a generation runs
    )
    return np.asarray(captioned([early, late], MASK_CAPTIONS))


def score_words(scores: dict) -> str:
    """A person's scores in words: the toy's colour check or CLIP identity; "" when not scored."""
    if scores.get("toy_identity") is not None:
        return "colour check: found ✓" if scores["toy_identity"] else "colour check: not found ✗"
    if scores.get("clip_own_wins") is not None:
        verdict = "own prompt wins ✓" if scores["clip_own_wins"] else "another person's prompt wins ✗"
        return f"CLIP: {verdict} (margin {scores['clip_margin']:+.3f})"
    if scores.get("clip_similarity") is not None:
        return f"CLIP similarity {scores['clip_similarity']:.3f}"
    return ""


def prompts_markdown(result: Generation, scores: list[dict] | None = None, note: str = "") -> str:
    """The exact texts the model was given, as Markdown; each text in a code span, so a prompt
    shows as typed and never as Markdown or HTML (an imported scene's prompt cannot load images).
    `scores`: each person's scores (`Engine.score`), shown in words after their line; `note`:
    a last line (why there are no scores)."""
    said = [score_words(s) for s in scores] if scores else []
    p = result.prompts
    lines = [
        f"**Seed** {result.settings.seed} - **method** {result.settings.method} - "
        f"**size** {result.image.width}x{result.image.height}"
    ]
    if result.settings.method == "controlnet":
        lines.append(f"- Global prompt: {code_span(p.global_prompt)}")
        if result.loras and result.loras[0]:  # one branch: everyone's LoRAs
            lines.append(f"- LoRAs: {code_span(format_loras(result.loras[0]))}")
        lines += [f"- Person {i + 1} ({code_span(p.people[i])}): {w}" for i, w in enumerate(said) if w]
    else:
        for i, text in enumerate(p.people):
            used = result.loras[i] if i < len(result.loras) else []
            loras = f" - LoRAs: {code_span(format_loras(used))}" if used else ""
            words = f" - {said[i]}" if i < len(said) and said[i] else ""
            lines.append(f"- Person {i + 1}: {code_span(text)}{loras}{words}")
        if result.settings.method == "multicontrolnet":
            lines.append(f"- UNet (global) prompt: {code_span(p.global_prompt)}")
    negatives = sorted(set(p.people_negative) | {p.global_negative})
    lines += [f"- Negative: {code_span(text)}" for text in negatives]
    if note:
        lines.append(f"- {note}")
    return "\n".join(lines)


def _run_with_previews(
    engine: Engine,
    scene: Scene,
    settings: Settings,
    progress,
    label: str = "",
    previews: bool = True,
    cancel: threading.Event | None = None,
) -> Iterator[Image.Image | Generation]:
    """Run one generation on the torch thread; yield preview images while it runs (if `previews`:
    every PREVIEW_EVERY steps, PREVIEW_MIN_SECONDS apart at least), then the result. Once `cancel`
    is set, or this generator is closed before the result, the generation stops after the step
    that is running (GenerationCancelled), or does not start."""
    cancel = cancel or threading.Event()
    updates: queue.Queue = queue.Queue()
    last_preview = _clock()

    def on_step(step: int, total: int, x0) -> None:
        nonlocal last_preview
        if cancel.is_set():
            raise GenerationCancelled(f"{label}cancelled after step {step + 1}/{total}")
        run_between_steps()  # masks previews or pose detection asked for meanwhile
        progress((step + 1, total), desc=f"{label}step {step + 1}/{total}")
        due = (step + 1) % PREVIEW_EVERY == 0 and step + 1 < total
        if previews and due and _clock() - last_preview >= PREVIEW_MIN_SECONDS:
            last_preview = _clock()
            updates.put(("preview", engine.preview(x0)))

    def work() -> None:
        try:
            if cancel.is_set():
                raise GenerationCancelled(f"{label}cancelled before it started")
            updates.put(("done", engine.generate(scene, settings, on_step)))
        except BaseException as err:  # reported to the user below
            updates.put(("error", err))

    # in the caller's context: Gradio finds the event that `progress` reports to in context variables
    TORCH_THREAD.submit(contextvars.copy_context().run, work)
    kind = None
    try:
        while kind != "done":
            kind, payload = updates.get()
            if isinstance(payload, GenerationCancelled):
                raise payload
            if kind == "error":
                raise gr.Error(error_message(payload))
            yield payload
    finally:
        if kind not in ("done", "error"):  # closed early: the user cancelled, or the caller failed
            cancel.set()


def generate(
    engine: Engine,
    value: Any,
    setting: str | None,
    negative: str | None,
    *knobs: Any,
    progress: Callable = lambda *a, **k: None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple]:
    """Yields (image, control map, mask overlay, prompts) - previews first, then the PNG file.
    Setting `cancel`, or closing this generator, stops the generation within one step.
    A preview clears the other outputs (None): `gr.skip()` would have Gradio build a new component
    for each of them in the session's state, 3 objects kept per preview for as long as the session."""
    scene = parse_scene(value, setting, negative)
    require_people(scene)
    settings = parse_settings(*knobs)
    with closing(_run_with_previews(engine, scene, settings, progress, cancel=cancel)) as run:
        for item in run:
            if isinstance(item, Generation):
                result = item
            else:
                yield item, None, None, None
    path = _output_path(f"finecontrol-{settings.method}-{settings.seed}", ".png")
    save_png(result.image, path, scene, settings, model=engine.label)
    size = (result.image.width, result.image.height)
    overlay = on_torch_thread(
        lambda: mask_overlay(upsample_masks(result.early_masks, size), result.control_image), between_steps=True
    )
    scores = on_torch_thread(engine.score, result.image, scene, between_steps=True)
    yield str(path), result.control_image, overlay, prompts_markdown(result, scores, engine.why_not_scored(scene))


def compare(
    engine: Engine,
    value: Any,
    setting: str | None,
    negative: str | None,
    extra_seeds: Any,
    *knobs: Any,
    progress: Callable = lambda *a, **k: None,
    cancel: threading.Event | None = None,
) -> Iterator[Image.Image | str]:
    """FineControlNet, ControlNet and MultiControlNet with the same seeds: yields live previews of
    each image (progress: "image k of K"), then the labelled grid PNG's path. Once `cancel` is set
    the running generation stops within one step and no other one starts (GenerationCancelled)."""
    scene = parse_scene(value, setting, negative)
    require_people(scene)
    settings = parse_settings(*knobs)
    check_extra_seeds(extra_seeds)
    seeds = [(settings.seed + k) % (MAX_SEED + 1) for k in range(int(extra_seeds) + 1)]
    rows, count = [], len(seeds) * len(COMPARED_METHODS)
    for seed in seeds:
        row = []
        for method in COMPARED_METHODS:
            label = f"image {len(rows) * len(COMPARED_METHODS) + len(row) + 1} of {count} ({method}, seed {seed}): "
            run = _run_with_previews(
                engine, scene, replace(settings, method=method, seed=seed), progress, label=label, cancel=cancel
            )
            with closing(run):
                for item in run:
                    if isinstance(item, Generation):
                        row.append(item.image)
                    else:
                        yield item
        rows.append(row)
    grid = labelled_grid(rows, list(COMPARED_METHODS), [f"seed {s}" for s in seeds])
    path = _output_path(f"finecontrol-compare-{settings.seed}", ".png")
    save_png(
        grid,
        path,
        scene,
        settings,
        model=engine.label,
        methods=",".join(COMPARED_METHODS),
        seeds=",".join(map(str, seeds)),
    )
    yield str(path)


def check_extra_seeds(extra_seeds: Any) -> None:
    """Compare's extra seeds: a whole number from 0 to 3."""
    ok = isinstance(extra_seeds, (int, float)) and not isinstance(extra_seeds, bool)
    if not (ok and 0 <= extra_seeds <= 3 and extra_seeds == int(extra_seeds)):
        raise gr.Error("Extra seeds must be a whole number from 0 to 3.")


def export_scene(value: Any, setting: str | None = None, negative: str | None = None) -> str:
    """Write the scene as OpenPose-compatible JSON and return the file for download."""
    scene = parse_scene(value, setting, negative)
    path = _output_path("finecontrol-scene", ".json")
    scene.save(path)
    return str(path)


def import_file(path: str | None) -> tuple:
    """Scene JSON, plain OpenPose JSON or a FineControl PNG -> (canvas value, *knobs).
    A PNG also restores the settings it was made with (a warning names those the panel does not
    offer, such as a CLI --width); JSON leaves them as they are. A JSON file without a setting or
    negative prompt (plain OpenPose) gives a value without them, and the canvas keeps its own.
    Messages name the file by its name (at most MAX_ECHO_CHARS), never by its folder on the server."""
    if not path:
        raise gr.Error("No file received: choose a scene JSON, an OpenPose JSON or a FineControl PNG.")
    if not isinstance(path, (str, Path)):
        raise gr.Error(f"Expected an uploaded file, got a {type(path).__name__}.")
    name, is_png = shorten(Path(path).name), Path(path).suffix.lower() == ".png"
    try:
        if is_png:
            scene, settings = read_png(path)
            knobs = knob_values(settings)
        else:
            doc = scene_frame(read_document(path))
            scene, knobs = scene_from_dict(doc), [gr.skip()] * len(KNOB_FIELDS)
    except (SceneError, ValueError, OSError, RecursionError) as err:
        raise gr.Error(shown(f"Could not import {name}: {err}")) from err
    if is_png and (dropped := not_in_panel(settings)):
        listed = ", ".join(f"{key} {value}" for key, value in dropped.items())
        gr.Warning(
            shown(
                f"{name} was made with {listed}, which this app does not offer: generating here "
                f"uses the defaults instead. `python -m finecontrol generate {name}` reproduces it."
            )
        )
    for note in scene.notes:
        gr.Warning(shown(f"{name}: {note}"))
    count = len(scene.people)
    gr.Info(shown(f"Imported {count} {'person' if count == 1 else 'people'} from {name}."))
    return (canvas_value(scene, doc if not is_png else None), *knobs)


def preset_names(folder: Path = PRESETS) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json"))


def canvas_value(scene: Scene, doc: dict | None = None) -> dict:
    """`scene` as the canvas's value; without the setting or negative prompt where `doc`, the file it
    came from, has none (the canvas then keeps its own)."""
    value = scene.to_dict()
    for key in ("setting", "negative_prompt"):
        if doc is not None and doc.get(key) is None:
            value.pop(key, None)
    return value


def load_preset(name: str, folder: Path = PRESETS) -> dict:
    """A scene from assets/scenes (or a model's own presets folder) as the canvas's value; a preset
    without a negative prompt leaves the canvas's own."""
    known = preset_names(folder)
    if not isinstance(name, str) or name not in known:
        raise gr.Error(shown(f"Unknown preset {brief(name)}: the presets are {', '.join(known)}."))
    doc = read_document(folder / f"{name}.json")
    return canvas_value(scene_from_dict(doc), doc)


def people_from_detection(detections: list, image_size: tuple[int, int], canvas_size: tuple[int, int]) -> list[Person]:
    """Detected people -> people on the canvas (the photo fitted inside it, aspect kept), with
    the hands and face found. Each detection is a controlnet_aux PoseResult (`body.keypoints`,
    `left_hand`, `right_hand`, `face`: normalised keypoints; a part None when not found, a point
    None or at negative x or y when missing) or just a body's keypoints."""
    people = []
    for detection in detections:
        body = detection.body.keypoints if hasattr(detection, "body") else detection
        found = {
            LEFT_HAND: getattr(detection, "left_hand", None),
            RIGHT_HAND: getattr(detection, "right_hand", None),
            FACE: getattr(detection, "face", None),
        }
        parts = {
            name: _detected_points(points, PART_KEYPOINTS[name], image_size, canvas_size)
            for name, points in found.items()
            if points is not None and len(points) == PART_KEYPOINTS[name]
        }
        people.append(Person(keypoints=_detected_points(body, 18, image_size, canvas_size), parts=parts))
    return people


def _detected_points(
    keypoints: list, count: int, image_size: tuple[int, int], canvas_size: tuple[int, int]
) -> np.ndarray:
    """`count` detected keypoints (normalised (x, y) pairs or Keypoints; None or negative when
    missing) -> a (count, 3) array in canvas pixels, confidence 1 where found and 0 (at 0, 0) where not."""
    (iw, ih), (cw, ch) = image_size, canvas_size
    scale = min(cw / iw, ch / ih)
    ox, oy = (cw - iw * scale) / 2, (ch - ih * scale) / 2
    points = np.zeros((count, 3))
    for j, kp in enumerate(keypoints[:count]):
        if kp is not None and kp[0] >= 0 and kp[1] >= 0:
            points[j] = (ox + kp[0] * iw * scale, oy + kp[1] * ih * scale, 1.0)
    return points


# A photo larger than this is refused before its pixels are decoded: a small PNG can declare
# 12000 x 12000 pixels, 432 MB once decoded. 50 MP holds a 48 MP phone photo (150 MB decoded).
MAX_PHOTO_PIXELS = 50_000_000
# The detector is given the photo at most this many pixels long (OpenPose itself looks at a 368 px
# high copy), so a large photo costs one decode and no more.
PHOTO_DETECT_SIDE = 1024


def read_photo(path: str | Path) -> np.ndarray:
    """The photo at `path` as an RGB array (upright by its EXIF orientation) at most
    PHOTO_DETECT_SIDE pixels long; refused with a gr.Error above MAX_PHOTO_PIXELS, checked from the
    file's header before any pixel is decoded."""
    name = shorten(Path(path).name)
    refuse = f"at most {MAX_PHOTO_PIXELS / 1e6:g} megapixels: scale the photo down and upload it again"
    try:
        with warnings.catch_warnings():  # Pillow warns of large images when opening; refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_PHOTO_PIXELS:
                raise gr.Error(shown(f"{name} is {width}x{height} pixels, too large for pose detection ({refuse})."))
            image.draft("RGB", (PHOTO_DETECT_SIDE, PHOTO_DETECT_SIDE))  # JPEG: decoded at a reduced scale
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except Image.DecompressionBombError as err:  # Pillow's own limit, met in the header
        raise gr.Error(shown(f"{name} is too large for pose detection ({refuse}).")) from err
    except (OSError, SyntaxError, ValueError) as err:  # not an image, truncated, corrupt
        raise gr.Error(shown(f"Could not read {name} as an image: {err}")) from err
    upright.thumbnail((PHOTO_DETECT_SIDE, PHOTO_DETECT_SIDE))
    return np.asarray(upright)


def pose_from_photo(
    detect: Callable[[np.ndarray], list], image: str | Path | np.ndarray | None, value: Any, setting: str, negative: str
) -> dict:
    """Add the people found in a photo (a file, as the app passes it, or an RGB array) to the
    canvas with the hands and faces found, keeping the people already there. `detect` returns
    what `people_from_detection` takes."""
    if image is None:
        raise gr.Error("Upload a photo first.")
    scene = parse_scene(value, setting, negative)
    if isinstance(image, (str, Path)):
        image = read_photo(image)
    try:
        detections = on_torch_thread(detect, image, between_steps=True)
    except Exception as err:
        raise gr.Error(shown(f"Pose detection is not available: {err}")) from err
    found = [
        person
        for person in people_from_detection(detections, (image.shape[1], image.shape[0]), (scene.width, scene.height))
        if visible_limbs(person.keypoints)
    ]
    if not found:
        raise gr.Error("No person found in the photo.")
    room = MAX_PEOPLE - len(scene.people)
    if room <= 0:
        raise gr.Error(f"The canvas already has {MAX_PEOPLE} people.")
    if len(found) > room:
        gr.Warning(f"Found {len(found)} people; added the first {room} (at most {MAX_PEOPLE} in a scene).")
    scene.people.extend(found[:room])
    return scene.to_dict()
