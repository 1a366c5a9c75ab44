"""End to end in a real browser: Debian's chromium driven by Playwright, against the app on
127.0.0.1. In CI (CI=true) a missing browser is a failure, never a skip."""

import base64
import io
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from finecontrol.pose import LIMBS, NUM_KEYPOINTS, mirror, rotate, template_pose
from finecontrol.scene import MAX_CONTROL_STRENGTH
from finecontrol.ui.editor import ROTATE_STEP

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not Path(CHROMIUM).exists():  # an error, never a skip: README's test command installs it
    raise RuntimeError("chromium is missing: apt-get install chromium (or leave these tests out: -m 'not browser')")

pytestmark = pytest.mark.browser

from playwright.sync_api import expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _open(browser, url: str):
    """A page on the app that fails its test on any console error or request leaving 127.0.0.1."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on(
        "websocket",
        lambda ws: page.problems.append(f"websocket: {ws.url}") if urlparse(ws.url).hostname != "127.0.0.1" else None,
    )
    page.on(
        "request",
        lambda r: (
            page.problems.append(f"request left 127.0.0.1: {r.url}")
            if urlparse(r.url).scheme in ("http", "https", "ws", "wss") and urlparse(r.url).hostname != "127.0.0.1"
            else None
        ),
    )
    page.goto(url)
    page.wait_for_selector(".fc-canvas")
    yield page
    assert page.problems == []
    page.close()


@pytest.fixture
def page(browser, app_url):
    yield from _open(browser, app_url)


@pytest.fixture
def toy_page(browser, toy_app_url):
    yield from _open(browser, toy_app_url)


def scene(page) -> dict:
    return json.loads(page.locator("#pose-editor [data-scene]").get_attribute("data-scene"))


def keypoints(page, i: int = 0) -> np.ndarray:
    return np.reshape(scene(page)["people"][i]["pose_keypoints_2d"], (NUM_KEYPOINTS, 3))


def canvas_to_page(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator(".fc-canvas").bounding_box()
    s = scene(page)
    return box["x"] + x * box["width"] / s["canvas_width"], box["y"] + y * box["height"] / s["canvas_height"]


def add_person(page) -> None:
    page.click("#pose-editor button[data-action=add]")


def test_build_a_scene_drag_a_joint_undo_and_redo(page):
    add_person(page)
    add_person(page)
    assert len(scene(page)["people"]) == 2
    wrist = scene(page)["people"][1]["pose_keypoints_2d"][12:14]  # right wrist of person 2
    start = canvas_to_page(page, *wrist)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + 20, start[1] - 30, steps=5)
    page.mouse.up()
    moved = scene(page)["people"][1]["pose_keypoints_2d"][12:14]
    box = page.locator(".fc-canvas").bounding_box()
    assert moved[0] == pytest.approx(wrist[0] + 20 * scene(page)["canvas_width"] / box["width"], abs=1.5)
    assert moved[1] == pytest.approx(wrist[1] - 30 * scene(page)["canvas_height"] / box["height"], abs=1.5)

    page.click("#pose-editor button[data-action=undo]")
    assert scene(page)["people"][1]["pose_keypoints_2d"][12:14] == wrist
    page.click("#pose-editor button[data-action=redo]")
    assert scene(page)["people"][1]["pose_keypoints_2d"][12:14] == moved

    page.locator(".fc-canvas").focus()
    page.keyboard.press("Control+z")
    assert scene(page)["people"][1]["pose_keypoints_2d"][12:14] == wrist
    page.keyboard.press("Control+Shift+z")
    assert scene(page)["people"][1]["pose_keypoints_2d"][12:14] == moved


def set_seed(page, seed: int) -> None:
    """Open the Advanced settings and type a seed once the panel has settled (its components'
    code loads when it first opens), checking that the typed value stays."""
    page.click("text=Advanced settings")
    page.wait_for_load_state("networkidle")
    seed_input = page.locator("#seed input")
    expect(seed_input).to_have_value("0")
    seed_input.fill(str(seed))
    seed_input.press("Tab")
    expect(seed_input).to_have_value(str(seed))


def test_three_people_prompts_masks_generate_and_compare(page):
    for _ in range(3):
        add_person(page)
    prompts = ["an astronaut", "a samurai", "a chef"]
    for i, text in enumerate(prompts):
        page.fill(f".fc-card[data-index='{i}'] .fc-prompt", text)
    assert [p["prompt"] for p in scene(page)["people"]] == prompts
    page.fill("#setting textarea", "in a forest")
    page.click("#masks-button")
    expect(page.locator("#mask-image img")).to_be_visible(timeout=30_000)
    set_seed(page, 7)
    page.click("#generate-button")
    expect(page.locator("#result img")).to_be_visible(timeout=120_000)
    expect(page.locator("#prompts-used")).to_contain_text("an astronaut in a forest, best quality", timeout=30_000)
    expect(page.locator("#prompts-used")).to_contain_text("Seed 7")
    expect(page.locator("#prompts-used")).to_contain_text("Person 3: a chef in a forest, best quality")
    expect(page.locator("#mask-image img")).to_be_visible()
    page.click("#compare-button")
    expect(page.locator("#comparison img")).to_be_visible(timeout=180_000)


def test_toy_model_draws_each_typed_colour_on_its_own_skeleton(toy_page):
    """What `python app.py` does on a CPU machine: a preset, three colour prompts typed in, generate."""
    from finecontrol.scene import scene_from_dict
    from finecontrol.toyworld.evaluate import from_scene, score_image

    page = toy_page
    expect(page.get_by_text("toy world of coloured stick figures")).to_be_visible()
    page.get_by_text("three_people", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(3, timeout=30_000)
    for i, colour in enumerate(["red", "blue", "pink"]):
        page.fill(f".fc-card[data-index='{i}'] .fc-prompt", f"a {colour} person")
    page.fill("#setting textarea", "on grass")
    set_seed(page, 3)
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("Person 3: a pink person on grass", timeout=60_000)
    png = page.request.get(page.locator("#result img").get_attribute("src")).body()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    drawn = {**scene(page), "setting": "on grass"}  # the setting lives in its own textbox
    score = score_image(image, from_scene(scene_from_dict(drawn)))
    assert score["setting"] and score["identity"] == [True, True, True], score
    if os.environ.get("FINECONTROL_SCREENSHOT"):
        page.screenshot(path=os.environ["FINECONTROL_SCREENSHOT"], full_page=True)


def test_live_previews_show_in_the_result_box_then_the_png(page, tmp_path):
    """The result box shows inline webp previews while the tiny model generates (20 steps), then
    the result PNG, fetched as a file, which carries the scene."""
    from finecontrol.metadata import read_png

    add_person(page)
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a knight")
    page.evaluate(
        """() => {
            window.fcShown = [];
            const box = document.querySelector('#result');
            const note = () => {
                const img = box.querySelector('img');
                if (img && img.src && img.src !== window.fcShown.at(-1)) window.fcShown.push(img.src);
            };
            new MutationObserver(note).observe(box, {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("a knight", timeout=120_000)
    shown = page.evaluate("window.fcShown")
    previews, final = shown[:-1], shown[-1]
    assert previews and all(src.startswith("data:image/webp;base64,") for src in previews), shown
    first = Image.open(io.BytesIO(base64.b64decode(previews[0].split(",", 1)[1])))
    png = tmp_path / "result.png"
    png.write_bytes(page.request.get(final).body())
    assert first.size == tuple(side // 8 for side in Image.open(png).size)  # one pixel per latent cell
    assert read_png(png)[0].people[0].prompt == "a knight"


def test_empty_canvas_shows_an_error_and_keeps_the_scene(page):
    page.click("#generate-button")
    expect(page.get_by_text("The canvas is empty")).to_be_visible(timeout=30_000)
    assert scene(page)["people"] == []


def test_export_then_reimport_the_scene(page, tmp_path):
    add_person(page)
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a knight")
    page.click("text=Import / export")
    page.click("#export-button")
    link = page.locator("#export-file a").first
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    exported = tmp_path / "scene.json"
    info.value.save_as(exported)
    assert json.loads(exported.read_text())["people"][0]["prompt"] == "a knight"

    page.click("#pose-editor button[data-action=delete]")
    assert scene(page)["people"] == []
    page.locator("#import-file input[type=file]").set_input_files(str(exported))
    expect(page.locator(".fc-card[data-index='0'] .fc-prompt")).to_have_value("a knight", timeout=30_000)
    assert len(scene(page)["people"]) == 1


def test_importing_plain_openpose_keeps_the_negative_prompt_and_counts_in_words(page, tmp_path):
    """A plain OpenPose file has no negative prompt: the one in the box stays."""
    pose = template_pose("standing", 256, 480, 380)
    plain = tmp_path / "openpose.json"
    plain.write_text(json.dumps({"people": [{"pose_keypoints_2d": pose.reshape(-1).tolist()}]}))
    page.fill("#negative textarea", "blurry, extra limbs")
    page.click("text=Import / export")
    page.locator("#import-file input[type=file]").set_input_files(str(plain))
    expect(page.get_by_text("Imported 1 person from openpose.json.")).to_be_visible(timeout=30_000)
    assert len(scene(page)["people"]) == 1
    expect(page.locator("#negative textarea")).to_have_value("blurry, extra limbs")


def test_skeleton_tools_duplicate_mirror_scale_rotate_hide_resize_delete(page):
    add_person(page)
    page.click("#pose-editor button[data-action=duplicate]")
    people = scene(page)["people"]
    assert len(people) == 2
    first, copy = (np.reshape(p["pose_keypoints_2d"], (18, 3)) for p in people)
    np.testing.assert_allclose(copy[:, 1], first[:, 1])
    assert (copy[:, 0] > first[:, 0]).all()  # shifted right

    def pose(i=1):
        return np.reshape(scene(page)["people"][i]["pose_keypoints_2d"], (18, 3))

    before = pose()
    page.click("#pose-editor button[data-action=mirror]")
    mirrored = pose()
    centre = (before[:, 0].min() + before[:, 0].max()) / 2
    np.testing.assert_allclose(mirrored[4, 0], 2 * centre - before[7, 0])  # right wrist <- left wrist

    height = np.ptp(pose()[:, 1])
    page.click("#pose-editor button[data-action=bigger]")
    assert np.ptp(pose()[:, 1]) == pytest.approx(1.1 * height)
    page.click("#pose-editor button[data-action=rotate_right]")
    assert np.ptp(pose()[:, 0]) > np.ptp(mirrored[:, 0])  # a tilted figure is wider

    nose = pose()[0]
    page.mouse.dblclick(*canvas_to_page(page, nose[0], nose[1]))
    assert pose()[0, 2] == 0
    page.mouse.dblclick(*canvas_to_page(page, nose[0], nose[1]))
    assert pose()[0, 2] == 1

    before = pose()
    page.select_option("#pose-editor .fc-size", "768x512")
    assert (scene(page)["canvas_width"], scene(page)["canvas_height"]) == (768, 512)
    np.testing.assert_allclose(pose()[:, :2], before[:, :2] + [128, 0])  # same size, centred
    page.select_option("#pose-editor .fc-size", "512x768")
    np.testing.assert_allclose(pose()[:, :2], (before[:, :2] + [128, 0]) * 2 / 3 + [0, 768 / 2 - 512 / 3])
    expect(page.locator("#pose-editor .fc-status")).to_contain_text("scaled by 0.67 and centred, proportions kept")

    page.locator(".fc-canvas").focus()
    page.keyboard.press("Delete")
    assert len(scene(page)["people"]) == 1


def test_mirror_and_rotate_give_what_python_computes(page):
    """The script's keypoint count, left/right pairs and rotate step are Python's (sent as props)."""
    page.select_option("#pose-editor .fc-template", "walking")
    add_person(page)
    before = keypoints(page)
    page.click("#pose-editor button[data-action=mirror]")
    np.testing.assert_allclose(keypoints(page), mirror(before), atol=1e-6)

    before = keypoints(page)
    page.click("#pose-editor button[data-action=rotate_right]")
    np.testing.assert_allclose(keypoints(page), rotate(before, ROTATE_STEP), atol=1e-6)

    assert float(page.get_attribute(".fc-card[data-index='0'] .fc-strength", "max")) == MAX_CONTROL_STRENGTH


def test_every_bone_clear_of_the_joints_drags_the_whole_person(page):
    """The script hit-tests Python's limbs: grabbing the middle of each bone moves the person."""
    add_person(page)
    start = keypoints(page)
    css_per_pixel = page.locator(".fc-canvas").bounding_box()["width"] / scene(page)["canvas_width"]
    middles = {(a, b): (start[a, :2] + start[b, :2]) / 2 for a, b in LIMBS}
    clear = [
        limb for limb, m in middles.items() if np.hypot(*(start[:, :2] - m).T).min() * css_per_pixel > 20
    ]  # the script's joint reach is 12
    assert len(clear) >= len(LIMBS) // 2
    for limb in clear:
        x, y = canvas_to_page(page, *middles[limb])
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 10, y + 5, steps=3)
        page.mouse.up()
        moved = keypoints(page)
        np.testing.assert_allclose(
            moved[:, :2] - start[:, :2],
            np.tile([10, 5], (NUM_KEYPOINTS, 1)) / css_per_pixel,
            atol=0.05,
            err_msg=f"dragging the middle of limb {limb}",
        )
        page.click("#pose-editor button[data-action=undo]")
        np.testing.assert_allclose(keypoints(page), start)


def test_dragging_on_a_partly_scrolled_canvas_keeps_the_person_under_the_pointer(page):
    """With the top of the canvas scrolled out of view, grabbing a bone and dragging it 80 px to
    the right moves the person exactly 80 px to the right; the page does not scroll."""
    page.get_by_text("three_people", exact=True).click()
    expect(page.locator("#pose-editor .fc-status")).to_contain_text("3 people")
    top = page.locator(".fc-canvas").bounding_box()["y"]  # (clicking a preset scrolls the page)
    page.evaluate(f"window.scrollBy(0, {top + 100})")  # the canvas's top 100 px out of view
    scroll = page.evaluate("window.scrollY")
    assert page.locator(".fc-canvas").bounding_box()["y"] == pytest.approx(-100, abs=1)
    start = keypoints(page, 1)
    css_per_pixel = page.locator(".fc-canvas").bounding_box()["width"] / scene(page)["canvas_width"]
    x, y = canvas_to_page(page, *(start[8, :2] + start[9, :2]) / 2)  # the middle of the right thigh
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y, steps=4)
    page.mouse.up()
    assert page.evaluate("window.scrollY") == scroll
    np.testing.assert_allclose(keypoints(page, 1)[:, :2] - start[:, :2], [[80 / css_per_pixel, 0]] * 18, atol=0.05)


def x_extent(pose: np.ndarray) -> tuple[float, float]:
    shown = pose[pose[:, 2] > 0, 0]
    return shown.min(), shown.max()


def test_each_new_person_lands_in_the_widest_free_space(page):
    for _ in range(3):
        add_person(page)
    spans = sorted(x_extent(keypoints(page, i)) for i in range(3))
    assert all(left[1] < right[0] for left, right in zip(spans, spans[1:])), spans  # no overlap
    for _ in range(5):  # up to 8: where no space is free, still wholly on the canvas
        add_person(page)
    spans = [x_extent(keypoints(page, i)) for i in range(8)]
    assert all(0 <= left and right <= scene(page)["canvas_width"] for left, right in spans), spans


def test_keyboard_selects_the_person_being_written_for_nudges_and_reaches_every_control(page):
    add_person(page)
    add_person(page)
    status = page.locator("#pose-editor .fc-status")
    page.click(".fc-card[data-index='0'] .fc-prompt")
    expect(status).to_contain_text("selected: person 1")
    for _ in range(5):  # Tab on to person 2's prompt
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Person 2 prompt":
            break
    expect(status).to_contain_text("selected: person 2")
    page.keyboard.type("a knight")
    before = keypoints(page, 1)
    page.click("#pose-editor button[data-action=bigger]")  # acts on the person written for
    assert not np.allclose(keypoints(page, 1), before) and scene(page)["people"][1]["prompt"] == "a knight"

    start = keypoints(page, 1)
    page.mouse.click(*canvas_to_page(page, *(start[8, :2] + start[9, :2]) / 2))  # person 2's thigh
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("ArrowUp")
    np.testing.assert_allclose(keypoints(page, 1)[:, :2] - start[:, :2], [[22, -2]] * NUM_KEYPOINTS)
    page.click("#pose-editor button[data-action=undo]")  # the nudges are one step
    np.testing.assert_allclose(keypoints(page, 1), start)

    page.click("#pose-editor button[data-action=redo]")
    page.keyboard.press("Tab")  # from Redo: the canvas size, then the reference image's file chooser
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "fc-background"


HOSTILE_HOST = "198.51.100.7"  # TEST-NET-2: a request to it would fail the page fixture
HOSTILE_PROMPTS = [
    f"a knight` ![t](http://{HOSTILE_HOST}/track.png) `",
    f'<img src="http://{HOSTILE_HOST}/img.png"> and <script>window.pwned = 1</script>',
    f"[a link](http://{HOSTILE_HOST}/link) **not bold** ``two`` ![x](//{HOSTILE_HOST}/x.png)",
]


def test_hostile_prompts_show_as_typed_and_load_nothing(page):
    """Prompts with backticks, Markdown images and links, raw HTML and a script: the prompts used
    show them as typed, and no request leaves 127.0.0.1 (the page fixture fails on one)."""
    for _ in HOSTILE_PROMPTS:
        add_person(page)
    for i, text in enumerate(HOSTILE_PROMPTS):
        page.fill(f".fc-card[data-index='{i}'] .fc-prompt", text)
    page.fill("#setting textarea", f"in a forest\n\n![t](http://{HOSTILE_HOST}/after-a-blank-line.png)")
    page.click("#generate-button")
    used = page.locator("#prompts-used")
    expect(used).to_contain_text("Person 3:", timeout=120_000)
    for text in HOSTILE_PROMPTS:
        expect(used).to_contain_text(f"{text} in a forest↵↵![t](http://{HOSTILE_HOST}/after-a-blank-line.png)")
    assert used.locator("img, a, script").count() == used.locator("strong", has_text="not bold").count() == 0
    assert page.evaluate("window.pwned") is None


def test_an_imported_file_with_hostile_text_shows_the_error_as_text(page, tmp_path):
    """The import error quotes the file's bad field; the message shows the HTML as text."""
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps({"format": f"<img src=http://{HOSTILE_HOST}/toast.png>", "people": []}))
    page.click("text=Import / export")
    page.locator("#import-file input[type=file]").set_input_files(str(hostile))
    toast = page.get_by_test_id("toast-body").filter(has_text="Could not import hostile.json")
    expect(toast).to_contain_text(f"<img src=http://{HOSTILE_HOST}/toast.png>", timeout=30_000)
    assert toast.locator("img").count() == 0
    assert str(tmp_path) not in toast.inner_text()
