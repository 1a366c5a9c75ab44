"""Scene and settings stored in a PNG's text chunks, so an output reproduces itself.

Reading walks the PNG's chunks and keeps only FineControl's text: no pixel is decoded, so a small
file that would decode to gigabytes (a "decompression bomb") costs nothing to read.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

from finecontrol.scene import MAX_SCENE_BYTES, Scene, SceneError, brief, load_scene, scene_from_json
from finecontrol.settings import Settings, SettingsError

SCENE_KEY = "finecontrol:scene"
SETTINGS_KEY = "finecontrol:settings"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}


def save_png(image: Image.Image, path: str | Path, scene: Scene, settings: Settings, **extra: str) -> None:
    """Save `image` with the scene and settings (and any extra text) in its metadata."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SCENE_KEY, scene.to_json())
    info.add_text(SETTINGS_KEY, json.dumps(settings.to_dict()))
    for key, value in extra.items():
        info.add_text(f"finecontrol:{key}", value)
    image.save(path, pnginfo=info)


def read_png(path: str | Path) -> tuple[Scene, Settings]:
    """The scene and settings a FineControl PNG was made with (SceneError if it has none or they
    are not valid)."""
    text = png_text(path)
    if SCENE_KEY not in text:
        raise SceneError(f"{Path(path).name} carries no FineControl scene (was it saved by FineControl?)")
    scene = scene_from_json(text[SCENE_KEY])
    if SETTINGS_KEY not in text:
        return scene, Settings()
    try:
        values = json.loads(text[SETTINGS_KEY])
        if isinstance(values, dict):  # written before the setting existed, when bodies alone were drawn
            values.setdefault("pose_parts", "body")
        return scene, Settings.from_dict(values)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and SettingsError are ValueErrors
        reason = err if isinstance(err, SettingsError) else f"not valid JSON ({brief(str(err))})"
        raise SceneError(f"{Path(path).name}: its stored settings cannot be used: {reason}") from err


def read_scene_file(path: str | Path) -> tuple[Scene, Settings | None]:
    """A scene file (scene or OpenPose JSON; no settings) or a FineControl PNG (with its settings)."""
    if Path(path).suffix.lower() == ".png":
        return read_png(path)
    return load_scene(path), None


def png_text(path: str | Path, prefix: str = "finecontrol:") -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG whose keyword starts with `prefix`, read
    without decoding the image; each at most MAX_SCENE_BYTES once decompressed."""
    name = Path(path).name
    try:
        with open(path, "rb") as file:
            if file.read(8) != PNG_SIGNATURE:
                raise SceneError(f"{name} is not a PNG image")
            text: dict[str, str] = {}
            while True:
                header = file.read(8)
                if len(header) < 8:
                    raise SceneError(f"{name} is a truncated PNG (no end chunk)")
                length, kind = struct.unpack(">I4s", header)
                if kind == b"IEND":
                    return text
                if kind not in _TEXT_CHUNKS or length > 2 * MAX_SCENE_BYTES:
                    file.seek(length + 4, 1)  # the data and its CRC, unread
                    continue
                data, crc = file.read(length), file.read(4)
                if len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + data):
                    raise SceneError(f"{name} is a damaged PNG (a text chunk fails its checksum)")
                key, value = _text_chunk(kind, data, prefix, name)
                if key is not None:
                    text[key] = value
    except OSError as err:
        raise SceneError(f"{name} cannot be read: {err.strerror or err}") from err


def _text_chunk(kind: bytes, data: bytes, prefix: str, name: str) -> tuple[str | None, str]:
    """(keyword, text) of one text chunk, or (None, "") when its keyword lacks `prefix`."""
    keyword, _, rest = data.partition(b"\0")
    key = keyword.decode("latin-1")
    if not key.startswith(prefix):
        return None, ""
    try:
        if kind == b"tEXt":
            return key, rest.decode("latin-1")
        if kind == b"zTXt":
            return key, _inflate(rest[1:], name).decode("latin-1")
        compressed, rest = rest[:1] == b"\1", rest[2:]  # iTXt: flag, method, language\0, keyword\0, text
        _, _, rest = rest.partition(b"\0")
        _, _, rest = rest.partition(b"\0")
        return key, (_inflate(rest, name) if compressed else rest).decode("utf-8")
    except UnicodeDecodeError as err:
        raise SceneError(f"{name}: its {key!r} text is not valid UTF-8") from err


def _inflate(data: bytes, name: str) -> bytes:
    """zlib data, refused past MAX_SCENE_BYTES decompressed."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_SCENE_BYTES)
    except zlib.error as err:
        raise SceneError(f"{name} is a damaged PNG (a compressed text chunk: {err})") from err
    if inflater.unconsumed_tail:
        raise SceneError(f"{name}: a text chunk holds more than {MAX_SCENE_BYTES // 2**20} MB of text")
    return out
