"""The pose editor's script gets its BODY-18 and scene constants from Python, as props."""

import re

from finecontrol.paths import ASSETS
from finecontrol.pose import LEFT_RIGHT_PAIRS, LIMBS, NUM_KEYPOINTS, TEMPLATE_XY
from finecontrol.render import PERSON_COLORS
from finecontrol.scene import DEFAULT_CANVAS, MAX_CONTROL_STRENGTH, MAX_PEOPLE
from finecontrol.ui.editor import CANVAS_SIZES, ROTATE_STEP, PoseEditor

SCRIPT = (ASSETS / "ui" / "pose_editor.js").read_text(encoding="utf-8")


def sent_props() -> dict:
    """The props as the browser receives them, in the component's config."""
    return PoseEditor().get_config()["props"]


def test_the_props_are_the_python_constants():
    props = sent_props()
    assert props["num_keypoints"] == NUM_KEYPOINTS
    assert [tuple(limb) for limb in props["limbs"]] == list(LIMBS)
    assert [tuple(pair) for pair in props["left_right_pairs"]] == list(LEFT_RIGHT_PAIRS)
    assert {name: [tuple(p) for p in xy] for name, xy in props["templates"].items()} == {
        name: list(xy) for name, xy in TEMPLATE_XY.items()
    }
    assert [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in props["colors"]] == list(PERSON_COLORS)
    assert props["default_canvas"] == DEFAULT_CANVAS
    assert [tuple(size) for size in props["sizes"]] == list(CANVAS_SIZES)
    assert props["max_people"] == MAX_PEOPLE
    assert props["max_control_strength"] == MAX_CONTROL_STRENGTH
    assert props["rotate_step"] == ROTATE_STEP


def test_the_script_reads_every_prop_and_no_other():
    assert set(re.findall(r"\bprops\.(\w+)", SCRIPT)) - {"value"} == set(sent_props())


def test_the_rotate_buttons_say_the_step_they_take():
    assert PoseEditor().html_template.count(f"Rotate {ROTATE_STEP} degrees") == 2
