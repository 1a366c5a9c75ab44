"""The pose canvas: a gr.HTML component whose value is the scene (OpenPose JSON plus prompts).

All drawing and interaction live in `assets/ui/pose_editor.js`; the HTML template is static so
that re-renders never wipe the DOM the script builds. The script defines no BODY-18 or scene
constant of its own: it reads them as props (see `editor_props`). Values from the browser are
validated by the event handlers, never trusted here.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from finecontrol.paths import ASSETS
from finecontrol.pose import LEFT_RIGHT_PAIRS, LIMBS, NUM_KEYPOINTS, TEMPLATE_XY
from finecontrol.render import PERSON_COLORS
from finecontrol.scene import DEFAULT_CANVAS, FORMAT_VERSION, MAX_CONTROL_STRENGTH, MAX_PEOPLE

UI_ASSETS = ASSETS / "ui"
CANVAS_SIZES = (
    (512, 512, "512 x 512"),
    (768, 768, "768 x 768"),
    (512, 768, "portrait 512 x 768"),
    (768, 512, "landscape 768 x 512"),
)
ROTATE_STEP = 15  # degrees per click of Rotate left / Rotate right

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
  <canvas class="fc-canvas" tabindex="0" aria-label="Pose canvas"></canvas>
  <div class="fc-status" role="status"></div>
  <div class="fc-help">Click a skeleton to select it. Drag a joint to move it, drag a bone to move the
    whole person; mouse wheel scales, Shift + wheel rotates; double-click a joint to hide or show it.
    Ctrl+Z undo, Ctrl+Shift+Z redo, Delete removes the selected person.</div>
  <div class="fc-people"></div>
</div>
"""


def empty_scene() -> dict[str, Any]:
    """A blank default-sized canvas."""
    return {
        "format": FORMAT_VERSION,
        "coordinates": "pixels",
        "canvas_width": DEFAULT_CANVAS,
        "canvas_height": DEFAULT_CANVAS,
        "people": [],
    }


def editor_props() -> dict[str, Any]:
    """The constants the editor's script reads as `props.<name>`, all from their Python source."""
    return {
        "num_keypoints": NUM_KEYPOINTS,
        "limbs": [list(limb) for limb in LIMBS],
        "left_right_pairs": [list(pair) for pair in LEFT_RIGHT_PAIRS],
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

    def __init__(self, value: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(
            value=value if value is not None else empty_scene(),
            html_template=TEMPLATE,
            css_template=(UI_ASSETS / "pose_editor.css").read_text(encoding="utf-8"),
            js_on_load=(UI_ASSETS / "pose_editor.js").read_text(encoding="utf-8"),
            apply_default_css=False,
            **editor_props(),
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
