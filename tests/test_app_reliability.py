"""The app under stress: cancelled work stops, output files stay bounded, photos too large to decode
are refused before decoding, and the load benchmark runs. Assertions count steps and events, never
wall time (the machine is shared)."""

import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import gradio as gr
import pytest
from conftest import _serve
from gradio_client import Client
from PIL import Image

from finecontrol.scene import load_scene
from finecontrol.settings import COMPARED_METHODS, Settings
from finecontrol.ui import handlers
from finecontrol.ui.engine import Engine, GenerationCancelled, on_torch_thread

TWO = load_scene("assets/scenes/two_people.json")
HOLD_AT = 3  # the step at which a recorded generation waits to be told to go on
LONG = 200  # steps of a generation that is meant to be cancelled (the most Settings allows)


class Recorder:
    """Runs the tiny model's real generations and records each one: steps whose callback was called
    and how it ended. With `hold`, the next generation waits at step HOLD_AT until `go_on` is set
    (or 60 s), so that a cancel can be sent while it is certainly running."""

    def __init__(self, pipe):
        self.pipe, self.runs = pipe, []
        self.hold, self.held, self.go_on = False, threading.Event(), threading.Event()

    def __call__(self, scene, settings, on_step):
        run = {"steps": 0, "outcome": "running", "method": settings.method}
        self.runs.append(run)
        hold, self.hold = self.hold, False

        def counted(step, total, x0):
            run["steps"] += 1
            if hold and run["steps"] == HOLD_AT:
                self.held.set()
                self.go_on.wait(60)
            on_step(step, total, x0)

        try:
            result = self.pipe(scene, settings, callback=counted)
        except BaseException as err:
            run["outcome"] = type(err).__name__
            raise
        run["outcome"] = "done"
        return result

    def hold_next(self) -> None:
        self.hold = True
        self.held.clear()
        self.go_on.clear()


@pytest.fixture
def recorder(tiny):
    return Recorder(tiny)


def knobs(**settings):
    return handlers.knob_values(Settings(**settings))


def test_closing_generate_stops_the_generation_within_one_step(recorder, monkeypatch):
    """Gradio closes a cancelled event's generator: the denoising loop stops after the step that was
    running, and the torch thread is free at once."""
    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)
    updates = handlers.generate(
        Engine("tiny", pipe=recorder.pipe, run=recorder), TWO.to_dict(), "", "", *knobs(steps=LONG)
    )
    preview, *_ = next(updates)  # the preview of step 4: the generation is running
    assert isinstance(preview, Image.Image)
    updates.close()
    steps_when_closed = recorder.runs[0]["steps"]
    assert on_torch_thread(lambda: "free") == "free"  # queued behind the cancelled generation
    (run,) = recorder.runs
    assert run["outcome"] == "GenerationCancelled"
    assert run["steps"] <= steps_when_closed + 1 < LONG


def test_cancelling_compare_stops_within_one_step_and_starts_no_other_method(recorder):
    cancel, failure = threading.Event(), []
    recorder.hold_next()

    def compare():
        try:
            for _ in handlers.compare(
                Engine("tiny", pipe=recorder.pipe, run=recorder),
                TWO.to_dict(),
                None,
                None,
                3,
                *knobs(steps=LONG),
                cancel=cancel,
            ):
                pass
        except BaseException as err:
            failure.append(err)

    worker = threading.Thread(target=compare)
    worker.start()
    assert recorder.held.wait(60)
    cancel.set()
    recorder.go_on.set()
    worker.join(60)
    assert not worker.is_alive() and isinstance(failure[0], GenerationCancelled)
    # one generation of the 12 (3 methods x 4 seeds) ran, and stopped at the step it was held at
    assert recorder.runs == [{"steps": HOLD_AT, "outcome": "GenerationCancelled", "method": COMPARED_METHODS[0]}]


@pytest.fixture(scope="module")
def served(tiny):
    """The app on a recording engine (the tiny model's real generations), served on 127.0.0.1."""
    recorder = Recorder(tiny)
    for url in _serve(Engine(name="tiny", pipe=tiny, run=recorder)):
        yield recorder, Client(url, verbose=False)


