"""Loading BiomedCLIP-shaped models offline: folders, checkpoints, errors, tokenizer."""
import urllib.error

import pytest
import torch

from MedCLIPSAMLib.errors import InputError, ModelError
from MedCLIPSAMLib.models import catalog
from MedCLIPSAMLib.models.clip import load_clip
from MedCLIPSAMLib.settings import BIOMEDCLIP_HUB_ID


def test_folder_loads_the_biomedclip_classes(tiny_clip):
    import open_clip
    assert isinstance(tiny_clip.model, open_clip.CustomTextCLIP)
    assert len(tiny_clip.blocks) == 12 and tiny_clip.context_length == 256
    assert not any(p.requires_grad for p in tiny_clip.model.parameters())
    text = tiny_clip.encode_text(["brain tumor", "a tumour in the brain"], torch.device("cpu"))
    assert text.shape == (512,) and torch.linalg.norm(text) == pytest.approx(1.0, abs=1e-5)


def test_checkpoint_round_trip(tiny_clip, tiny_clip_folder, tmp_path):
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in tiny_clip.model.state_dict().items()}
    path = tmp_path / "finetuned.pt"
    torch.save({"state_dict": state, "base": str(tiny_clip_folder)}, path)
    loaded = load_clip(str(path))
    key = "visual.head.proj.weight"
    torch.testing.assert_close(loaded.model.state_dict()[key], state[key])
    assert loaded.source == str(path)


def test_bad_sources_say_what_to_do(tiny_clip_folder, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_clip(str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="open_clip_config.json is missing"):
        load_clip(str(tmp_path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_clip(str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"visual.head.proj.weight": torch.zeros(3, 3)}, "base": str(tiny_clip_folder)}, wrong)
    with pytest.raises(ModelError, match="do not match"):
        load_clip(str(wrong))


def test_unreachable_hub_explains_offline_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path / "cache"))

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(catalog.urllib.request, "urlopen", offline)
    with pytest.raises(ModelError) as error:
        load_clip(BIOMEDCLIP_HUB_ID)
    message = str(error.value)
    assert "open_clip_pytorch_model.bin" in message and "--clip-model FOLDER" in message
    assert "--sam-checkpoint" not in message  # the option for SAM files would not help here
    assert str(tmp_path / "cache" / "biomedclip") in message
    assert not list((tmp_path / "cache").rglob("*.part"))
    sam_help = catalog.offline_help(catalog.load_catalog()["vit_b"])
    assert "--sam-checkpoint FILE" in sam_help and "--clip-model" not in sam_help


def test_cached_hub_files_load_without_network(tiny_clip_folder, tmp_path, monkeypatch):
    import shutil
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path))
    shutil.copytree(tiny_clip_folder, tmp_path / "biomedclip")
    monkeypatch.setattr(catalog.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert load_clip(BIOMEDCLIP_HUB_ID).context_length == 256


def test_a_prompt_over_the_context_length_gets_our_note_not_the_tokenizers_warning(tiny_clip, capfd):
    import logging
    import warnings

    long = "tumor " * 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logging.getLogger("transformers").setLevel(logging.WARNING)
        notes = tiny_clip.truncation_notes([long, "brain tumor"])
        tokens = tiny_clip.tokenize([long])
    assert tokens.shape == (1, 256)
    assert len(notes) == 1 and "302 tokens" in notes[0] and "only the first 256" in notes[0]
    assert "indexing errors" not in capfd.readouterr().err


def test_download_verifies_checksum_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import io

    class Response(io.BytesIO):
        headers = {"Content-Length": "4"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(catalog.urllib.request, "urlopen", lambda *a, **k: Response(b"data"))
    good = catalog.download_file("http://x/y", tmp_path / "y.bin",
                                 "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7")
    assert good.read_bytes() == b"data"
    with pytest.raises(ModelError, match="checksum"):
        catalog.download_file("http://x/z", tmp_path / "z.bin", "0" * 64)
    assert not (tmp_path / "z.bin").exists() and not (tmp_path / "z.bin.part").exists()
