"""Scene and settings stored in a PNG's text chunks, so an output reproduces itself."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from finecontrol.scene import Scene, SceneError, scene_from_json
from finecontrol.settings import Settings

SCENE_KEY = "finecontrol:scene"
SETTINGS_KEY = "finecontrol:settings"


def save_png(image: Image.Image, path: str | Path, scene: Scene, settings: Settings, **extra: str) -> None:
    """Save `image` with the scene and settings (and any extra text) in its metadata."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SCENE_KEY, scene.to_json())
    info.add_text(SETTINGS_KEY, json.dumps(settings.to_dict()))
    for key, value in extra.items():
        info.add_text(f"finecontrol:{key}", value)
    image.save(path, pnginfo=info)


def read_png(path: str | Path) -> tuple[Scene, Settings]:
    """The scene and settings a FineControl PNG was made with."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except OSError as err:
        raise SceneError(f"{path} is not a readable image: {err}") from err
    if SCENE_KEY not in text:
        raise SceneError(f"{path} carries no FineControl scene (was it saved by FineControl?)")
    scene = scene_from_json(text[SCENE_KEY])
    settings = Settings.from_dict(json.loads(text[SETTINGS_KEY])) if SETTINGS_KEY in text else Settings()
    return scene, settings
