import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_each_person_colours_their_own_region
from PIL import Image

from finecontrol.cli import main
from finecontrol.metadata import read_png
from finecontrol.scene import load_scene

SCENE = "assets/scenes/two_people.json"


@pytest.mark.slow
def test_generate_end_to_end_in_a_fresh_process(tmp_path):
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finecontrol",
            "generate",
            SCENE,
            "--out",
            str(out),
            "--seed",
            "5",
            "--steps",
            "4",
            "--model",
            "tiny",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "4/4" in proc.stderr  # the progress bar ran to the end
    scene, settings = read_png(out)
    assert scene == load_scene(SCENE)
    assert (settings.seed, settings.steps, settings.method) == (5, 4, "finecontrol")


def test_generate_reproduces_an_image_from_its_own_png(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", SCENE, "--out", str(first), "--steps", "3", "--guidance", "4", "--model", "tiny"]) == 0
    assert main(["generate", str(first), "--out", str(second), "--model", "tiny"]) == 0  # seed stored, reused
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert read_png(second)[1] == read_png(first)[1]


def test_compare_writes_a_labelled_grid_of_methods_by_seeds(tmp_path):
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "compare",
                SCENE,
                "--out",
                str(out),
                "--methods",
                "finecontrol,controlnet",
                "--seeds",
                "0,1",
                "--steps",
                "2",
                "--model",
                "tiny",
            ]
        )
        == 0
    )
    grid = Image.open(out)
    # the tiny model's 128x88 enlarged twice to 256x176, 8 px apart, captions in a band under each
    # row (a 16 px font at 256 px: 1/16 of the width, 16 at least; the band 1.8 times the font)
    row = 176 + int(16 * 1.8)
    assert grid.size == (2 * 256 + 8, 2 * row)
    pixels = np.asarray(grid.convert("RGB"))
    cells = [[pixels[r * row : r * row + 176, c * 264 : c * 264 + 256] for c in range(2)] for r in range(2)]
    assert not np.array_equal(cells[0][0], cells[0][1])  # methods differ
    assert not np.array_equal(cells[0][0], cells[1][0])  # seeds differ
    assert (pixels[:, 256:264] == 255).all()  # the gap between the methods
    for r in range(2):  # each row's captions under its images
        assert (pixels[r * row + 176 : (r + 1) * row].max(axis=2) < 128).sum() > 100


def test_masks_needs_no_model_and_draws_both_phases(tmp_path):
    out = tmp_path / "masks.png"
    assert main(["masks", "assets/scenes/five_people.json", "--out", str(out)]) == 0
    image = Image.open(out)
    # two 768x512 panels 8 px apart, each captioned under it (a 48 px font: 1/16 of 768 px)
    assert image.size == (2 * 768 + 8, 512 + int(48 * 1.8))
    pixels = np.asarray(image.convert("RGB"))
    five = load_scene("assets/scenes/five_people.json")
    for panel in (pixels[:512, :768], pixels[:512, 776:]):
        assert_each_person_colours_their_own_region(panel, five)
    assert (pixels[:, 768:776] == 255).all()
    for x0 in (0, 776):
        assert (pixels[512:, x0 : x0 + 768].max(axis=2) < 128).sum() > 100


def test_bad_input_gives_one_line_error_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}')
    assert main(["generate", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: person 1 has 3 keypoint values: expected 54 (18 BODY-18 keypoints as x, y, confidence)"
    )
    assert main(["compare", SCENE, "--out", str(tmp_path / "x.png"), "--methods", "dall-e"]) == 2
    assert "--methods takes" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    """Only errors in what the user gave become an `error:` line; a bug is not hidden behind one."""
    import finecontrol.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "mask_previews", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["masks", SCENE, "--out", str(tmp_path / "m.png")])


def test_an_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["masks", SCENE, "--out", str(tmp_path / "a-file" / "masks.png")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
