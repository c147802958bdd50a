"""The encoders' cache key: stable for the same files and dtype, different when either changes."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.fixtures.chroma_tiny import FLUX_TINY, model_table, one_thread, tiny_transformer
from trainers.native.families.chroma import ChromaFamily


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_cache_key_follows_the_encoder_files_and_dtype(tmp_path):
    flux = tmp_path / "flux"
    shutil.copytree(FLUX_TINY, flux)
    folder = tmp_path / "transformer"
    tiny_transformer().save_pretrained(folder)
    table = {**model_table(folder), "diffusers_path": str(flux)}
    cpu = torch.device("cpu")

    def key(**extra) -> str:
        return ChromaFamily.load({**table, **extra}, cpu).cache_key()

    first = key()
    assert first == key() and first.startswith("chroma-")
    assert key(dtype="bfloat16") != first
    assert key(transformer_dtype="float8") == first  # the transformer does not make the cached inputs
    tokenizer = flux / "tokenizer_2" / "tokenizer_config.json"
    stat = tokenizer.stat()
    os.utime(tokenizer, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = key()
    assert touched != first
    (flux / "vae" / "notes.txt").write_text("x")
    assert key() != touched


def test_in_memory_families_hash_their_encoders():
    family = ChromaFamily.load(model_table(FLUX_TINY.parent / "chroma-tiny"), torch.device("cpu"))
    rebuilt = ChromaFamily(family.vae, family.text_encoder, family.tokenizer, family.transformer,
                           family.pipe.scheduler, family.device, family.dtype)
    key = rebuilt.cache_key()
    assert key == ChromaFamily(family.vae, family.text_encoder, family.tokenizer, family.transformer,
                               family.pipe.scheduler, family.device, family.dtype).cache_key()
    with torch.no_grad():
        family.vae.encoder.conv_in.weight.add_(1e-3)
    assert rebuilt.cache_key() != key
