"""Batch experiments (`python -m finecontrol batch`, `finecontrol.experiments`) and the robustness
study (`python -m finecontrol robustness`): every item generated once, resumable, one row per
person, the report; the toy evaluation as one use of it; shards under accelerate."""

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from finecontrol import experiments, robustness
from finecontrol.cli import main
from finecontrol.metadata import read_png
from finecontrol.scene import SceneError, load_scene
from finecontrol.settings import Settings
from finecontrol.toyworld.evaluate import evaluate, held_out_scenes, score_image, summarise, to_scene

TOY_SCENES = Path("assets/scenes/toy")
FAST = ["--model", "toy", "--steps", "4"]


def batch(out: Path, *flags: str) -> int:
    return main(["batch", str(TOY_SCENES), "--out", str(out), *FAST, *flags])


def test_plan_is_every_combination_once_and_shards_split_it_without_overlap():
    scenes = [experiments.SceneInput(n, None) for n in ("a", "b")]
    items = experiments.plan(scenes, ["finecontrol", "controlnet"], [0, 1, 2])
    assert len(items) == len(set(items)) == 12
    shards = [experiments.shard(items, i, 3) for i in range(3)]
    assert sorted(sum(shards, []), key=items.index) == items
    assert all(len(s) == 4 for s in shards)
    for part in shards:  # whole scene-and-seed rows: each process gets every method alike
        rows = {(i.scene, i.seed) for i in part}
        assert sorted(part, key=items.index) == [i for i in items if (i.scene, i.seed) in rows]


def test_repeated_methods_seeds_and_files_run_once(tmp_path, capsys):
    two = str(TOY_SCENES / "two_people.json")
    flags = ["--out", str(tmp_path / "run"), *FAST, "--methods", "finecontrol,finecontrol", "--seeds", "3,3"]
    assert main(["batch", two, two, str(TOY_SCENES), *flags]) == 0
    assert "generated 4, 0 already done" in capsys.readouterr().err  # the 4 toy scenes, once each
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    assert len(rows) == sum(len(load_scene(p).people) for p in TOY_SCENES.glob("*.json"))


def test_find_scenes_reads_folders_and_pngs_once_each_and_a_pngs_settings_take_the_flags(tmp_path, toy):
    scene = load_scene(TOY_SCENES / "two_people.json")
    (tmp_path / "a").mkdir()
    scene.save(tmp_path / "a" / "two_people.json")
    from finecontrol.metadata import save_png

    settings = replace(toy.default_settings(), steps=3, guidance_scale=2.0)
    save_png(toy(scene, replace(settings, steps=1)).image, tmp_path / "a" / "made.png", scene, settings)
    found = experiments.find_scenes([tmp_path / "a", TOY_SCENES / "two_people.json"])
    out = tmp_path / "run"  # a PNG's settings, with the command line's flags over them
    assert main(["batch", str(tmp_path / "a" / "made.png"), "--out", str(out), "--model", "toy", "--steps", "2"]) == 0
    _, used = read_png(out / "images" / "made__finecontrol__seed0.png")
    assert used == replace(settings, steps=2, method="finecontrol", seed=0)
    assert [s.name for s in found] == ["made", "two_people", "two_people-2"]
    assert found[0].settings == settings and found[1].settings is None  # a PNG brings its settings
    assert found[0].scene == scene
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="holds no scene"):
        experiments.find_scenes([tmp_path / "empty"])
    with pytest.raises(SceneError, match="does not exist"):
        experiments.find_scenes([tmp_path / "nowhere.json"])


