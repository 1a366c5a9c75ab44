import pytest
import torch

from finecontrol.models import load_model, tiny_pipeline
from finecontrol.pose import template_pose
from finecontrol.scene import Person, Scene

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    """The SD-shaped tiny random model, built once for the whole run."""
    return tiny_pipeline()


@pytest.fixture(scope="session")
def toy():
    """The shipped toy model (missing weights raise ModelNotAvailableError: an error, never a skip)."""
    return load_model("toy", device="cpu")


def make_scene(people: list[tuple[str, str, float]], width: int = 512, height: int = 512, setting: str = "") -> Scene:
    """A scene from (template, prompt, centre x) triples, feet near the bottom of the canvas."""
    return Scene(
        width=width,
        height=height,
        people=[Person(template_pose(t, x, height - 20, height * 0.75), prompt=p) for t, p, x in people],
        setting=setting,
    )


@pytest.fixture
def two_people() -> Scene:
    return make_scene([("walking", "an astronaut", 170.0), ("arms_up", "a samurai", 340.0)], setting="in a forest")


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max difference {diff:.3g} > {atol:.3g}"


def _serve(name: str, pipe):
    """FineControl Studio on `pipe`, served on 127.0.0.1 until the generator closes."""
    from finecontrol.ui.demo import CSS, build_demo
    from finecontrol.ui.engine import Engine

    demo = build_demo(Engine(name=name, pipe=pipe))
    demo.queue(max_size=20, default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                            quiet=True, css=CSS)
    yield url.rstrip("/")
    demo.close()


@pytest.fixture(scope="session")
def app_url(tiny):
    """The app on the tiny model for the whole run."""
    yield from _serve("tiny", tiny)


@pytest.fixture(scope="session")
def toy_app_url(toy):
    """The app on the shipped toy model, as `python app.py` starts it on a CPU machine."""
    yield from _serve("toy", toy)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
