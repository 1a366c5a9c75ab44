import numpy as np
import pytest
import torch

from finecontrol.models import load_model, tiny_pipeline, tiny_sdxl_pipeline
from finecontrol.pose import template_pose
from finecontrol.scene import Person, Scene

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    """The SD-shaped tiny random model, built once for the whole run."""
    return tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_sdxl():
    """The SDXL-shaped tiny random model, built once for the whole run."""
    return tiny_sdxl_pipeline()


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random CLIPModel and a CLIPProcessor (the tiny model's tokenizer, 32 px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from finecontrol.models import small_text_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=small_text_config(tokenizer, hidden=32, layers=2).to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


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


def _serve(engine):
    """FineControl Studio on `engine`, served on 127.0.0.1 until the generator closes."""
    from finecontrol.ui.demo import CSS, MAX_UPLOAD_BYTES, build_demo, queue

    demo = queue(build_demo(engine))  # as app.py queues and launches it
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=_free_port(),
        prevent_thread_lock=True,
        quiet=True,
        css=CSS,
        max_file_size=MAX_UPLOAD_BYTES,
    )
    yield url.rstrip("/")
    demo.close()


@pytest.fixture(scope="session")
def app_url(tiny):
    """The app on the tiny model for the whole run."""
    from finecontrol.ui.engine import Engine

    yield from _serve(Engine(name="tiny", pipe=tiny))


@pytest.fixture(scope="session")
def toy_app_url(toy):
    """The app on the shipped toy model, as `python app.py` starts it on a CPU machine."""
    from finecontrol.ui.engine import Engine, result_scorer

    yield from _serve(Engine(name="toy", pipe=toy, scorer=result_scorer(toy)))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_each_person_colours_their_own_region(panel, scene: Scene, scale: float = 1.0, margin: float = 48) -> None:
    """A mask preview panel (H, W, 3) shows person i's colour (PERSON_COLORS[i], any brightness)
    on many pixels near person i (their skeleton's box grown by `margin` panel pixels: joint
    radius, dilation radius, blur and a latent cell) and on none elsewhere; `scale` maps canvas
    to panel pixels."""
    from finecontrol.render import PERSON_COLORS

    pixels = panel.astype(np.float64)
    norm = np.linalg.norm(pixels, axis=2)
    ys, xs = np.mgrid[0 : panel.shape[0], 0 : panel.shape[1]]
    for i, person in enumerate(scene.people):
        color = np.array(PERSON_COLORS[i], np.float64)
        cosine = (pixels @ color) / (np.maximum(norm, 1e-9) * np.linalg.norm(color))
        tinted = (cosine > 0.9995) & (norm > 30)
        shown = person.keypoints[person.keypoints[:, 2] > 0, :2] * scale
        (x0, y0), (x1, y1) = shown.min(0) - margin, shown.max(0) + margin
        near = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        assert tinted[near].sum() > 0.05 * near.sum(), f"person {i + 1}'s colour is missing near them"
        assert not tinted[~near].any(), f"person {i + 1}'s colour appears far from them"