def test_batch_generates_every_scene_method_and_seed_and_scores_every_person(tmp_path, capsys):
    out = tmp_path / "run"
    assert batch(out, "--seeds", "0,1") == 0
    scenes = {p.stem: load_scene(p) for p in sorted(TOY_SCENES.glob("*.json"))}
    people = sum(len(s.people) for s in scenes.values())
    document = json.loads((out / "results.json").read_text())
    assert len(document["rows"]) == people * 3 * 2
    with open(out / "results.csv", newline="") as file:
        assert list(csv.DictReader(file)) == [
            {k: "" if v is None else str(v) for k, v in row.items()} for row in document["rows"]
        ]
    report = (out / "report.html").read_text()
    for name, scene in scenes.items():
        for method in ("finecontrol", "controlnet", "multicontrolnet"):
            for seed in (0, 1):
                image = out / "images" / f"{name}__{method}__seed{seed}.png"
                stored_scene, stored = read_png(image)  # each image carries its scene and settings
                assert stored_scene == scene and (stored.method, stored.seed, stored.steps) == (method, seed, 4)
                assert f'src="images/{image.name}"' in report
                rows = [r for r in document["rows"] if (r["scene"], r["method"], r["seed"]) == (name, method, seed)]
                assert [r["prompt"] for r in rows] == [p.prompt for p in scene.people]
                assert all(isinstance(r["toy_identity"], bool) for r in rows)
    # each person's row is what scoring the image directly gives for them
    from PIL import Image

    from finecontrol.toyworld.evaluate import from_scene, score_people

    for (name, method, seed), group in itertools.groupby(
        document["rows"], key=lambda r: (r["scene"], r["method"], r["seed"])
    ):
        image = np.asarray(Image.open(out / "images" / f"{name}__{method}__seed{seed}.png"))
        people, setting = score_people(image, from_scene(scenes[name]))
        assert [(r["toy_identity"], r["toy_pose"], r["toy_setting"]) for r in group] == [
            (p["toy_identity"], p["toy_pose"], setting if i == 0 else None) for i, p in enumerate(people)
        ]  # the setting once per image
    means = document["means"]["finecontrol"]
    fine = [r for r in document["rows"] if r["method"] == "finecontrol"]
    assert means["toy_identity"] == round(np.mean([r["toy_identity"] for r in fine]), 4)
    assert "<script" not in report and "http" not in report  # nothing fetched, nothing run


def test_a_rerun_skips_what_is_done_and_remakes_a_lost_item_identically(tmp_path, capsys):
    out = tmp_path / "run"
    assert batch(out, "--methods", "finecontrol,controlnet") == 0
    first = (out / "results.json").read_text()
    images = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert batch(out, "--methods", "finecontrol,controlnet") == 0
    assert "generated 0, 8 already done" in capsys.readouterr().err
    assert (out / "results.json").read_text() == first
    lost = "three_people__controlnet__seed0"
    (out / "records" / f"{lost}.json").unlink()
    (out / "images" / f"{lost}.png").unlink()
    assert batch(out, "--methods", "finecontrol,controlnet") == 0
    assert "generated 1, 7 already done" in capsys.readouterr().err
    assert (out / "images" / f"{lost}.png").read_bytes() == images[f"{lost}.png"]
    assert (out / "results.json").read_text() == first
    # a changed scene is made again, under the same name
    scenes = tmp_path / "scenes"
    shutil.copytree(TOY_SCENES, scenes)
    changed = load_scene(scenes / "one_person.json")
    changed.people[0].prompt = "a cyan person"
    changed.save(scenes / "one_person.json")
    flags = [*FAST, "--methods", "finecontrol,controlnet"]
    assert main(["batch", str(scenes), "--out", str(out), *flags]) == 0
    assert "generated 2, 6 already done" in capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["prompt"] for r in rows if r["scene"] == "one_person"] == ["a cyan person"] * 2


def test_the_toy_evaluation_through_the_batch_equals_generating_and_scoring_directly(toy, tmp_path):
    settings = replace(toy.default_settings(), steps=4)
    results = evaluate(
        toy, [2], 4, tmp_path / "eval", seed=99, methods=["finecontrol", "controlnet"], settings=settings
    )
    for method in ("finecontrol", "controlnet"):
        identity, fidelity, setting = [], [], []
        for k, scene in enumerate(held_out_scenes(2, 4, seed=99)):
            image = np.asarray(toy(to_scene(scene), replace(settings, method=method, seed=99 + k)).image)
            score = score_image(image, scene)
            identity += score["identity"]
            fidelity += score["fidelity"]
            setting.append(score["setting"])
        assert results[method]["2"] == {
            "identity_accuracy": round(float(np.mean(identity)), 4),
            "pose_fidelity": round(float(np.mean(fidelity)), 4),
            "setting_accuracy": round(float(np.mean(setting)), 4),
            "persons": len(identity),
        }
    assert (tmp_path / "eval" / "report.html").is_file()


