"""Hostile and broken input to the scene, settings and PNG readers and the CLI: every one a
SceneError/SettingsError naming the problem (an `error:` line in the CLI), never another exception,
a crash in the renderer, a huge echo or gigabytes of memory."""

import copy
import json
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from finecontrol import cli
from finecontrol.metadata import SCENE_KEY, SETTINGS_KEY, read_png, save_png
from finecontrol.render import mask_previews, scene_maps
from finecontrol.scene import MAX_EXTRA_BYTES, MAX_TEXT_CHARS, SceneError, load_scene, scene_from_dict, scene_from_json
from finecontrol.settings import Settings, SettingsError

TWO = load_scene("assets/scenes/two_people.json")


def doc() -> dict:
    return copy.deepcopy(TWO.to_dict())


def refused(value, match: str) -> str:
    """The SceneError message for a scene dict (or JSON text)."""
    read = scene_from_json if isinstance(value, str) else scene_from_dict
    with pytest.raises(SceneError, match=match) as err:
        read(value)
    return str(err.value)


# --- numbers, nesting and text that used to escape as other exceptions ---


@pytest.mark.parametrize(
    "field, value", [("canvas_width", 10**400), ("control_strength", -(10**400)), ("keypoint", 10**400)]
)
def test_integers_too_large_for_a_float_are_a_scene_error(field, value):
    d = doc()
    if field == "control_strength":
        d["people"][0]["control_strength"] = value
    elif field == "keypoint":
        d["people"][0]["pose_keypoints_2d"][0] = value
    else:
        d[field] = value
    message = refused(d, "must be a number|too large")
    assert len(message) < 200


def test_json_nested_too_deeply_is_a_scene_error():
    refused("[" * 100_000, "nested too deeply")
    d = doc()
    d["deep"] = nested = []
    for _ in range(200):
        nested.append([])
        nested = nested[0]
    refused(d, "nested too deeply")


def test_a_number_beyond_pythons_digit_limit_is_a_scene_error_without_advice_to_change_python():
    text = json.dumps(doc()).replace('"canvas_width": 768', '"canvas_width": ' + "7" * 5000)
    message = refused(text, "a number with more than 4300 digits")
    assert "sys.set_int_max_str_digits" not in message


@pytest.mark.parametrize("where", ["prompt", "setting", "negative_prompt"])
def test_a_lone_surrogate_in_text_is_a_scene_error(where):
    d = doc()
    (d["people"][0] if where == "prompt" else d)[where] = "a knight \ud800 in red"
    refused(d, "invalid character at position 9: half of a UTF-16 pair")


def test_overlong_text_is_refused_with_the_limit():
    d = doc()
    d["people"][1]["prompt"] = "a" * (MAX_TEXT_CHARS + 1)
    refused(d, f"is {MAX_TEXT_CHARS + 1} characters long: at most {MAX_TEXT_CHARS}")


def test_settings_text_is_checked_too():
    with pytest.raises(SettingsError, match="half of a UTF-16 pair"):
        Settings(quality_suffix="best \udfff")


# --- coordinates ---


def test_coordinates_far_off_the_canvas_are_refused_before_the_renderer_sees_them():
    d = doc()
    d["people"][0]["pose_keypoints_2d"][3] = 2e9  # keypoint 2's x
    refused(d, r"person 1: keypoint 2 has x = 2e\+09, too far off the canvas.*-768..1536")


def test_keypoints_up_to_one_canvas_beyond_each_edge_are_kept_and_render():
    d = doc()
    pose = np.asarray(d["people"][0]["pose_keypoints_2d"], dtype=float).reshape(18, 3)
    pose[1, :2] = (-768, 2 * 512)  # the neck, at the far corner of the allowed range
    d["people"][0]["pose_keypoints_2d"] = pose.reshape(-1).tolist()
    scene = scene_from_dict(d)
    combined, _, masks = scene_maps([p.keypoints for p in scene.people], (768, 512), (768, 512), (64, 96))
    assert combined.any() and masks.shape == (2, 64, 96)


# --- normalised coordinates ---


