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
    # and the page says so next to each prompt
    expect(page.locator("#prompts-used li").filter(has_text="colour check: found ✓")).to_have_count(3)


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
    with page.expect_download(timeout=30_000) as info:  # one click: the download starts
        page.click("#export-button")
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
    # the toast is sent while the handler runs, the editor's new value after it returns
    expect(page.locator(".fc-card[data-index='0']")).to_be_visible(timeout=30_000)
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


def in_view(page, selector: str) -> bool:
    """Whether the element is wholly inside the viewport."""
    box = page.locator(selector).first.bounding_box()
    size = page.viewport_size
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= size["width"]
        and (box["y"] + box["height"] <= size["height"])
    )


def test_canvas_cards_generate_and_result_are_in_view_together_at_1400x900(toy_page):
    page = toy_page
    page.set_viewport_size({"width": 1400, "height": 900})
    page.get_by_text("three_people", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(3, timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("Person 3", timeout=60_000)
    page.evaluate("window.scrollTo(0, 0)")
    for selector in (".fc-canvas", ".fc-card[data-index='2']", "#generate-button", "#result img", "#setting"):
        assert in_view(page, selector), selector
    if os.environ.get("FINECONTROL_SCREENSHOT_LAYOUT"):
        page.screenshot(path=os.environ["FINECONTROL_SCREENSHOT_LAYOUT"])


def test_on_a_phone_generate_brings_the_result_into_view(browser, toy_app_url):
    page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page.goto(toy_app_url)
    page.wait_for_selector(".fc-canvas")
    page.get_by_text("two_people", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(2, timeout=30_000)
    # touch devices are told about touch, not the mouse wheel
    expect(page.locator(".fc-help-touch")).to_be_visible()
    expect(page.locator(".fc-help-mouse")).to_be_hidden()
    page.locator("#generate-button").scroll_into_view_if_needed()
    assert not in_view(page, "#result")
    page.locator("#generate-button").tap()
    expect(page.locator("#prompts-used")).to_contain_text("Person 2", timeout=60_000)
    box = page.locator("#result").bounding_box()
    assert -1 <= box["y"] < page.viewport_size["height"] / 2, box  # its top in the upper half of the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    page.close()


def test_an_error_leaves_the_outputs_clean_and_the_good_result_shown(toy_page):
    page = toy_page
    page.get_by_text("two_people", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(2, timeout=30_000)
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("Person 2", timeout=60_000)
    good = page.locator("#result img").get_attribute("src")
    for _ in range(2):
        page.click("#pose-editor button[data-action=delete]")
    page.click("#generate-button")
    expect(page.get_by_test_id("toast-body").filter(has_text="The canvas is empty")).to_be_visible(timeout=30_000)
    for panel in ("#result", "#control-map", "#mask-image", "#prompts-used", "#comparison"):
        assert page.locator(f"{panel} .error").count() == 0, panel
    assert page.locator("#result img").get_attribute("src") == good
    expect(page.locator("#result img")).to_be_visible()
    expect(page.locator("#result").get_by_text("Result (the PNG carries its scene)")).to_be_visible()
    for button in ("#masks-button", "#compare-button"):  # they check first too
        page.click(button)
        expect(page.get_by_test_id("toast-body").filter(has_text="The canvas is empty").first).to_be_visible()
        assert page.locator("#mask-image .error, #comparison .error").count() == 0


def test_the_result_is_marked_out_of_date_after_a_change_until_the_next_generate(toy_page):
    page = toy_page
    note = page.locator("#stale-note .fc-stale")
    page.get_by_text("one_person", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(1, timeout=30_000)
    expect(note).to_be_hidden()
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("Person 1", timeout=60_000)
    expect(note).to_be_hidden()
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a blue person")
    expect(note).to_be_visible()
    expect(note).to_contain_text("changed since this image")
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a red person")  # back as it was: up to date
    expect(note).to_be_hidden()
    page.fill("#setting textarea", "in snow")
    expect(note).to_be_visible()
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("in snow", timeout=60_000)
    expect(note).to_be_hidden()
    page.click("#pose-editor button[data-action=bigger]")  # a pose edit counts too
    expect(note).to_be_visible()


def decoded(page, selector: str) -> np.ndarray:
    src = page.locator(selector).get_attribute("src")
    data = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def watch_box(page, selector: str) -> None:
    """Record, at every change inside the element, its text and the start of its image's src
    (read back with `page.evaluate("window.fcSeen")`)."""
    page.evaluate(
        """(selector) => {
            window.fcSeen = [];
            const box = document.querySelector(selector);
            new MutationObserver(() => {
                const img = box.querySelector('img');
                window.fcSeen.push([box.innerText, img ? img.src.slice(0, 20) : '']);
            }).observe(box, {subtree: true, childList: true, attributes: true, characterData: true});
        }""",
        selector,
    )


def test_compare_shows_image_k_of_k_and_previews_then_a_captioned_grid(page):
    add_person(page)
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a knight")
    watch_box(page, "#comparison")
    page.click("#compare-button")
    expect(page.locator("#comparison img[src$='.png']")).to_be_visible(timeout=180_000)
    seen = page.evaluate("window.fcSeen")
    texts = " ".join(text for text, _ in seen)
    for k in (1, 2, 3):
        assert f"image {k} of 3" in texts, texts[:2000]
    assert any(src.startswith("data:image/webp") for _, src in seen)  # live previews
    grid = decoded(page, "#comparison img")
    image = 128  # the tiny model's 128 px images, enlarged twice to 256
    caption = grid[2 * image :, :]  # the band under the images
    assert grid.shape[1] == 3 * 2 * image + 2 * 8 and (caption < 100).any(axis=2).sum() > 100


def test_mask_preview_halves_are_captioned(page):
    add_person(page)
    page.click("#masks-button")
    expect(page.locator("#mask-image img")).to_be_visible(timeout=30_000)
    masks = decoded(page, "#mask-image img")
    height = scene(page)["canvas_height"]
    assert masks.shape[0] > height
    band = masks[height:]
    half = (masks.shape[1] - 8) // 2
    for part in (band[:, :half], band[:, half + 8 :]):  # dark caption text under each half
        assert (part.max(axis=2) < 100).sum() > 200


def test_undo_restores_the_setting_and_negative_a_preset_replaced(toy_page):
    page = toy_page
    page.fill("#setting textarea", "on a beach")
    page.fill("#negative textarea", "night")
    page.get_by_text("three_people", exact=True).click()
    expect(page.locator("#setting textarea")).to_have_value("in snow", timeout=30_000)
    expect(page.locator("#negative textarea")).to_have_value("")
    page.click("#pose-editor button[data-action=undo]")
    expect(page.locator("#setting textarea")).to_have_value("on a beach")
    expect(page.locator("#negative textarea")).to_have_value("night")
    assert scene(page)["people"] == [] and scene(page)["setting"] == "on a beach"
    page.click("#pose-editor button[data-action=redo]")
    expect(page.locator("#setting textarea")).to_have_value("in snow")


def test_words_the_toy_model_does_not_know_are_listed_before_generating(toy_page, toy):
    from finecontrol.model_info import unknown_words

    page = toy_page
    vocabulary = toy.info.vocabulary
    add_person(page)
    prompt = page.locator(".fc-card[data-index='0'] .fc-prompt")
    # the placeholders suggest words the model knows
    for placeholder in (prompt.get_attribute("placeholder"), page.get_attribute("#setting textarea", "placeholder")):
        example = placeholder.split("e.g. ", 1)[1]
        assert example and not unknown_words(example, vocabulary), placeholder
    note = page.locator(".fc-card[data-index='0'] .fc-words")
    expect(note).to_contain_text("No prompt")  # an empty prompt is pointed out
    text = "An astronaut in a White suit, red!"
    prompt.fill(text)
    expect(note).to_have_text(f"Not words this model knows (ignored): {', '.join(unknown_words(text, vocabulary))}")
    prompt.fill("a red person")
    expect(note).to_be_hidden()
    page.fill("#setting textarea", "in a forest")
    expect(page.locator(".fc-words[data-field=setting]")).to_contain_text("forest")
    expect(page.locator(".fc-legend")).to_contain_text("Skeleton colours number the people")


def test_an_empty_prompt_is_warned_of_when_generating(toy_page):
    page = toy_page
    add_person(page)
    page.click("#generate-button")
    expect(page.get_by_test_id("toast-body").filter(has_text="Person 1 has no prompt")).to_be_visible(timeout=30_000)


def test_long_prompts_wrap_and_small_text_is_readable(page):
    add_person(page)
    page.fill(".fc-card[data-index='0'] .fc-prompt", "x" * 20_000)
    page.fill("#setting textarea", "y" * 20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    for selector in (".fc-card[data-index='0'] .fc-prompt", "#setting textarea"):
        width = page.eval_on_selector(selector, "e => [e.scrollWidth, e.clientWidth]")
        assert width[0] <= width[1], (selector, width)
    contrast = page.evaluate(
        """() => {
            const rgb = (c) => c.match(/[0-9.]+/g).slice(0, 3).map(Number);
            const lum = (c) => {
                const linear = (v) => (v / 255 <= 0.03928 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4);
                const [r, g, b] = rgb(c).map(linear);
                return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            const background = (e) => {
                for (; e; e = e.parentElement) {
                    const c = getComputedStyle(e).backgroundColor;
                    if (c && !c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return c;
                }
                return 'rgb(255, 255, 255)';
            };
            const texts = '.fc-status, .fc-help-mouse, .fc-legend, .fc-words:not(:empty)';
            return [...document.querySelectorAll(texts)].map((e) => {
                const [a, b] = [lum(getComputedStyle(e).color), lum(background(e))].sort((x, y) => y - x);
                return [e.className, (a + 0.05) / (b + 0.05)];
            });
        }"""
    )
    assert len(contrast) >= 3 and all(ratio >= 4.5 for _, ratio in contrast), contrast


def test_the_template_and_size_pickers_look_like_dropdowns(page):
    for selector in ("#pose-editor .fc-template", "#pose-editor .fc-size"):
        style = page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundImage")
        assert "svg" in style, (selector, style)  # the chevron


def test_generate_shows_step_n_of_n_while_it_runs(page):
    add_person(page)
    page.fill(".fc-card[data-index='0'] .fc-prompt", "a knight")
    watch_box(page, "#result")
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("a knight", timeout=120_000)
    texts = " ".join(text for text, _ in page.evaluate("window.fcSeen"))
    assert "step 4/20" in texts or "step 8/20" in texts, texts[:2000]


def test_the_toy_lora_picked_on_person_2s_card_stripes_person_2_only(toy_page):
    """Issue 13 in the browser: a preset, the toy model's stripes LoRA added on person 2's card,
    Generate: the downloaded PNG shows stripes on person 2 and none on person 1."""
    from finecontrol.scene import scene_from_dict
    from finecontrol.toyworld.evaluate import from_scene
    from finecontrol.toyworld.lora import STRIPE_THRESHOLD, person_stripes

    page = toy_page
    page.get_by_text("two_people", exact=True).click()
    expect(page.locator(".fc-card")).to_have_count(2, timeout=30_000)
    page.click(".fc-card[data-index='1'] .fc-lora-add")
    name = page.locator(".fc-card[data-index='1'] .fc-lora-name")
    expect(name).to_have_value("stripes")  # the model's own LoRA is offered first
    name.fill("strpes")  # a typo is said before anything runs
    page.click("#generate-button")
    expect(page.get_by_test_id("toast-body").filter(has_text="strpes").first).to_be_visible(timeout=30_000)
    name.fill("stripes")
    page.fill(".fc-card[data-index='1'] .fc-lora-scale", "1")
    assert scene(page)["people"][1]["loras"] == [{"name": "stripes", "scale": 1}]
    assert "loras" not in scene(page)["people"][0]
    page.click("#generate-button")
    expect(page.locator("#prompts-used")).to_contain_text("LoRAs: stripes:1", timeout=60_000)
    png = page.request.get(page.locator("#result img").get_attribute("src")).body()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    first, second = person_stripes(image, from_scene(scene_from_dict(scene(page))))
    assert first < STRIPE_THRESHOLD < second, (first, second)


def test_a_batch_report_opens_with_every_image_and_requests_nothing_outside(browser, tmp_path):
    """`batch` on the toy model over the example toy scenes x 3 methods x 2 seeds: report.html
    opened from disk shows all 24 images and asks for nothing but its own files."""
    from finecontrol.cli import main

    out = tmp_path / "run"
    assert main(["batch", "assets/scenes/toy", "--out", str(out), "--model", "toy", "--seeds", "0,1"]) == 0
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((out / "report.html").as_uri())
    images = page.locator("img.result")
    expect(images).to_have_count(24)
    page.wait_for_load_state("load")
    sizes = images.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert sizes == [[True, 64]] * 24
    assert all(urlparse(u).scheme == "file" and u.startswith(out.as_uri()) for u in requests), requests
    assert len(requests) == 1 + 24  # the page and its images
    expect(page.get_by_text("a red person").first).to_be_visible()
    assert problems == []
    page.close()