@pytest.mark.parametrize("endpoint", ["/generate", "/compare"])
def test_a_cancelled_job_stops_within_a_step_and_the_next_one_runs(served, endpoint):
    """Through the API: cancel a long job while it runs; it stops at the step it was at (a compare
    starts no other method or seed) and the next request runs right after it."""
    recorder, client = served
    recorder.runs.clear()
    recorder.hold_next()
    extra = [3] if endpoint == "/compare" else []  # 12 generations of LONG steps
    job = client.submit(TWO.to_dict(), *extra, *knobs(steps=LONG), api_name=endpoint)
    assert recorder.held.wait(60), "the job never reached its step"
    job.cancel()  # returns once the server has handled the cancel
    recorder.go_on.set()
    image = client.predict(TWO.to_dict(), *knobs(steps=2), api_name="/generate")[0]
    assert Image.open(image).size == (128, 88)
    assert recorder.runs == [
        {"steps": HOLD_AT, "outcome": "GenerationCancelled", "method": "finecontrol"},
        {"steps": 2, "outcome": "done", "method": "finecontrol"},
    ]


@pytest.mark.parametrize("endpoint", ["/generate", "/compare"])
def test_the_progress_bar_shows_the_steps(served, endpoint):
    """The step callback runs on the torch thread, in the context of the event it serves (Gradio
    finds the event to report progress to in context variables); a comparison says which of its
    images is running."""
    recorder, client = served
    recorder.hold_next()
    extra = [0] if endpoint == "/compare" else []  # 3 images: one per method
    job = client.submit(TWO.to_dict(), *extra, *knobs(steps=LONG), api_name=endpoint)
    assert recorder.held.wait(60)
    wanted, shown = f"step {HOLD_AT - 1}/{LONG}", None
    if endpoint == "/compare":
        wanted = f"image 1 of 3 (finecontrol, seed {Settings().seed}): {wanted}"
    for _ in range(600):  # until the queue has sent the progress of the step before the held one
        progress = job.status().progress_data
        shown = progress[0].desc if progress else None
        if shown == wanted:
            break
        time.sleep(0.05)
    job.cancel()
    recorder.go_on.set()
    assert shown == wanted


def test_generations_leave_no_objects_behind_in_the_session(served, monkeypatch):
    """Gradio keeps, per session, a new component for each output an update skips (gr.skip()): the
    app's previews must not make any, or every preview of a session stays in memory."""
    import gc

    from finecontrol.ui.demo import InlineImage

    def components() -> int:
        gc.collect()
        return sum(type(o) in (InlineImage, gr.Markdown) for o in gc.get_objects())

    monkeypatch.setattr(handlers, "PREVIEW_MIN_SECONDS", 0)  # the app runs in this process
    recorder, client = served
    client.predict(TWO.to_dict(), *knobs(steps=2), api_name="/generate")
    before = components()
    for seed in range(3):
        job = client.submit(TWO.to_dict(), *knobs(steps=12, seed=seed), api_name="/generate")
        job.result()
        assert len(job.outputs()) == 3  # previews at steps 4 and 8, then the result
    assert components() == before


def _make_old_files(folder: Path, count: int) -> None:
    hours_ago = time.time() - 7200
    for k in range(count):
        path = folder / f"old-{k}.png"
        path.write_bytes(b"x")
        os.utime(path, (hours_ago, hours_ago))


