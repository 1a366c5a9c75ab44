"""Batch experiments: scenes x methods x seeds generated once each, every person scored, one report.

A run lives in one folder:
- `images/KEY.png`: each generated image, its scene and settings in the PNG (`finecontrol.metadata`);
- `records/KEY.json`: the item's per-person scores, written after its image, so a re-run skips
  every item that has one made from the same scene, settings and model (resumable; an item whose
  scene or settings changed is made again, one scored with other metrics is scored again from
  its saved image);
- `results.json` / `results.csv`: one row per person of every item, plus (JSON) the means per method;
- `report.html`: one self-contained page (images by relative path, no script, nothing fetched
  from elsewhere): a row per scene and seed, a column per method, the prompts and each person's
  scores under each image.

Work is shared between processes (`accelerate launch --num_processes K -m finecontrol batch ...`):
process i of K takes the scene-and-seed rows i, i+K, ... (all their methods, so that every process
gets a like mix of cheap and costly methods); the main process merges every record once all are
done. A failing item (out of memory, NaN latents) stops its process with the error; what was done
is kept for the re-run.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from finecontrol.metadata import read_scene_file
from finecontrol.scene import Scene, SceneError
from finecontrol.settings import Settings

SCENE_SUFFIXES = (".json", ".png")
METRICS = ("toy", "clip", "pose")


class Scorer(Protocol):
    """Scores each person of a generated image: one dict per person, in the scene's order."""

    name: str  # the metric: toy, clip, pose
    source: str  # the model it scores with (hub id or folder), "" for none

    def score(self, image: Image.Image, scene: Scene) -> list[dict]: ...


@dataclass(frozen=True)
class Item:
    """One image to generate: a scene (by name) with one method and one seed."""

    scene: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.scene}__{self.method}__seed{self.seed}"


@dataclass
class SceneInput:
    """A scene to run, the settings it came with (a FineControl PNG's) and its name in the run."""

    name: str
    scene: Scene
    settings: Settings | None = None


def make_scorers(
    spec: str,
    model: str,
    scenes: list[Scene],
    clip: str | None = None,
    annotators: str | None = None,
    device: str | None = None,
) -> list[Scorer]:
    """The scorers `spec` names (comma-separated METRICS, `none`, or `auto`: the toy world's scores
    on the toy model, else CLIP identity and pose fidelity). Loads their models now, so that a
    missing one fails before any image is generated."""
    from finecontrol.settings import SettingsError

    if spec.strip() == "auto":
        names = ["toy"] if model == "toy" else ["clip", "pose"]
    elif spec.strip() == "none":
        names = []
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if not names or any(n not in METRICS for n in names):
            raise SettingsError(f"--metrics takes a comma-separated list of {', '.join(METRICS)}, or none or auto")
    scorers: list[Scorer] = []
    missing: list[str] = []  # every metric model that is not here, said at once
    if "toy" in names:
        from finecontrol.toyworld.evaluate import ToyScores, from_scene

        for scene in scenes:
            try:
                from_scene(scene)
            except ValueError as err:
                raise SettingsError(f"the toy metric scores toy scenes only: {err}") from err
        scorers.append(ToyScores())
    from finecontrol.models import DEFAULT_ANNOTATORS, ModelNotAvailableError

    if "clip" in names:
        from finecontrol.metrics import DEFAULT_CLIP, ClipIdentity

        try:
            scorers.append(ClipIdentity(clip or DEFAULT_CLIP, device=device or "cpu"))
        except ModelNotAvailableError as err:
            missing.append(f"clip: {err}")
    if "pose" in names:
        from finecontrol.metrics import PoseFidelity

        try:
            scorers.append(PoseFidelity(annotators=annotators or DEFAULT_ANNOTATORS, device=device))
        except ModelNotAvailableError as err:
            missing.append(f"pose: {err}")
    if missing:
        raise ModelNotAvailableError(
            "the metrics' models are not all here. "
            + " ".join(missing)
            + " Or leave them out: --metrics with the metrics you have, or --metrics none to only generate."
        )
    return scorers