def test_the_toy_summary_counts_identity_per_person_and_the_setting_per_image():
    def record(scene, method, people, setting):
        rows = [{"toy_identity": i, "toy_pose": p, "toy_setting": setting} for i, p in people]
        return {"scene": scene, "method": method, "people": rows}

    records = [
        record("n2-000", "finecontrol", [(True, 1.0), (False, 0.5)], True),
        record("n2-001", "finecontrol", [(True, 0.25), (None, None)], False),  # no body mask: not scored
        record("n3-000", "finecontrol", [(False, 0.0)] * 3, False),
        record("n2-000", "controlnet", [(False, 1.0), (False, 1.0)], False),
    ]
    summary = summarise(records, [2, 3], ["finecontrol", "controlnet"])
    assert summary["finecontrol"]["2"] == {
        "identity_accuracy": 0.6667,
        "pose_fidelity": 0.5833,
        "setting_accuracy": 0.5,
        "persons": 3,
    }
    assert summary["finecontrol"]["3"]["identity_accuracy"] == 0.0 and summary["finecontrol"]["3"]["persons"] == 3
    assert summary["controlnet"]["2"]["setting_accuracy"] == 0.0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--metrics", "colour"], "--metrics takes"),
        (["--methods", "finecontrol,nope"], "--methods takes"),
        (["--seeds", "a"], "--seeds takes"),
    ],
)
def test_bad_batch_flags_are_one_error_line(tmp_path, capsys, flags, message):
    assert batch(tmp_path / "run", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "images").exists()


def test_the_toy_metric_refuses_scenes_that_are_not_toy_scenes(tmp_path, capsys):
    code = main(["batch", "assets/scenes/two_people.json", "--out", str(tmp_path), *FAST, "--metrics", "toy"])
    assert code == 2
    assert "the toy metric scores toy scenes only" in capsys.readouterr().err