def normalised_doc(outlier: float | None = None) -> dict:
    """The two-person scene in fractions of the canvas, without a "coordinates" field (as pose
    editors write them)."""
    d = doc()
    del d["coordinates"]
    for person in d["people"]:
        pose = np.asarray(person["pose_keypoints_2d"], dtype=float).reshape(18, 3)
        pose[:, 0] /= d["canvas_width"]
        pose[:, 1] /= d["canvas_height"]
        person["pose_keypoints_2d"] = pose.reshape(-1).tolist()
    if outlier is not None:
        d["people"][1]["pose_keypoints_2d"][0] = outlier  # a nose slightly off the right edge
    return d


def test_one_normalised_keypoint_off_the_canvas_does_not_turn_the_scene_into_pixels():
    scene = scene_from_dict(normalised_doc(outlier=1.05))
    np.testing.assert_allclose(scene.people[0].keypoints, TWO.people[0].keypoints, atol=1e-6)
    assert scene.people[1].keypoints[0, 0] == pytest.approx(1.05 * 768)
    assert len(scene.notes) == 1 and "read as normalised coordinates" in scene.notes[0]


def test_the_coordinates_field_decides_without_guessing():
    as_pixels = scene_from_dict({**normalised_doc(), "coordinates": "pixels"})
    assert as_pixels.people[0].keypoints[:, :2].max() <= 2 and not as_pixels.notes
    as_fractions = scene_from_dict({**normalised_doc(), "coordinates": "normalized"})
    np.testing.assert_allclose(as_fractions.people[0].keypoints, TWO.people[0].keypoints, atol=1e-6)
    assert not as_fractions.notes
    refused({**doc(), "coordinates": "inches"}, "'coordinates' must be one of pixels, normalized, got 'inches'")


def test_pixel_scenes_are_read_as_pixels_without_a_note():
    scene = scene_from_dict(doc())
    assert scene == TWO and not scene.notes


# --- echoes and kept fields ---


def test_messages_never_echo_a_huge_value():
    d = doc()
    d["canvas_width"] = "9" * 5_000_000
    assert len(refused(d, "canvas_width must be a number of pixels")) < 200
    d["canvas_width"] = 1e300
    assert len(refused(d, "canvas_width .* is out of range")) < 200
    with pytest.raises(SettingsError) as err:
        Settings(method="x" * 5_000_000)
    assert len(str(err.value)) < 300


def test_unknown_fields_are_kept_up_to_a_stated_size():
    d = doc()
    d["people"][0]["face_keypoints_3d"] = [1.0] * (70 * 4)  # an OpenPose 3-D face: kept
    assert scene_from_dict(d).people[0].extra["face_keypoints_3d"] == [1.0] * 280
    d["editor_blob"] = "x" * (MAX_EXTRA_BYTES + 1)
    refused(d, f"extra fields .* take 257 KB: at most {MAX_EXTRA_BYTES // 1024} KB are kept")


# --- PNGs ---


def png_with(tmp_path, **text: str):
    path = tmp_path / "x.png"
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def with_size(path, width: int, height: int):
    """The same PNG claiming another size in its header (its pixels no longer match)."""
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("stored", ["null", "1", "[1, 2]", '"text"', "{", "[" * 5000])
def test_a_png_whose_settings_are_not_an_object_is_a_scene_error(tmp_path, stored):
    path = png_with(tmp_path, **{SCENE_KEY: TWO.to_json(), SETTINGS_KEY: stored})
    with pytest.raises(SceneError, match="x.png: its stored settings cannot be used"):
        read_png(path)


