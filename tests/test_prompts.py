"""invedit.prompts: prompt checks, whole-word vocabularies, token positions of words and blend words."""

from __future__ import annotations

import pytest

from invedit.errors import InveditError
from invedit.prompts import blend_word_tokens, check_prompt, require_word, word_token_indices, word_vocabulary


def test_check_prompt_normalises_spaces_and_refuses_empty_or_too_long_prompts(pipe):
    tok = pipe.tokenizer
    assert check_prompt("  a  red\tsquare ", tok) == "a red square"
    assert check_prompt("   ", tok, allow_empty=True) == ""
    with pytest.raises(InveditError, match="^the target prompt is empty$"):
        check_prompt("  ", tok, "target prompt")
    limit = tok.model_max_length - 2
    with pytest.raises(InveditError, match=f"too long \\({limit + 1} tokens; the model reads at most {limit}\\)"):
        check_prompt(" ".join(["red"] * (limit + 1)), tok)
    assert check_prompt(" ".join(["red"] * limit), tok) == " ".join(["red"] * limit)


def test_a_word_level_vocabulary_refuses_words_it_does_not_know(pipe):
    vocabulary = word_vocabulary(pipe.tokenizer)
    assert vocabulary is not None and {"red", "square"} <= vocabulary and "zebra" not in vocabulary
    with pytest.raises(InveditError, match="has words this model does not know: 'zebra'"):
        check_prompt("a red zebra", pipe.tokenizer)
    assert check_prompt("a RED square, 2", pipe.tokenizer) == "a RED square, 2"  # case, digits, punctuation


def test_word_token_indices_count_from_bos_and_cover_every_token_of_a_split_word(pipe):
    tok = pipe.tokenizer
    assert word_token_indices("a red square on a red background", "Red", tok) == [2, 6]
    assert word_token_indices("a red square.", "square", tok) == [3, 4]  # matched without its "."; both tokens
    n = len(tok("zebra", add_special_tokens=False).input_ids)
    assert n > 1 and word_token_indices("a zebra here", "zebra", tok) == list(range(2, 2 + n))
    assert word_token_indices("a red square", "blue", tok) == []
    with pytest.raises(InveditError, match="'blue' is not a word of the source prompt"):
        require_word("a red square", "blue", tok, "source prompt")


def test_blend_words_may_be_missing_from_their_own_prompt_but_not_from_both(pipe):
    tok = pipe.tokenizer
    assert blend_word_tokens("a red square", "a blue square", ("red", "blue"), tok) == ([2], [2])
    # an added object: named in the target only; the source side reads no map
    assert blend_word_tokens("a red square", "a red square and a star", ("star", "star"), tok) == ([], [6])
    with pytest.raises(InveditError, match="blend word 'dog' is not a word of the source prompt"):
        blend_word_tokens("a red square", "a blue square", ("dog", "blue"), tok)
    with pytest.raises(InveditError, match="blend word 'cat' is not a word of the target prompt"):
        blend_word_tokens("a red square", "a blue square", ("red", "cat"), tok)
