"""The pose canvas: a gr.HTML component whose value is the scene (OpenPose JSON plus prompts).

All drawing and interaction live in `assets/ui/pose_editor.js`; the HTML template is static so
that re-renders never wipe the DOM the script builds. The script defines no BODY-18 or scene
constant of its own: it reads them as props (see `editor_props`). Values from the browser are
validated by the event handlers, never trusted here.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from finecontrol.model_info import WORD_PATTERN
from finecontrol.paths import ASSETS
from finecontrol.pose import (
    FACE_LEFT_RIGHT_PAIRS,
    HAND_EDGES,
    LEFT_RIGHT_PAIRS,
    LIMBS,
    NUM_KEYPOINTS,
    PART_KEYPOINTS,
    TEMPLATE_XY,
)
from finecontrol.render import PERSON_COLORS
from finecontrol.scene import DEFAULT_CANVAS, DEFAULT_NEGATIVE_PROMPT, FORMAT_VERSION, MAX_CONTROL_STRENGTH, MAX_PEOPLE

UI_ASSETS = ASSETS / "ui"
CANVAS_SIZES = (
    (512, 512, "512 x 512"),
    (768, 768, "768 x 768"),
    (512, 768, "portrait 512 x 768"),
    (768, 512, "landscape 768 x 512"),
    (1024, 1024, "1024 x 1024 (SDXL)"),
    (832, 1216, "portrait 832 x 1216 (SDXL)"),
    (1216, 832, "landscape 1216 x 832 (SDXL)"),
)
ROTATE_STEP = 15  # degrees per click of Rotate left / Rotate right
# A person's prompt and a setting shown as placeholders, for models that understand any text.
DEFAULT_EXAMPLES = ("an astronaut in a white suit", "in a forest")

TEMPLATE = f"""
<div class="fc-editor">
  <div class="fc-toolbar">
    <select class="fc-template" aria-label="Pose template"></select>
    <button class="fc-primary" data-action="add">+ Add person</button>
    <button data-action="duplicate">Duplicate</button>
    <button data-action="delete">Delete</button>
    <span class="fc-sep"></span>
    <button data-action="mirror" title="Mirror the selected person">Mirror</button>
    <button data-action="bigger" title="Scale up (or mouse wheel)">Bigger</button>
    <button data-action="smaller" title="Scale down (or mouse wheel)">Smaller</button>
    <button data-action="rotate_left" title="Rotate {ROTATE_STEP} degrees (or Shift + wheel)">Rotate left</button>
    <button data-action="rotate_right" title="Rotate {ROTATE_STEP} degrees (or Shift + wheel)">Rotate right</button>
    <span class="fc-sep"></span>
    <button data-action="undo" title="Ctrl+Z">Undo</button>
    <button data-action="redo" title="Ctrl+Shift+Z">Redo</button>
    <span class="fc-sep"></span>
    <select class="fc-size" aria-label="Canvas size"></select>
    <label class="fc-file" title="Shown faintly under the skeletons; never sent to the model">Reference image
      <input class="fc-background" type="file" accept="image/*"></label>
    <button data-action="clear_background">Clear image</button>
  </div>
  <div class="fc-main">
    <div class="fc-stage">
      <canvas class="fc-canvas" tabindex="0" aria-label="Pose canvas"></canvas>
      <div class="fc-status" role="status"></div>
      <div class="fc-legend">Skeleton colours number the people (card 1, card 2, ...); the prompts say
        what each person looks like.</div>
      <div class="fc-help fc-help-mouse">Click a skeleton to select it. Drag a joint to move it, drag a bone
        to move the whole person; mouse wheel scales, Shift + wheel rotates; double-click a joint to hide or
        show it. Arrow keys nudge (Shift: more). Ctrl+Z undo, Ctrl+Shift+Z redo, Delete removes the person.</div>
      <div class="fc-help fc-help-touch">Tap a skeleton to select it. Drag a joint to move it, drag a bone to
        move the whole person; Bigger, Smaller, Rotate and Mirror act on the selected person.</div>
    </div>
    <div class="fc-side">
      <div class="fc-people"></div>
      <label class="fc-scene-field" id="setting">Setting, shared by everyone
        <textarea class="fc-setting" rows="1" aria-label="Setting, shared by everyone"></textarea></label>
      <div class="fc-words" data-field="setting" role="note"></div>
      <label class="fc-scene-field" id="negative">Negative prompt, for everyone
        <textarea class="fc-global-negative" rows="2" aria-label="Negative prompt, for everyone"></textarea></label>
      <div class="fc-words" data-field="negative_prompt" role="note"></div>
    </div>
  </div>