def test_a_real_models_batch_scores_clip_identity_and_fails_fast_without_clip_or_detector(
    tmp_path, tiny_clip, monkeypatch, capsys
):
    from finecontrol import models

    monkeypatch.setattr(models, "_hub_unavailable", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty hub cache
    out = tmp_path / "run"
    scene = ["batch", "assets/scenes/two_people.json", "--out", str(out), "--model", "tiny", "--steps", "2"]
    assert main(scene) == 2  # auto: clip and pose on a model that is not the toy, both said at once
    line = capsys.readouterr().err.strip().splitlines()[-1]  # one error line says all
    assert line.startswith("error: ") and "--metrics none" in line
    assert "hf download openai/clip-vit-base-patch32" in line and "hf download lllyasviel/Annotators" in line
    assert main([*scene, "--metrics", "pose"]) == 2
    err = capsys.readouterr().err
    assert "hf download lllyasviel/Annotators" in err and "openai/clip" not in err
    assert not (out / "images").exists()  # nothing generated before the metrics are ready
    folder = tmp_path / "clip"
    model, processor = tiny_clip
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert main([*scene, "--metrics", "clip", "--clip", str(folder)]) == 0
    document = json.loads((out / "results.json").read_text())
    assert len(document["rows"]) == 2 * 3
    assert all(isinstance(row["clip_own_wins"], bool) for row in document["rows"])
    assert "clip_margin" in (out / "report.html").read_text()
    images = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert main([*scene, "--metrics", "none"]) == 0  # other metrics: scored again, not made again
    assert "generated 0, 3 already done" in capsys.readouterr().err
    assert "clip_margin" not in json.loads((out / "results.json").read_text())["rows"][0]
    assert main([*scene, "--metrics", "clip", "--clip", str(folder)]) == 0
    assert json.loads((out / "results.json").read_text()) == document
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == images
    assert main([*scene, "--out", str(tmp_path / "plain"), "--metrics", "none"]) == 0
    row = json.loads((tmp_path / "plain" / "results.json").read_text())["rows"][0]
    assert set(row) == {"scene", "method", "seed", "person", "prompt"}


@pytest.mark.parametrize("axis", list(robustness.AXES))
def test_robustness_scenes_vary_only_their_axis(axis):
    for toy_scenes in (True, False):
        studies = robustness.study_scenes(axis, 3, toy=toy_scenes)
        assert len(studies) == 3 * len(robustness.AXES[axis])
        assert studies == robustness.study_scenes(axis, 3, toy=toy_scenes)  # fixed seeds
        for study in studies:
            poses = [p.keypoints for p in study.scene.people]
            # each person's size from their torso (neck to mid-hip), which every template pose shares
            heights = [np.linalg.norm(p[1, :2] - (p[8, :2] + p[11, :2]) / 2) / 0.32 for p in poses]
            centres = [np.mean(p[:, 0]) for p in poses]
            if axis == "people":
                assert len(poses) == study.value
            elif axis == "distance":
                gap = abs(centres[1] - centres[0]) / np.mean(heights)
                assert abs(gap - study.value) < 0.05, (study.name, gap)
            else:
                assert abs(max(heights) / min(heights) - study.value) < 0.05 * study.value, study.name
            if toy_scenes:
                assert len({p.prompt for p in study.scene.people}) == len(poses)


def test_robustness_on_the_toy_model_writes_scenes_plots_and_reports(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["robustness", "--out", str(out), "--scenes", "1", "--axes", "distance,scale", *FAST, "--seeds", "0"]
    assert main([*args, "--scenes-only"]) == 0
    assert len(list((out / "scenes" / "distance").glob("*.json"))) == len(robustness.AXES["distance"])
    assert not (out / "distance").exists()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "distance finecontrol: 1: " in printed
    for axis in ("distance", "scale"):
        assert (out / f"{axis}.png").stat().st_size > 0
        assert (out / axis / "report.html").is_file()
    index = (out / "report.html").read_text()
    assert 'src="distance.png"' in index and 'href="scale/report.html"' in index


@pytest.mark.slow
def test_two_accelerate_processes_give_the_same_results_as_one(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` runs two CPU processes here (no GPU), one
    thread each (torchrun's default); the single process is given one thread too, since a float
    sum split over other thread counts can round differently."""
    flags = [str(TOY_SCENES), *FAST, "--seeds", "0,1", "--device", "cpu"]
    one = subprocess.run(
        [sys.executable, "-m", "finecontrol", "batch", "--out", str(tmp_path / "one"), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = shutil.which("accelerate")
    assert launcher, "accelerate's launcher is missing (pip install -r requirements.txt)"
    two = subprocess.run(
        [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "finecontrol",
            "batch",
            "--out",
            str(tmp_path / "two"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert "process 1: generated 12" in two.stderr and "process 0: generated 12" in two.stderr
    assert (tmp_path / "two" / "results.json").read_text() == (tmp_path / "one" / "results.json").read_text()
    for image in (tmp_path / "one" / "images").iterdir():
        assert (tmp_path / "two" / "images" / image.name).read_bytes() == image.read_bytes()


def test_settings_of_a_batch_are_the_models_defaults_with_the_flags(tmp_path, toy):
    assert batch(tmp_path / "run", "--methods", "finecontrol", "--guidance", "2.5") == 0
    _, stored = read_png(next((tmp_path / "run" / "images").iterdir()))
    assert stored == replace(toy.default_settings(), steps=4, guidance_scale=2.5, method="finecontrol", seed=0)
    assert isinstance(stored, Settings)
