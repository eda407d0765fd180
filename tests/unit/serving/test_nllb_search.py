"""NLLB-200's search (``polydub.serving.nllb_search``) on the tiny export's graphs: greedy and beam
search give transformers' generate tokens and scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from polydub.export import nllb_reference
from tests.unit.tiny_exports import NLLB_SENTENCES, TinyNllb, nllb_batch

pytestmark = pytest.mark.unit


def test_greedy_tokens_identical_to_transformers_generate(tiny_nllb: TinyNllb) -> None:
    ids, mask, targets = nllb_batch(tiny_nllb.tokenizer, NLLB_SENTENCES)
    expected = nllb_reference.hf_generate(tiny_nllb.model, ids, mask, targets, max_length=40)
    found = nllb_reference.onnx_search(
        tiny_nllb.encoder_fp32,
        tiny_nllb.decoder_fp32,
        ids,
        mask,
        targets,
        tiny_nllb.config,
        40,
        num_beams=1,
    )
    assert [list(h[0].tokens) for h in found] == [e[0] for e in expected]
    assert {len(e[0]) for e in expected} != {40}, "some greedy outputs should end before max_length"


@pytest.mark.parametrize(("num_beams", "max_length", "forced_eos"), [(4, 48, False), (3, 12, True)])
def test_beam_search_identical_to_transformers_generate(
    tiny_nllb: TinyNllb, num_beams: int, max_length: int, forced_eos: bool
) -> None:
    import torch

    ids, mask, targets = nllb_batch(tiny_nllb.tokenizer, NLLB_SENTENCES)
    config = dataclasses.replace(tiny_nllb.config, forced_eos_token_id=2 if forced_eos else None)
    found = nllb_reference.onnx_search(
        tiny_nllb.encoder_fp32,
        tiny_nllb.decoder_fp32,
        ids,
        mask,
        targets,
        config,
        max_length,
        num_beams,
    )
    lengths: set[int] = set()
    for row, target in enumerate(targets):
        n = int(mask[row].sum())
        with torch.inference_mode():
            out = tiny_nllb.model.generate(
                input_ids=torch.from_numpy(ids[row : row + 1, :n]),
                attention_mask=torch.from_numpy(mask[row : row + 1, :n]),
                forced_bos_token_id=target,
                forced_eos_token_id=2 if forced_eos else None,
                num_beams=num_beams,
                num_return_sequences=num_beams,
                max_length=max_length,
                early_stopping=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        expected = [nllb_reference._strip(s.tolist(), 1) for s in out.sequences]
        assert [list(h.tokens) for h in found[row]] == expected
        np.testing.assert_allclose([h.score for h in found[row]], out.sequences_scores, atol=1e-4)
        lengths.update(len(s) for s in expected)
        if forced_eos:
            assert all(s[-1] == 2 for s in expected)
    assert len(lengths) > 1  # finished beams of several lengths: early stopping was exercised
