"""Text from users, files and model folders, made safe to show on the page.

Two places render such text: Markdown components (the prompts used, the model line), where a
prompt is shown in a code span, and Gradio's toasts (gr.Error, gr.Warning, gr.Info), whose
message Gradio renders as HTML, so it is escaped. Either way a quoted `<img src=...>` or
`![t](http://...)` shows as typed and loads nothing. Messages also lose server folders and are
capped in length.
"""

from __future__ import annotations

import html
import re

# What a message may quote of a user's input (a file or preset name), and how long a whole message
# may be (a scene error lists what it expected).
MAX_ECHO_CHARS = 80
MAX_MESSAGE_CHARS = 1000
# An absolute path (/tmp/gradio/<hash>/scene.json, /usr/lib/python3/...) quoted in a message: its
# folders are cut, its file name kept. Only where a path can start (start of text, after a space,
# quote, bracket, "=" or ","), so "rock/pop/jazz" or a URL is left alone.
_SERVER_PATH = re.compile(r"""(?<![^\s'"(\[=,])(?:/[^\s/'"]+)+/(?=[^\s/'"])""")


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def without_server_paths(text: str) -> str:
    """`text` with the folders of the absolute paths it quotes cut (file names kept)."""
    return _SERVER_PATH.sub("", text)


def shown(text: str) -> str:
    """A message for a toast (gr.Error, gr.Warning, gr.Info): without server folders, at most
    MAX_MESSAGE_CHARS, HTML-escaped."""
    return html.escape(shorten(without_server_paths(text), MAX_MESSAGE_CHARS), quote=False)


def code_span(text: str) -> str:
    """`text` as a Markdown code span, which shows its content literally (no links, images, HTML
    or emphasis): fenced by one backtick more than its longest run of backticks, padded with a
    space where it starts or ends with a backtick or a space (CommonMark strips one of each).
    Line breaks show as ↵ (a blank line would end the span); empty text shows as *(none)*."""
    text = re.sub(r"\r\n|\r|\n", "↵", text)
    if not text:
        return "*(none)*"
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"
