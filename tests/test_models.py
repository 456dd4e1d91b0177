"""Model resolution: pinned hashes, missing packages and unknown names give one-line fixes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from voice_agent import models
from voice_agent.errors import ModelError


def test_verify_accepts_matching_and_rejects_tampered(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights")
    models.verify(f, hashlib.sha256(b"weights").hexdigest())
    f.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="checksum mismatch for model.bin") as err:
        models.verify(f, hashlib.sha256(b"weights").hexdigest())
    assert "delete it and run `bash scripts/install.sh`" in str(err.value)


def test_missing_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError) as err:
        models.whisper_dir("base")
    msg = str(err.value)
    assert "is not installed" in msg and "pip install 'voice-agent[whisper-base]'" in msg
    assert "\n" not in msg


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ModelError, match="unknown stt model 'huge'.*base, tiny-en"):
        models.whisper_dir("huge")


def test_assembly_joins_parts_and_checks_the_result(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello ")
    b.write_bytes(b"world")
    good = hashlib.sha256(b"hello world").hexdigest()
    out = models._assemble([a, b], tmp_path / "out" / "joined.bin", good, log=lambda _m: None)
    assert out.read_bytes() == b"hello world"
    with pytest.raises(ModelError, match="does not match its pinned SHA-256"):
        models._assemble([b, a], tmp_path / "bad.bin", good, log=lambda _m: None)
    assert not (tmp_path / "bad.bin").exists()


def test_llama_server_not_built_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICE_AGENT_LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="llama-server is not built") as err:
        models.llama_server_binary()
    assert "voice-agent setup" in str(err.value)


def test_user_paths_are_accepted(tmp_path: Path) -> None:
    whisper = tmp_path / "my-whisper"
    whisper.mkdir()
    assert models.whisper_dir(str(whisper)) == whisper
    voice = tmp_path / "v.onnx"
    voice.write_bytes(b"x")
    with pytest.raises(ModelError, match="piper voice config missing"):
        models.piper_voice(str(voice))
    Path(str(voice) + ".json").write_text("{}")
    assert models.piper_voice(str(voice)) == (voice, Path(str(voice) + ".json"))


@pytest.mark.models
def test_embedded_models_verify() -> None:
    directory = models.whisper_dir("tiny-en")
    assert (directory / "model.bin").exists()
    onnx, config = models.piper_voice("joe-medium")
    assert onnx.name == "en_US-joe-medium.onnx" and config.exists()


def test_the_end_of_turn_model_is_set_up_from_its_wheel_and_never_fetched_at_run_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At run time a missing file is an error that names the fix (no download). Setup
    takes the one file out of the pinned wheel (here a stand-in wheel in the cache, with
    the manifest's hashes patched to it) and checks both hashes."""
    import zipfile

    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="end-of-turn model smart-turn-v3 is not set up") as err:
        models.smart_turn_path()
    assert "voice-agent setup" in str(err.value)
    entry = dict(models.manifest()["turn"]["smart-turn-v3"])
    wheel = tmp_path / "wheels" / entry["wheel_file"]
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(entry["member"], b"onnx bytes")
    patched = entry | {"wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                       "sha256": hashlib.sha256(b"onnx bytes").hexdigest()}  # fmt: skip
    monkeypatch.setattr(models, "_entry", lambda section, name: patched)
    path = models.smart_turn_path(fetch=True)
    assert path == tmp_path / "turn" / "smart-turn-v3.onnx"
    assert path.read_bytes() == b"onnx bytes" and not path.with_suffix(".part").exists()
    assert models.smart_turn_path() == path  # from now on, found and verified
    path.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="checksum mismatch"):
        models.smart_turn_path()
