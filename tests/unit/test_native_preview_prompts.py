"""Preview prompts are T5-encoded once per run; the images are the ones ChromaPipeline renders from the text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.chroma_tiny import model_table, one_thread, tiny_transformer, write_checkpoint
from trainers.native.families.base import SampleRequest
from trainers.native.families.chroma import ChromaFamily

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    with one_thread():
        path = write_checkpoint(tiny_transformer(), tmp_path_factory.mktemp("chroma") / "c.safetensors")
        yield ChromaFamily.load(model_table(path), CPU)


def _count_t5_calls(family: ChromaFamily) -> list[int]:
    calls = [0]
    family.text_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_each_prompt_is_encoded_once_across_preview_rounds(family):
    calls = _count_t5_calls(family)
    guided = SampleRequest("a red circle", 1, 32, 32, 2, 3.0, "blurry")
    plain = SampleRequest("a blue square", 2, 32, 32, 2, 1.0)
    with one_thread():
        for _ in range(3):  # three preview rounds
            family.sample([guided, plain])
    assert calls[0] == 3  # prompt + negative of the guided request, the prompt of the unguided one


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_encodings_render_what_the_pipeline_renders_from_text(family, guidance):
    r = SampleRequest("zxq circle", 5, 32, 32, 2, guidance, "noise")
    with one_thread():
        family.transformer.eval()
        expected = family.pipe(prompt=r.prompt, negative_prompt=r.negative_prompt, height=32, width=32,
                               num_inference_steps=2, guidance_scale=guidance,
                               generator=torch.Generator().manual_seed(5),
                               max_sequence_length=family.max_sequence_length).images[0]
        family.sample([r])  # fills the cache
        (got,) = family.sample([r])
    # Unguided: the pipeline itself. Guided: both passes in one call (chroma_sample.py), each row computed on its
    # own, so only the last bit of a BLAS sum may differ.
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(expected, dtype=int)).max()
    assert diff == 0 if guidance == 1.0 else diff <= 1


def test_previews_rendered_together_match_each_rendered_alone(family):
    """One batched call per size/steps/guidance, the guidance's two passes stacked in it; each image keeps its
    own seed and prompt."""
    calls = [0]
    family.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rs = [SampleRequest(p, s, 32, 32, 2, 3.0, "noise") for p in ("a red circle", "zxq") for s in (1, 2)]
    with one_thread():
        alone = [family.sample([r])[0] for r in rs]
        calls[0] = 0
        together = family.sample(rs)
    assert calls[0] == 2  # 2 denoising steps, conditional and unconditional of all four images in each call
    for a, b in zip(alone, together, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1  # last-bit BLAS differences
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[1]))  # seeds differ


def test_guided_previews_match_the_pipeline_over_more_steps_and_sizes(family):
    """The batched guidance follows ChromaPipeline's schedule (sigmas, resolution shift) and decoding: at 6 steps
    and a non-square size, with a real negative prompt, every image matches the pipeline's within one level."""
    rs = [SampleRequest(p, s, 48, 32, 6, 4.0, "blurry, noise") for p, s in (("a red circle", 3), ("zxq", 9))]
    with one_thread():
        family.transformer.eval()
        expected = [family.pipe(prompt=r.prompt, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                                num_inference_steps=r.steps, guidance_scale=r.guidance,
                                generator=torch.Generator().manual_seed(r.seed),
                                max_sequence_length=family.max_sequence_length).images[0] for r in rs]
        got = family.sample(rs)
    for a, b in zip(expected, got, strict=True):
        assert a.size == b.size == (48, 32)  # (width, height)
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
