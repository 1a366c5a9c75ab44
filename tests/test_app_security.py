"""What users, files and model folders write reaches the page only as text: prompts, messages and
the model line never render as Markdown or HTML (no request leaves for a host they name), messages
quote no server folder and no huge input; a model folder's bad `finecontrol.json` or NaN weights
stop with the reason; the API answers wrong types with a specific message, never a bare "Error"."""

import json
import re
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client
from markdown_it import MarkdownIt

from finecontrol.model_info import ModelInfo
from finecontrol.pipeline import NonFiniteError, build_prompts
from finecontrol.scene import load_scene
from finecontrol.settings import Settings, SettingsError
from finecontrol.ui import handlers
from finecontrol.ui.engine import Engine
from finecontrol.ui.text import MAX_ECHO_CHARS, code_span, shown

TWO = load_scene("assets/scenes/two_people.json")
HOST = "198.51.100.7"  # TEST-NET-2: never answers
HOSTILE = [
    f"a knight` ![t](http://{HOST}/track.png) `",
    f"<img src=http://{HOST}/img.png> in armour",
    "<script>window.pwned = 1</script>",
    f"[click](http://{HOST}/link) **bold** ``two`` ```three```",
    f"line one\n\n![t](http://{HOST}/after-blank-line.png)",
    "`starts with a backtick",
    " spaced ",
]


def render(markdown: str) -> str:
    """HTML of `markdown` by a CommonMark renderer (HTML allowed, as Gradio's Markdown allows it)."""
    return MarkdownIt("commonmark", {"html": True}).render(markdown)


def text_of(html_text: str) -> str:
    return re.sub(r"<[^>]+>", "", html_text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.parametrize("text", HOSTILE)
def test_a_code_span_shows_any_text_literally(text):
    html_text = render(f"- Person 1: {code_span(text)}")
    assert "<img" not in html_text and "<a " not in html_text and "<script" not in html_text
    assert "<strong>" not in html_text and html_text.count("<code>") == 1
    assert text.replace("\n", "↵") in text_of(html_text)


def test_prompts_used_show_hostile_prompts_as_typed(tiny):
    scene = load_scene("assets/scenes/two_people.json")
    scene.people[0].prompt, scene.people[1].prompt = HOSTILE[0], HOSTILE[1]
    scene.setting, scene.negative_prompt = HOSTILE[3], HOSTILE[2]
    for method in ("finecontrol", "controlnet", "multicontrolnet"):
        result = tiny(scene, Settings(steps=1, method=method, guidance_scale=1.0))
        html_text = render(handlers.prompts_markdown(result))
        assert not re.search(r"<(img|a|script)\b", html_text), html_text
        prompts = build_prompts(scene, "best quality")
        shown_texts = [prompts.global_prompt] if method == "controlnet" else prompts.people
        for text in shown_texts + [prompts.global_negative]:
            assert text in text_of(html_text)


def test_messages_are_html_escaped_without_server_folders_and_capped():
    message = shown(f"Could not import /tmp/gradio/0a1b2c/x.json: '<img src=http://{HOST}/x.png>' " + "y" * 5000)
    assert "<img" not in message and "&lt;img" in message
    assert "/tmp/gradio" not in message and "x.json" in message
    assert len(message) <= 1000 + 20
    assert shown("rock/pop/jazz and http://example.org/a/b") == "rock/pop/jazz and http://example.org/a/b"


def test_an_imported_file_with_hostile_text_is_refused_as_text(tmp_path):
    hostile = tmp_path / "scene.json"
    hostile.write_text(json.dumps({"format": f"<img src=http://{HOST}/x.png>", "people": []}))
    with pytest.raises(gr.Error) as info:
        handlers.import_file(str(hostile))
    message = info.value.message
    assert "<img" not in message and "&lt;img" in message and str(tmp_path) not in message


def test_an_import_error_names_the_file_without_its_folder_and_caps_a_long_name(tmp_path):
    path = tmp_path / ("n" * 200 + ".json")
    path.write_text("{not json")
    with pytest.raises(gr.Error) as info:
        handlers.import_file(str(path))
    message = info.value.message
    assert str(tmp_path) not in message and "n" * MAX_ECHO_CHARS not in message and "…" in message
    assert "not valid JSON" in message


def test_a_missing_file_is_named_without_its_folder(tmp_path):
    with pytest.raises(gr.Error) as info:
        handlers.import_file(str(tmp_path / "gone.png"))
    assert "gone.png" in info.value.message and str(tmp_path) not in info.value.message


def test_an_unknown_preset_name_is_capped_and_escaped():
    with pytest.raises(gr.Error) as info:
        handlers.load_preset("<b>" + "p" * 10_000)
    assert len(info.value.message) < 400 and "<b>" not in info.value.message and "two_people" in info.value.message


@pytest.mark.parametrize(
    "info, message",
    [
        ({"defaults": "fast"}, "defaults must be an object of settings"),
        ({"defaults": ["steps"]}, "defaults must be an object of settings"),
        ({"defaults": None}, "defaults must be an object of settings"),
        ({"vocabulary": "red blue"}, "vocabulary must be a list of words"),
        ({"negative_prompt": ["blurry"]}, "negative_prompt must be text or null"),
        ({"training_minutes": "long"}, "training_minutes must be a number"),
        ({"resolution": 10**6}, "resolution must be a positive whole number \\(64..1536\\)"),
        ({"stick_width": 10**6}, "stick_width must be a positive whole number \\(1..64\\)"),
    ],
)
def test_model_info_refuses_wrong_types_by_name(info, message):
    with pytest.raises(SettingsError, match=message):
        ModelInfo.from_dict(info)


def test_model_info_that_is_not_an_object_or_not_json_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="must hold a JSON object"):
        ModelInfo.from_dict([1, 2])
    (tmp_path / "finecontrol.json").write_text('{"defaults": {')
    with pytest.raises(SettingsError, match="finecontrol.json is not valid JSON"):
        ModelInfo.read(tmp_path)