</div>
"""


def empty_scene(negative_prompt: str = DEFAULT_NEGATIVE_PROMPT) -> dict[str, Any]:
    """A blank default-sized canvas, no setting, `negative_prompt` for everyone."""
    return {
        "format": FORMAT_VERSION,
        "coordinates": "pixels",
        "canvas_width": DEFAULT_CANVAS,
        "canvas_height": DEFAULT_CANVAS,
        "people": [],
        "setting": "",
        "negative_prompt": negative_prompt,
    }


def editor_props(
    vocabulary: tuple[str, ...] = (), examples: tuple[str, str] = DEFAULT_EXAMPLES, lora_names: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The constants the editor's script reads as `props.<name>`, all from their Python source;
    `vocabulary`: the only words the model knows (empty: any text), `examples`: a person's prompt
    and a setting to show as placeholders, in words the model knows; `lora_names`: the LoRAs the
    cards suggest."""
    return {
        "vocabulary": list(vocabulary),
        "lora_names": list(lora_names),
        "word_pattern": WORD_PATTERN,
        "example_prompt": examples[0],
        "example_setting": examples[1],
        "num_keypoints": NUM_KEYPOINTS,
        "limbs": [list(limb) for limb in LIMBS],
        "left_right_pairs": [list(pair) for pair in LEFT_RIGHT_PAIRS],
        "part_fields": list(PART_KEYPOINTS),  # left hand, right hand, face
        "hand_edges": [list(edge) for edge in HAND_EDGES],
        "face_left_right_pairs": [list(pair) for pair in FACE_LEFT_RIGHT_PAIRS],
        "templates": {name: [list(p) for p in xy] for name, xy in TEMPLATE_XY.items()},
        "colors": ["#{:02x}{:02x}{:02x}".format(*c) for c in PERSON_COLORS],
        "default_canvas": DEFAULT_CANVAS,
        "sizes": [list(s) for s in CANVAS_SIZES],
        "max_people": MAX_PEOPLE,
        "max_control_strength": MAX_CONTROL_STRENGTH,
        "rotate_step": ROTATE_STEP,
    }


class PoseEditor(gr.HTML):
    """Drag-and-drop OpenPose skeletons with a prompt box per person."""

    def __init__(
        self,
        value: dict[str, Any] | None = None,
        vocabulary: tuple[str, ...] = (),
        examples: tuple[str, str] = DEFAULT_EXAMPLES,
        lora_names: tuple[str, ...] = (),
        **kwargs: Any,
    ):
        super().__init__(
            value=value if value is not None else empty_scene(),
            html_template=TEMPLATE,
            css_template=(UI_ASSETS / "pose_editor.css").read_text(encoding="utf-8"),
            js_on_load=(UI_ASSETS / "pose_editor.js").read_text(encoding="utf-8"),
            apply_default_css=False,
            **editor_props(vocabulary, examples, lora_names),
            **kwargs,
        )

    def preprocess(self, payload: Any) -> Any:
        return payload

    def postprocess(self, value: Any) -> Any:
        return value

    def api_info(self) -> dict[str, Any]:
        return {"type": "object", "description": "scene: OpenPose JSON with a prompt per person"}

    def example_payload(self) -> Any:
        return empty_scene()

    def example_value(self) -> Any:
        return empty_scene()
