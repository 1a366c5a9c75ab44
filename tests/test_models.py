import time

import pytest
import torch
from conftest import assert_close

from finecontrol.model_info import ModelInfo
from finecontrol.models import TINY_TOKENIZER, TINY_WORDS, ModelNotAvailableError, load_model, tiny_tokenizer
from finecontrol.settings import Settings
from finecontrol.tokenizer import write_tokenizer


def test_shipped_tiny_tokenizer_is_reproducible(tmp_path):
    write_tokenizer(TINY_WORDS, tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_text() == (TINY_TOKENIZER / name).read_text(), name


def test_every_vocabulary_word_is_one_token_and_unknown_words_still_tokenize():
    tokenizer = tiny_tokenizer()
    for word in TINY_WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    ids = tokenizer("an Astronaut, in xyzzy").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # CLIP's unk is also its end token
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(tokenizer("a red person").input_ids) == 5


def test_tiny_model_is_deterministic():
    a, b = load_model("tiny", device="cpu"), load_model("tiny", device="cpu")
    for p, q in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(p, q)


def test_saved_folder_loads_back_and_generates_the_same_image(tiny, two_people, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), device="cpu")
    assert loaded.resolution == tiny.resolution
    settings = Settings(steps=3)
    assert_close(loaded(two_people, settings).latents, tiny(two_people, settings).latents, atol=0)


@pytest.mark.parametrize("name", ["sd15", "someone/some-model"])
def test_real_model_offline_fails_fast_with_instructions(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="hf download .* --local-dir"):
        load_model(name, device="cpu")
    assert time.monotonic() - start < 30


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, tmp_path):
    import finecontrol.models as models

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "HUB_HOST", "hub.invalid")  # a name that never resolves
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        load_model("sd15", device="cpu")


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nothing"), device="cpu")


@pytest.mark.parametrize(
    "info, message",
    [
        ({"stick_widht": 1}, "unknown key.*stick_widht"),
        ({"stick_width": 0}, "stick_width must be a positive whole number"),
        ({"defaults": {"guidance": 3.0}}, "defaults: unknown settings: guidance"),
        ({"defaults": {"steps": 0}}, "defaults: steps must be"),
    ],
)
def test_model_info_refuses_unknown_keys_and_bad_values_by_name(info, message):
    with pytest.raises(ValueError, match=message):
        ModelInfo.from_dict(info)


def test_a_folder_with_a_misspelt_model_info_key_does_not_load(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "finecontrol.json").write_text('{"resolution": 128, "joint_raduis": 2}')
    with pytest.raises(ValueError, match="unknown key.*joint_raduis"):
        load_model(str(tmp_path / "model"), device="cpu")
