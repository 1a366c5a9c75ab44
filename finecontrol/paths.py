"""Where FineControl finds the files it ships (scenes, tokenizers, models, the editor's script)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
