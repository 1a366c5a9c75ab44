"""Offline CLIP BPE tokenizer files for small models: every word of a vocabulary is one token.

Nothing can be downloaded here, so small models ship a `vocab.json` + `merges.txt` written by
`write_tokenizer`, loaded with `CLIPTokenizer.from_pretrained(folder, model_max_length=77)`.
Words outside the vocabulary still tokenize, as single characters.
"""

from __future__ import annotations

import json
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = 0
    symbols = {}
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Tokens of one lower-case ASCII word under the merge ranks, as CLIP's BPE applies them."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        best = min(ranked)[0]
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and ranks.get((parts[i], parts[i + 1])) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges, in priority order, that make each word a single token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(words)):
        if not (word.isascii() and word.isalpha() and word.islower()):
            raise ValueError(f"vocabulary words must be lower-case ASCII letters, got {word!r}")
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def write_tokenizer(words: list[str], folder: str | Path) -> None:
    """Write vocab.json and merges.txt for a CLIP tokenizer knowing `words`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = build_merges(words)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