def test_a_model_folder_with_bad_defaults_starts_the_app_and_the_page_says_why(tiny, tmp_path):
    from finecontrol.ui.demo import build_demo

    folder = tmp_path / "model"
    tiny.save_pretrained(folder)
    info = json.loads((folder / "finecontrol.json").read_text())
    (folder / "finecontrol.json").write_text(json.dumps({**info, "defaults": "fast"}))
    engine = Engine.load(str(folder))
    assert engine.pipe is None and "defaults must be an object of settings" in engine.error
    build_demo(engine)  # the app starts
    line = engine.describe()
    assert "could not be loaded" in line and "defaults must be an object" in line and str(tmp_path) not in line


def test_the_model_line_shows_a_hostile_load_error_as_text():
    line = Engine(name="m", error=f"SettingsError: <img src=http://{HOST}/x.png> ![t](http://{HOST}/t.png)").describe()
    assert not re.search(r"<(img|a)\b", render(line))


@pytest.fixture
def nan_in(tiny):
    """Fill one weight of the shared tiny model with NaN for the test, then put it back."""
    saved = []

    def poison(weight: torch.Tensor) -> None:
        saved.append((weight, weight.detach().clone()))
        with torch.no_grad():
            weight.fill_(float("nan"))

    yield poison
    with torch.no_grad():
        for weight, value in saved:
            weight.copy_(value)


def test_nan_weights_stop_at_the_first_step_with_the_reason(tiny, nan_in):
    nan_in(tiny.unet.conv_out.weight)
    steps = []
    with pytest.raises(NonFiniteError, match="NaN or infinite values in the latents after step 1 of 3"):
        tiny(TWO, Settings(steps=3), callback=lambda i, total, x0: steps.append(i))
    assert steps == [0]


def test_a_nan_vae_stops_with_the_reason_instead_of_a_black_image(tiny, nan_in):
    nan_in(tiny.vae.decoder.conv_out.weight)
    with pytest.raises(NonFiniteError, match="in the image decoded by the VAE"):
        tiny(TWO, Settings(steps=1))


def test_the_app_shows_nan_weights_as_an_error_message(tiny, nan_in):
    nan_in(tiny.unet.conv_out.weight)
    knobs = handlers.knob_values(Settings(steps=2))
    with pytest.raises(gr.Error, match="NaN or infinite values in the latents after step 1 of 2"):
        list(handlers.generate(Engine(name="tiny", pipe=tiny), TWO.to_dict(), "", "", *knobs))


def test_the_cli_reports_nan_weights_as_a_user_error():
    from finecontrol import cli

    assert issubclass(NonFiniteError, cli._USER_ERRORS)


# ---- the served app's API: wrong types get a specific message ---------------------------------


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def knobs_with(index: int, value) -> list:
    knobs = handlers.knob_values(Settings(steps=1))
    knobs[index] = value
    return knobs


