"""Derived model files: a quantized GGUF dequantized to F32 with the `gguf` package.

The output is deterministic for a given input and gguf version (metadata copied in order, tensors
in order, no timestamps), so the catalog can pin its sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

RECIPES = ("dequantize-f32",)


def dequantize_to_f32(source: Path, destination: Path) -> Path:
    """Write `source` with every tensor as F32 to `destination` (atomically)."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    partial = destination.with_name(destination.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        shape = [int(n) for n in reversed(tensor.shape.tolist())]
        writer.add_tensor(tensor.name, np.ascontiguousarray(data).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, destination)
    return destination


def run_recipe(recipe: str, source: Path, destination: Path) -> Path:
    if recipe == "dequantize-f32":
        return dequantize_to_f32(source, destination)
    raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