def test_reading_a_pngs_scene_decodes_no_pixels(tmp_path, monkeypatch):
    """A 20000 x 20000 PNG (over Pillow's decompression-bomb limit) still gives its scene: only
    the text chunks are read."""
    path = tmp_path / "big.png"
    save_png(Image.new("RGB", (8, 8)), path, TWO, Settings(seed=3))
    with_size(path, 20_000, 20_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    scene, settings = read_png(path)
    assert scene == TWO and settings.seed == 3


def test_text_chunks_after_the_image_data_and_compressed_ones_are_read(tmp_path):
    path = tmp_path / "late.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt(SCENE_KEY, TWO.to_json(), zip=True)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    data = path.read_bytes()
    start = data.index(b"iTXt") - 4
    end = start + 12 + struct.unpack(">I", data[start : start + 4])[0]
    chunk, rest = data[start:end], data[:start] + data[end:]
    iend = rest.index(b"IEND") - 4
    path.write_bytes(rest[:iend] + chunk + rest[iend:])  # the scene after IDAT, compressed
    assert read_png(path)[0] == TWO


def test_a_compressed_text_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt(SCENE_KEY, " " * (64 * 2**20), zip=True)  # 64 MB of spaces in ~64 KB
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(SceneError, match="more than 4 MB of text"):
        read_png(path)


# --- fuzzing ---

HOSTILE_VALUES = [
    None,
    True,
    0,
    -1,
    1.05,
    2e9,
    -2e9,
    10**400,
    float("nan"),
    float("inf"),
    "",
    "\ud800",
    "x" * 3000,
    [],
    [1, 2],
    {},
    {"a": [1]},
    [[[[[]]]]],
    "normalized",
    "pixels",
]


def mutate(d: dict, rng: random.Random) -> dict:
    """`d` with 1-3 random changes: a field replaced by a hostile value, deleted or added, a
    keypoint value changed, a person duplicated or removed."""
    d = copy.deepcopy(d)
    for _ in range(rng.randint(1, 3)):
        people = d.get("people") if isinstance(d.get("people"), list) else []
        person = rng.choice(people) if people and isinstance(people[0], dict) else None
        kind = rng.randrange(7)
        if kind == 0:
            d[rng.choice(["canvas_width", "canvas_height", "setting", "negative_prompt", "format", "coordinates"])] = (
                rng.choice(HOSTILE_VALUES)
            )
        elif kind == 1 and person is not None:
            person[rng.choice(["prompt", "negative_prompt", "control_strength", "pose_keypoints_2d"])] = rng.choice(
                HOSTILE_VALUES
            )
        elif kind == 2 and person is not None and isinstance(person.get("pose_keypoints_2d"), list):
            points = person["pose_keypoints_2d"]
            if points:
                points[rng.randrange(len(points))] = rng.choice(HOSTILE_VALUES + [rng.uniform(-2000, 3000)] * 5)
        elif kind == 3:
            d.pop(rng.choice(list(d) or ["people"]), None)
        elif kind == 4 and people:
            people.append(copy.deepcopy(rng.choice(people)))
        elif kind == 5 and people:
            people.pop(rng.randrange(len(people)))
        elif kind == 6:
            d[rng.choice(["people", "extra"])] = rng.choice(HOSTILE_VALUES)
    return d


def test_ten_thousand_mutated_scenes_give_a_scene_or_a_scene_error_and_accepted_ones_render():
    rng = random.Random(0)
    base = [doc(), load_scene("assets/scenes/five_people.json").to_dict(), normalised_doc()]
    accepted = 0
    for case in range(10_000):
        d = mutate(rng.choice(base), rng)
        try:
            scene = scene_from_dict(d) if case % 2 else scene_from_json(json.dumps(d))
        except SceneError:
            continue
        accepted += 1
        poses = [p.keypoints for p in scene.people]
        if poses and accepted % 10 == 0:  # samples: the renderer takes every accepted scene with people
            scene_maps(poses, (scene.width, scene.height), (64, 64), (8, 8))
        if poses and accepted % 200 == 0:  # (at canvas size: 0.1 s each)
            mask_previews(poses, (scene.width, scene.height), None, 1.0, 0.001)
        assert scene_from_json(scene.to_json()).to_json() == scene.to_json()  # (extra fields may hold NaN)
    assert 1000 < accepted < 9000  # the mutations reach both outcomes


def test_two_thousand_damaged_pngs_give_a_scene_or_a_scene_error(tmp_path):
    path = tmp_path / "out.png"
    save_png(Image.new("RGB", (16, 16)), path, TWO, Settings(seed=1))
    original = path.read_bytes()
    rng = random.Random(1)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(2000):
        data = bytearray(original)
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        else:
            at = rng.randrange(8, len(data) - 4)
            data[at : at + 4] = struct.pack(">I", rng.choice([0, 2**31 - 1, 2**32 - 1, rng.randrange(2**16)]))
        path.write_bytes(bytes(data))
        try:
            read_png(path)
            outcomes["read"] += 1
        except SceneError:
            outcomes["refused"] += 1
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 100, outcomes  # most bytes are the scene text


# --- the command line ---


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: these errors must come before it."""
    import finecontrol.models

    monkeypatch.setattr(finecontrol.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{tmp}/x.jpg"], "FineControl writes PNGs, which carry the scene and settings; use a .png name"),
        (["--out", "{tmp}"], "is a folder: give a file name"),
        (["--out", "{tmp}/x.png", "--steps", "0"], "steps must be a whole number in 1..200, got 0"),
    ],
)
def test_cli_refuses_bad_output_and_settings_before_loading_a_model(tmp_path, capsys, no_model, args, message):
    argv = ["generate", "assets/scenes/two_people.json", *(a.format(tmp=tmp_path) for a in args)]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_compare_checks_seeds_before_loading(tmp_path, capsys, no_model):
    argv = ["compare", "assets/scenes/two_people.json", "--out", str(tmp_path / "g.png"), "--seeds", "1,-5"]
    assert cli.main(argv) == 2
    assert "seed must be a whole number" in capsys.readouterr().err


def test_cli_says_when_it_reads_coordinates_as_normalised(tmp_path, capsys):
    scene = tmp_path / "n.json"
    scene.write_text(json.dumps(normalised_doc(outlier=1.05)))
    assert cli.main(["masks", str(scene), "--out", str(tmp_path / "m.png")]) == 0
    assert "note: keypoints read as normalised coordinates" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"canvas_width": ' + "7" * 5000 + "}", json.dumps({**TWO.to_dict(), "canvas_width": 10**400})],
)
def test_cli_turns_hostile_scene_files_into_one_error_line(tmp_path, capsys, text):
    scene = tmp_path / "s.json"
    scene.write_text(text)
    assert cli.main(["masks", str(scene), "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err) < 300


def test_cli_answers_every_bad_invocation_with_an_error_line_never_a_traceback(tmp_path, capsys):
    """39 bad invocations (missing, empty, binary or non-scene inputs, unwritable or wrong --out,
    out-of-range flags, unknown models, methods and seeds): exit status 2 and one `error:` line
    (or argparse's usage), never another exception."""
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "nobody.json").write_text(json.dumps({"canvas_width": 512, "canvas_height": 512, "people": []}))
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    scene, out, masks = "assets/scenes/two_people.json", str(tmp_path / "o.png"), str(tmp_path / "m.png")
    inputs = ["missing.json", ".", "empty.json", "binary.json", "text.png", "plain.png", "nobody.json"]
    flags = [
        ["--steps", "0"], ["--steps", "-1"], ["--steps", "abc"], ["--guidance", "nan"], ["--guidance", "inf"],
        ["--seed", "-1"], ["--seed", str(2**64)], ["--method", "bogus"], ["--width", "65", "--height", "64"],
        ["--width", "64"], ["--dtype", "fp8"], ["--max-batch", "0"], ["--model", str(tmp_path / "none")],
        ["--model", str(tmp_path)],
    ]  # fmt: skip
    cases = [["generate", str(tmp_path / name), "--out", out] for name in inputs]
    cases += [
        ["generate", scene, "--out", path] for path in ("/proc/none/o.png", str(tmp_path / "o.jpg"), str(tmp_path))
    ]
    cases += [["generate", scene, "--out", out, *f] for f in flags]
    cases += [["compare", scene, "--out", out, "--methods", m] for m in ("bogus", "")]
    cases += [["compare", scene, "--out", out, "--seeds", s] for s in ("a,b", "1,-5", "")]
    cases += [["compare", scene, "--out", str(tmp_path / "g.gif")], ["masks", scene, "--out", str(tmp_path / "m.xyz")]]
    cases += [
        ["masks", scene, "--out", masks, *f] for f in (["--dilation", "-3"], ["--blur", "nan"], ["--temperature", "0"])
    ]
    cases += [["masks", str(tmp_path / "nobody.json"), "--out", masks], ["masks", scene, "--out", "/proc/none/m.png"]]
    cases += [["masks", scene], ["bogus"], []]
    assert len(cases) == 39
    for argv in cases:
        try:
            status = cli.main(argv)
        except SystemExit as exit:  # argparse: usage and the problem
            status = exit.code
        err = capsys.readouterr().err
        assert status == 2 and ("error:" in err) and "Traceback" not in err, (argv, err)