BAD_KNOBS = [
    (handlers.KNOB_FIELDS.index("steps"), "abc", "steps must be a whole number"),
    (handlers.KNOB_FIELDS.index("steps"), None, "steps must be a whole number"),
    (handlers.KNOB_FIELDS.index("guidance_scale"), [1, 2], "guidance_scale must be a number"),
    (handlers.KNOB_FIELDS.index("harmony"), {"a": 1}, "harmony must be a number"),
    (handlers.KNOB_FIELDS.index("temperature"), "hot", "temperature must be a number"),
    (handlers.KNOB_FIELDS.index("seed"), "abc", "seed must be a whole number"),
    (handlers.KNOB_FIELDS.index("seed"), -1, "seed"),
    (handlers.KNOB_FIELDS.index("seed"), 10**30, "seed"),
]


@pytest.mark.parametrize("index, value, message", BAD_KNOBS)
def test_the_api_answers_a_wrong_setting_with_what_is_expected(client, index, value, message):
    with pytest.raises(Exception, match=message):
        client.predict(TWO.to_dict(), *knobs_with(index, value), api_name="/masks")


@pytest.mark.parametrize(
    "value, message",
    [
        ([1, 2], "sent no scene \\(a list"),
        ({**TWO.to_dict(), "setting": ["a"]}, "Invalid scene: scene: 'setting' must be text, got list"),
        (
            {**TWO.to_dict(), "negative_prompt": {"a": 1}},
            "Invalid scene: scene: 'negative_prompt' must be text, got dict",
        ),
        ({"people": "x" * 100_000}, "'people' must be a list"),
    ],
)
def test_the_api_answers_a_wrong_scene_with_a_reason(client, value, message):
    """The setting and negative prompt are fields of the canvas's value: wrong types in them too."""
    with pytest.raises(Exception, match=message):
        client.predict(value, api_name="/export_scene")


def test_the_api_compare_refuses_wrong_extra_seeds_by_name(client):
    knobs = handlers.knob_values(Settings(steps=1))
    with pytest.raises(Exception, match="Extra seeds must be a whole number from 0 to 3"):
        client.predict(TWO.to_dict(), "many", *knobs, api_name="/compare")


def test_no_message_quotes_the_app_folder(client):
    with pytest.raises(Exception) as info:
        client.predict(TWO.to_dict(), *knobs_with(0, "x" * 100_000), api_name="/masks")
    assert len(str(info.value)) < 2000 and str(Path.cwd()) not in str(info.value)


@pytest.mark.parametrize("value", [None, "abc", [1, 2], {"a": 1}, -(10**30), 1e308, True])
def test_no_input_of_masks_gets_a_bare_error(client, value):
    """Every input of /masks (the same ones as /generate) given a wrong type: an error that says
    what is wrong, never Gradio's bare "Error" (which gradio_client reports as "not enabled verbose
    error reporting")."""
    good = [TWO.to_dict(), *handlers.knob_values(Settings(steps=1))]
    for index in range(len(good)):
        args = list(good)
        args[index] = value
        try:
            client.predict(*args, api_name="/masks")
        except Exception as err:
            assert "verbose error" not in str(err), f"input {index} = {value!r}: a bare error"


def test_importing_plain_openpose_leaves_the_setting_and_negative_boxes_alone(tmp_path):
    """A file without a setting or negative prompt (or with null ones) gives a value without them,
    so that the canvas keeps its own rather than emptying them."""
    pose = load_scene("assets/scenes/one_person.json").people[0].keypoints
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": pose.reshape(-1).tolist()}], "negative_prompt": None}))
    value, *_ = handlers.import_file(str(path))
    assert "setting" not in value and "negative_prompt" not in value and len(value["people"]) == 1
    value, *_ = handlers.import_file("assets/scenes/two_people.json")
    assert (value["setting"], value["negative_prompt"]) == (TWO.setting, TWO.negative_prompt)


def test_an_unreadable_photo_is_named_without_its_server_folder(tmp_path):
    photo = tmp_path / "holiday.png"
    photo.write_text("not an image")
    with pytest.raises(gr.Error) as err:
        handlers.read_photo(photo)
    assert "Could not read holiday.png as an image" in str(err.value) and str(tmp_path) not in str(err.value)


def test_output_files_name_a_local_model_folder_by_its_name_only(tiny, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert Engine(name=str(folder), pipe=tiny).label == "my-model"
    assert Engine(name="org/some-model", pipe=tiny).label == "org/some-model"  # a hub id as given
