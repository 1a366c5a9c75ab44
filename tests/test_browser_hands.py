"""Hands and faces in a real browser (Debian's chromium, as tests/test_browser.py): an OpenPose file
with hands and faces imported through the file input, drawn on the canvas in each person's colour,
carried by Mirror, the arrow keys, Bigger and the canvas size, exported, and drawn into the toy
model's control map when the setting asks for them. Mouse, keyboard and file chooser only."""

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from finecontrol.pose import PART_KEYPOINTS, mirror, mirror_parts, pose_center, scale, scale_parts
from finecontrol.render import PERSON_COLORS
from tests.test_browser import browser, canvas_to_page, scene, toy_page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

from playwright.sync_api import expect  # noqa: E402

EXAMPLE = "assets/examples/hands_and_faces.json"
TIPS = [4, 8, 12, 16, 20]  # a hand's fingertips


def person(page, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Person i's body and hands and face, as the editor holds them."""
    entry = scene(page)["people"][i]
    return np.reshape(entry["pose_keypoints_2d"], (18, 3)), {
        name: np.reshape(entry[name], (-1, 3)) for name in PART_KEYPOINTS if name in entry
    }


def assert_parts(page, i: int, expected: dict[str, np.ndarray]) -> None:
    _, parts = person(page, i)
    assert set(parts) == set(expected), "the editor dropped a hand or the face"
    for name, points in expected.items():
        np.testing.assert_allclose(parts[name], points, atol=1e-6, err_msg=name)


def test_hands_and_faces_are_drawn_carried_exported_and_generated(toy_page, tmp_path):  # noqa: F811
    page = toy_page
    doc = json.loads(open(EXAMPLE).read())
    for entry, colour in zip(doc["people"], ["red", "blue"]):
        entry["prompt"] = f"a {colour} person"  # words the toy model knows
    doc["setting"] = "on grass"
    imported = tmp_path / "openpose_hands.json"
    imported.write_text(json.dumps(doc))
    page.click("text=Import / export")
    page.locator("#import-file input[type=file]").set_input_files(str(imported))
    expect(page.locator(".fc-card")).to_have_count(2, timeout=30_000)

    # drawn: every fingertip of both people's hands in the person's colour (any brightness: the thin
    # strokes blend with the dark canvas where the page scales it), where only a hand reaches
    shot = np.asarray(Image.open(io.BytesIO(page.locator(".fc-canvas").screenshot())).convert("RGB")).astype(float)
    px = page.locator(".fc-canvas").bounding_box()["width"] / scene(page)["canvas_width"]
    for i in range(2):
        colour = np.array(PERSON_COLORS[i], float)
        for name in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
            for x, y, _ in person(page, i)[1][name][TIPS]:
                window = shot[round(y * px) - 2 : round(y * px) + 3, round(x * px) - 2 : round(x * px) + 3]
                norm = np.linalg.norm(window, axis=2)
                cosine = window @ colour / (np.maximum(norm, 1e-9) * np.linalg.norm(colour))
                assert ((cosine > 0.97) & (norm > 80)).any(), (
                    f"person {i + 1}'s {name}: no stroke at ({x:.0f}, {y:.0f})"
                )

    if os.environ.get("FINECONTROL_SCREENSHOT_HANDS"):  # README's second screenshot
        page.locator("#pose-editor").screenshot(path=os.environ["FINECONTROL_SCREENSHOT_HANDS"])

    # Mirror (person 1 is selected after an import), then export: hands swapped and moved with the body
    body, parts = person(page, 0)
    page.click("#pose-editor button[data-action=mirror]")
    with page.expect_download(timeout=30_000) as download:
        page.click("#export-button")
    exported = tmp_path / "exported.json"
    download.value.save_as(exported)
    first = json.loads(exported.read_text())["people"][0]
    np.testing.assert_allclose(np.reshape(first["pose_keypoints_2d"], (18, 3)), mirror(body), atol=1e-6)
    flipped = mirror_parts(parts, pose_center(body)[0])
    for name in PART_KEYPOINTS:
        np.testing.assert_allclose(np.reshape(first[name], (-1, 3)), flipped[name], atol=1e-6, err_msg=name)
    assert_parts(page, 0, flipped)

    # the arrow keys, Bigger and a new canvas size carry them too
    body, parts = person(page, 0)
    page.locator(".fc-canvas").scroll_into_view_if_needed()  # (the export scrolled the page down)
    page.mouse.click(*canvas_to_page(page, *(body[8, :2] + body[9, :2]) / 2))  # the right thigh: selects, focuses
    page.keyboard.press("Shift+ArrowRight")
    np.testing.assert_allclose(person(page, 0)[0], body + (20, 0, 0), atol=1e-6)
    moved = {name: points + (20, 0, 0) for name, points in parts.items()}
    assert_parts(page, 0, moved)
    body = person(page, 0)[0]
    page.click("#pose-editor button[data-action=bigger]")
    np.testing.assert_allclose(person(page, 0)[0], scale(body, 1.1), atol=1e-6)
    assert_parts(page, 0, scale_parts(moved, 1.1, pose_center(body)))
    before = person(page, 1)[1]
    page.select_option("#pose-editor .fc-size", "768x512")
    assert_parts(page, 1, {name: points + (128, 0, 0) for name, points in before.items()})

    # the toy model's control map, asked for bodies, hands and faces: white face dots, blue hand joints
    page.click("text=Advanced settings")
    page.wait_for_load_state("networkidle")
    page.locator("#pose-parts input").click()
    page.get_by_role("option", name="body+hands+face", exact=True).click()
    expect(page.locator("#pose-parts input")).to_have_value("body+hands+face")
    page.click("#generate-button")
    control = page.locator("#control-map img")
    expect(control).to_be_visible(timeout=60_000)
    src = control.get_attribute("src")
    png = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    white = (image == 255).all(axis=2).sum()
    blue = (image == (0, 0, 255)).all(axis=2).sum()
    assert white > 10 and blue > 100, f"no faces ({white} white pixels) or hands ({blue} blue) in the control map"