def test_output_files_are_pruned_safely_from_several_threads(tmp_path, monkeypatch):
    """Several handlers prune the output folder at once: a file another thread removed meanwhile
    is no error."""
    monkeypatch.setattr(handlers, "_OUTPUT_DIR", tmp_path)
    errors = []
    for _ in range(5):
        _make_old_files(tmp_path, 300)
        start = threading.Barrier(4)

        def prune(start=start):
            start.wait()
            try:
                handlers._output_path("result", ".png").write_bytes(b"png")
            except Exception as err:
                errors.append(err)

        threads = [threading.Thread(target=prune) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert not list(tmp_path.glob("old-*"))


def test_the_output_folder_keeps_at_most_max_output_files(tmp_path, monkeypatch):
    monkeypatch.setattr(handlers, "_OUTPUT_DIR", tmp_path)
    made = []
    for k in range(3 * handlers.MAX_OUTPUT_FILES):
        path = handlers._output_path("result", ".png")
        path.write_bytes(b"png")
        os.utime(path, (time.time() + k, time.time() + k))  # strictly newer each time
        made.append(path)
    assert sorted(tmp_path.iterdir()) == sorted(made[-handlers.MAX_OUTPUT_FILES :])


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that declares `width` x `height` pixels (its data is one empty row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("side", [12000, 20000])  # above our limit; above Pillow's decompression-bomb limit
def test_a_photo_too_large_to_decode_is_refused_before_decoding(tmp_path, side):
    photo = _png_header_only(tmp_path / "huge.png", side, side)
    detected = []
    with pytest.raises(gr.Error, match="huge.png is .*too large for pose detection \\(at most 50 megapixels: scale"):
        handlers.pose_from_photo(detected.append, str(photo), TWO.to_dict(), "", "")
    assert detected == []


def test_an_unreadable_photo_is_refused_with_its_reason(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(gr.Error, match="Could not read notes.png as an image"):
        handlers.pose_from_photo(lambda image: [], str(tmp_path / "notes.png"), TWO.to_dict(), "", "")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_large_legal_photo_is_detected_on_a_small_copy_and_its_memory_returns(tmp_path):
    """A 40-megapixel photo (120 MB decoded) is decoded once, shrunk for the detector, and the
    memory is given back once the handler returns."""
    path = tmp_path / "wide.png"
    Image.new("RGB", (8000, 5000), (90, 120, 150)).save(path, compress_level=1)
    body = [(0.3, 0.2), (0.3, 0.3), (0.25, 0.3), (0.22, 0.45)] + [None] * 14
    seen = []

    def detect(image):
        seen.append((image.shape, _rss()))
        return [body]

    before = _rss()
    value = handlers.pose_from_photo(detect, str(path), TWO.to_dict(), "", "")
    after = _rss()
    assert len(value["people"]) == 3
    ((shape, during),) = seen
    assert shape == (640, 1024, 3)  # the longer side at PHOTO_DETECT_SIDE, aspect kept
    assert after - before < 30e6, f"{(after - before) / 1e6:.0f} MB still held after the photo"


def test_the_photo_reaches_the_handler_as_an_undecoded_file():
    """The app's photo input hands over the uploaded file's path (Gradio's own gr.Image would
    decode it first, where Pillow's bare DecompressionBombError escapes as "Error")."""
    from finecontrol.ui.demo import PhotoInput

    photo = PhotoInput(type="filepath", image_mode=None)
    payload = photo.data_model(path="/tmp/gradio/abc/photo.png", orig_name="photo.png")
    assert photo.preprocess(payload) == "/tmp/gradio/abc/photo.png"


def test_the_app_refuses_a_huge_photo_with_its_reason(served, tmp_path):
    """Through the API: not a bare "Error" from Pillow's decompression-bomb check in Gradio."""
    from gradio_client import handle_file

    recorder, client = served
    photo = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(Exception, match="huge.png is too large for pose detection \\(at most 50 megapixels"):
        client.predict(handle_file(photo), TWO.to_dict(), api_name="/pose_from_photo")


def test_uploads_larger_than_the_limit_are_refused(served, tmp_path):
    from gradio_client import handle_file

    from finecontrol.ui.demo import MAX_UPLOAD_BYTES

    recorder, client = served
    assert client.config["max_file_size"] == MAX_UPLOAD_BYTES
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(Exception, match="413|too large|exceeds"):
        client.predict(handle_file(big), TWO.to_dict(), api_name="/pose_from_photo")


@pytest.mark.slow
def test_the_load_benchmark_runs(tmp_path):
    """`python -m finecontrol.benchmark --load 2` starts the app, sends 2 concurrent generations and
    reports them."""
    done = subprocess.run(
        [sys.executable, "-m", "finecontrol.benchmark", "--load", "2", "--model", "toy"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "2 clients: 2 completed, 0 rejected (queue full), 0 failed" in done.stdout
    assert "RSS of the app" in done.stdout and "files in the output folder and Gradio's cache" in done.stdout
