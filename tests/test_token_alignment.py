"""invedit.editing.token_alignment: P2P's word alignment between the source and target prompts."""

from __future__ import annotations

import pytest
import torch

import invedit
from invedit.editing.token_alignment import align, refinement_mapper, replacement_mapper

from .conftest import SOURCE, TARGET


def test_alignment_treats_a_substitution_as_delete_plus_insert():
    assert align([0, 1, 2, 3, 9], [0, 1, 7, 3, 9]) == [0, 1, -1, 3, 4]
    assert align([0, 1, 3, 9], [0, 1, 5, 6, 3, 9]) == [0, 1, -1, -1, 2, 3]
    assert align([0, 1, 2, 3, 9], [0, 1, 3, 9]) == [0, 1, 3, 4]  # deleted source token: nobody reads it
    assert align([4, 5, 6], [4, 5, 6]) == [0, 1, 2]


def test_refinement_mapper_on_prompts(pipe):
    mapper, alphas = refinement_mapper(SOURCE, TARGET, pipe.tokenizer)
    n = len(pipe.tokenizer(TARGET).input_ids)  # BOS + 7 words + EOS
    assert alphas[:n].tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1]
    assert mapper[[0, 1, 3, 4, 8]].tolist() == [0, 1, 3, 4, 8]
    assert mapper[n:].tolist() == list(range(n, 77)) and alphas[n:].eq(1).all()
    inserted, alphas = refinement_mapper("a red square", "a big red square", pipe.tokenizer)
    assert alphas[:6].tolist() == [1, 1, 0, 1, 1, 1] and inserted[[0, 1, 3, 4, 5]].tolist() == [0, 1, 2, 3, 4]


def test_replacement_mapper_maps_words_one_to_one_and_split_words_evenly(pipe):
    m = replacement_mapper("a red square", "a blue square", pipe.tokenizer)
    assert torch.equal(m, torch.eye(77))
    # "zebra" is not in the tiny vocabulary: BPE splits it into n > 1 tokens.
    n = len(pipe.tokenizer("zebra", add_special_tokens=False).input_ids)
    assert n > 1
    m = replacement_mapper("a red square", "a zebra square", pipe.tokenizer)
    assert torch.allclose(m[2, 2:2 + n], torch.full((n,), 1 / n)) and m[2].sum() == pytest.approx(1.0)
    assert m[3, 2 + n] == 1 and m[4, 3 + n] == 1 and m[0, 0] == 1 and m[76 - (n - 1), 76] == 1
    with pytest.raises(invedit.InveditError, match="same number of words"):
        replacement_mapper("a red square", "a big red square", pipe.tokenizer)