def find_scenes(paths: Iterable[str | Path]) -> list[SceneInput]:
    """The scenes at `paths`: scene or OpenPose JSON files, FineControl PNGs, or folders of them
    (their .json and .png files, sorted). Names are the file stems, made unique."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SCENE_SUFFIXES and p.is_file())
            if not found:
                raise SceneError(f"folder {path.name} holds no scene (.json) or FineControl PNG")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise SceneError(f"{path} does not exist")
    scenes, names = [], set()
    seen: set[Path] = set()
    for file in files:
        if file.resolve() in seen:  # the same file named twice (or in a folder given too)
            continue
        seen.add(file.resolve())
        scene, settings = read_scene_file(file)
        if not scene.people:
            raise SceneError(f"{file.name} has no people")
        for note in scene.notes:
            print(f"note: {file.name}: {note}", file=sys.stderr)
        name = _unique(re.sub(r"[^A-Za-z0-9_.-]+", "-", file.stem) or "scene", names)
        scenes.append(SceneInput(name, scene, settings))
    return scenes


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    taken.add(candidate)
    return candidate


def plan(scenes: list[SceneInput], methods: list[str], seeds: list[int]) -> list[Item]:
    """Every combination, scene-major, then seed, then method (the report's order)."""
    return [Item(s.name, m, seed) for s in scenes for seed in seeds for m in methods]


def shard(items: list[Item], index: int, count: int) -> list[Item]:
    """The items process `index` of `count` generates: every count-th scene-and-seed row, from its
    index, with all of that row's methods."""
    rows = {row: k for k, row in enumerate(dict.fromkeys((item.scene, item.seed) for item in items))}
    return [item for item in items if rows[item.scene, item.seed] % count == index]


def scored_with(scorers: list[Scorer]) -> list[str]:
    """What a record's scores come from: each scorer's metric and model."""
    return [f"{s.name}:{s.source}" if s.source else s.name for s in scorers]


def run_items(
    pipe,
    scenes: list[SceneInput],
    items: list[Item],
    out: Path,
    settings: Settings,
    scorers: list[Scorer],
    progress: Callable[[], None] | None = None,
    model: str = "",
) -> int:
    """Generate and score each item not done yet (no record in `out/records` made from the same
    scene, settings and model); returns how many were generated. An item done but scored with
    other scorers is scored again from its saved image. A PNG input's own settings replace
    `settings` for its items."""
    from finecontrol.metadata import save_png

    by_name = {s.name: s for s in scenes}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(parents=True, exist_ok=True)
    scorer_ids = scored_with(scorers)
    made = 0
    for item in items:
        record_path = out / "records" / f"{item.key}.json"
        image_path = out / "images" / f"{item.key}.png"
        source = by_name[item.scene]
        item_settings = replace(source.settings or settings, method=item.method, seed=item.seed)
        made_from = fingerprint(source.scene, item_settings, model)
        done = json.loads(record_path.read_text()) if record_path.exists() else {}
        if done.get("made_from") == made_from and done.get("scored_with") == scorer_ids:
            if progress:
                progress()
            continue
        if done.get("made_from") == made_from and image_path.exists():  # done, scored otherwise
            with Image.open(image_path) as saved:
                image = saved.convert("RGB")
        else:
            image = pipe(source.scene, item_settings).image
            save_png(image, image_path, source.scene, item_settings, model=model)
            made += 1
        people = [{} for _ in source.scene.people]
        for scorer in scorers:
            for row, scores in zip(people, scorer.score(image, source.scene), strict=True):
                row.update(scores)
        record = {
            "scene": item.scene,
            "method": item.method,
            "seed": item.seed,
            "image": f"images/{item.key}.png",
            "prompts": [p.prompt for p in source.scene.people],
            "setting": source.scene.setting,
            "people": people,
            "made_from": made_from,
            "scored_with": scorer_ids,
        }
        _write_atomic(record_path, json.dumps(record, indent=1) + "\n")
        if progress:
            progress()
    return made


def fingerprint(scene: Scene, settings: Settings, model: str) -> str:
    """A short hash of what an image is made from: the scene, the settings and the model's name."""
    text = json.dumps([scene.to_dict(), settings.to_dict(), model], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a record."""
    partial = path.with_name(path.name + f".{os.getpid()}.part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def read_records(out: Path, items: list[Item]) -> list[dict]:
    """The records of `items`, in their order (missing ones raise FileNotFoundError)."""
    return [json.loads((out / "records" / f"{item.key}.json").read_text()) for item in items]


def rows(records: list[dict]) -> list[dict]:
    """One row per person of every record: scene, method, seed, person, prompt, then the scores."""
    table = []
    for record in records:
        for i, scores in enumerate(record["people"]):
            table.append(
                {
                    "scene": record["scene"],
                    "method": record["method"],
                    "seed": record["seed"],
                    "person": i + 1,
                    "prompt": record["prompts"][i],
                    **scores,
                }
            )
    return table


def means(table: list[dict], by: str = "method") -> dict[str, dict[str, float]]:
    """Per value of `by`: the mean of each numeric or boolean score over the rows that have it."""
    fixed = {"scene", "method", "seed", "person", "prompt"}
    result: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(row[by] for row in table):
        group = [row for row in table if row[by] == key]
        sums: dict[str, list[float]] = {}
        for row in group:
            for name, value in row.items():
                if name not in fixed and isinstance(value, (bool, int, float)):
                    sums.setdefault(name, []).append(float(value))
        result[key] = {name: round(sum(v) / len(v), 4) for name, v in sums.items()}
        result[key]["persons"] = len(group)
    return result


def write_results(out: Path, records: list[dict]) -> dict:
    """results.json (rows and means per method) and results.csv (the rows); returns the JSON."""
    table = rows(records)
    document = {"means": means(table), "rows": table}
    (out / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    columns = list(dict.fromkeys(name for row in table for name in row))
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(table)
    return document


# What the report's score names mean (those present are listed under its title).
LEGEND = {
    "toy_identity": "the person's body shows their prompt's colour (toy world)",
    "toy_pose": "share of the person's skeleton pixels drawn, not background (toy world)",
    "toy_setting": "the background is the setting's (toy world; once per image, on person 1)",
    "clip_similarity": "CLIP cosine of the person's crop to their own prompt",
    "clip_own_wins": "their own prompt is closer to their crop than every other person's",
    "clip_margin": "own prompt's similarity minus the best other person's",
    "clip_mean_margin": "own prompt's similarity minus the others' mean",
    "clip_own_probability": "softmax over the people's prompts, at their own",
    "pose_found": "the pose detector found a person matching their skeleton",
    "pose_pck": "share of their keypoints detected within 0.1 of their box's diagonal",
}


def _shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def write_report(out: Path, records: list[dict], title: str = "FineControl batch") -> Path:
    """report.html: a table with a row per scene and seed, a column per method; under each image
    the prompts and each person's scores."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    grid: dict[tuple[str, int], dict[str, dict]] = {}
    for record in records:
        grid.setdefault((record["scene"], record["seed"]), {})[record["method"]] = record
    summary = means(rows(records))
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:6px;vertical-align:top}img.result{max-width:256px;"
        "image-rendering:pixelated;min-width:128px}ol{margin:4px 0;padding-left:1.4em;font-size:13px}"
        ".scores{color:#444}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(records)} images: {len(grid)} scene and seed rows x {len(methods)} methods.</p>",
    ]
    present = [n for n in LEGEND if any(n in p for r in records for p in r["people"])]
    if present:
        parts.append("<dl>" + "".join(f"<dt>{n}</dt><dd>{e(LEGEND[n])}</dd>" for n in present) + "</dl>")
    if summary:
        names = list(dict.fromkeys(n for m in summary.values() for n in m))
        parts.append("<h2>Means per method</h2><table><tr><th>method</th>")
        parts += [f"<th>{e(n)}</th>" for n in names]
        parts.append("</tr>")
        for method, values in summary.items():
            cells = "".join(f"<td>{_shown(values.get(n))}</td>" for n in names)
            parts.append(f"<tr><td>{e(method)}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Images</h2><table><tr><th>scene, seed</th>")
    parts += [f"<th>{e(m)}</th>" for m in methods]
    parts.append("</tr>")
    for (scene, seed), by_method in grid.items():
        setting = next(iter(by_method.values()))["setting"]
        parts.append(f"<tr><td>{e(scene)}<br>seed {seed}<br><i>{e(setting)}</i></td>")
        for method in methods:
            record = by_method.get(method)
            if record is None:
                parts.append("<td></td>")
                continue
            people = "".join(
                f"<li>{e(prompt)}<br><span class=scores>"
                + e(", ".join(f"{k} {_shown(v)}" for k, v in scores.items()))
                + "</span></li>"
                for prompt, scores in zip(record["prompts"], record["people"])
            )
            alt = f"{scene} {method} seed {seed}"
            parts.append(f'<td><img class=result src="{e(record["image"])}" alt="{e(alt)}"><ol>{people}</ol></td>')
        parts.append("</tr>")
    parts.append("</table></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
