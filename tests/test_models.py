import time

import pytest
import torch
from conftest import assert_close

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
