"""The model's sampling defaults (generation_config.json), read as vLLM reads them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pdserve import LLM, SamplingParams
from pdserve.errors import InvalidRequestError, ModelLoadError
from pdserve.models import builtin_model_path
from pdserve.models.generation_defaults import check_sampling_defaults, generation_defaults

QWEN_LIKE = {
    "bos_token_id": 1,
    "do_sample": True,  # ignored, as vLLM ignores it
    "eos_token_id": [2],
    "max_new_tokens": 30,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
}


def model_with(tmp_path: Path, generation: dict | str) -> Path:
    """The built-in model's files, with `generation` as its generation_config.json."""
    folder = tmp_path / "model"
    shutil.copytree(builtin_model_path(), folder)
    text = generation if isinstance(generation, str) else json.dumps(generation)
    (folder / "generation_config.json").write_text(text)
    return folder


def test_sampling_keys_are_read(tmp_path: Path) -> None:
    folder = model_with(tmp_path, QWEN_LIKE)
    want = {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "max_tokens": 30}
    assert generation_defaults(folder) == want
    assert generation_defaults(folder, "vllm") == {}
    # A folder of its own overrides the model's.
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"min_p": 0.05, "temperature": None}))
    assert generation_defaults(folder, str(other)) == {"min_p": 0.05}


def test_the_builtin_model_has_none() -> None:
    assert generation_defaults(builtin_model_path()) == {}


@pytest.mark.parametrize(
    ("generation", "words"),
    [
        ({"top_p": 0}, ["top_p must be in (0, 1]", "--generation-config vllm"]),
        ({"temperature": "hot"}, ["temperature"]),
        ({"max_new_tokens": -1}, ["max_tokens"]),
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["not a JSON object"]),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, generation: dict | str, words: list[str]) -> None:
    folder = model_with(tmp_path, generation)
    with pytest.raises(ModelLoadError) as info:
        generation_defaults(folder)
    assert "generation_config.json" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a folder"):
        generation_defaults(builtin_model_path(), str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        generation_defaults(builtin_model_path(), str(tmp_path))


def test_check_refuses_unknown_fields() -> None:
    with pytest.raises(InvalidRequestError, match="stop"):
        check_sampling_defaults({"stop": ["x"]})


def test_offline_generate_uses_them_when_given_no_params(tmp_path: Path) -> None:
    """As vLLM's LLM: generate() without params samples with the model's defaults."""
    folder = model_with(tmp_path, {"eos_token_id": [2], "top_k": 1, "max_new_tokens": 7})
    llm = LLM(folder)
    defaults = llm.get_default_sampling_params()
    assert (defaults.top_k, defaults.max_tokens, defaults.temperature) == (1, 7, 1.0)
    prompt = [10, 20, 30, 40]
    out = llm.generate([prompt])[0]
    greedy = llm.generate([prompt], SamplingParams(max_tokens=7, temperature=0.0))[0]
    assert out.token_ids == greedy.token_ids and len(out.token_ids) <= 7
    plain = LLM(folder, generation_config="vllm").get_default_sampling_params()
    assert (plain.top_k, plain.max_tokens) == (SamplingParams().top_k, SamplingParams().max_tokens)
