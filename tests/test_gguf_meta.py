"""The GGUF header checks that keep llama.cpp's loader from aborting the process (GGML_ASSERT)."""

from __future__ import annotations

import pytest

from ouroboros_lite import gguf_meta
from ouroboros_lite.errors import ModelFileError

LAYERS = [f"blk.{i}.attn_norm.weight" for i in range(4)]


def problems(meta: dict, names=LAYERS) -> list[str]:
    return list(gguf_meta._problems({"general.architecture": "llama", **meta}, names, "llama"))


def test_a_sound_header_passes():
    assert problems({"llama.block_count": 4, "llama.embedding_length": 64, "llama.attention.head_count": 0}) == []
    assert problems({"llama.block_count": 4}, names=["enc.blk.0.x"]) == []  # no blk.N tensors: nothing to compare


@pytest.mark.parametrize("meta, message", [
    ({"llama.block_count": 0}, "block_count is 0, outside 1..512"),
    ({"llama.block_count": 1000}, "block_count is 1000, outside 1..512"),
    ({"llama.block_count": 3}, "block_count is 3 but the file holds tensors for 4 layers"),
    ({"llama.block_count": 4, "llama.nextn_predict_layers": 5}, "nextn_predict_layers is 5"),
    ({"llama.block_count": 4, "llama.embedding_length": 0}, "embedding_length is 0"),
    ({"llama.block_count": 4, "llama.expert_count": 2000}, "expert_count is 2000"),
    ({"llama.block_count": 4, "llama.expert_count": 8, "llama.expert_used_count": 9}, "expert_used_count is 9"),
    ({"llama.block_count": 4, "llama.expert_count": 8}, "expert_used_count is 0"),
    ({"llama.block_count": 4, "llama.expert_used_count": (0, 2, 0, 0)}, "more than the 0 experts"),
    ({"llama.block_count": 4, "llama.expert_count": 8, "llama.expert_used_count": 2,
      "llama.expert_group_count": 3, "llama.expert_group_used_count": 1}, "expert groups"),
    ({"llama.block_count": 4, "llama.rope.scaling.type": "warp"}, "rope.scaling.type is 'warp'"),
])
def test_values_llama_cpp_asserts_on_are_named(meta, message):
    assert any(message in p for p in problems(meta)), problems(meta)


def test_the_real_models_pass_and_unparsable_files_are_left_to_llama_cpp(draft_path, tmp_path):
    gguf_meta.check(draft_path)
    meta, names = gguf_meta.read_header(draft_path)
    assert meta["llama.block_count"] == 30 and "blk.29.attn_norm.weight" in names
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(draft_path.read_bytes()[:3000])
    assert gguf_meta.read_header(truncated) is None  # llama.cpp reports it ("could not load")
    gguf_meta.check(truncated)
    with pytest.raises(ModelFileError, match="block_count"):
        gguf_meta.check(_with_layers(draft_path, tmp_path / "bad.gguf", 600))


def _with_layers(src, dst, layers: int):
    from test_cli_table import copy_with

    return copy_with(src, dst, "llama.block_count", layers)
