"""Identifier choice on a real CLIP BPE tokenizer built in the test (paper §4.2)."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from dreambooth.core.identifier import (COMMON_WORDS, check_instance_prompt, choose_identifier, fill_identifier,
                                        find_identifier, is_single_token, rare_candidates)
from dreambooth.tiny import build_clip_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(build_clip_tokenizer(tmp_path_factory.mktemp("tok")))


def test_chosen_identifier_is_a_rare_single_short_token(tokenizer):
    word = choose_identifier(tokenizer, seed=0)
    assert 1 <= len(word) <= 3 and word.isalpha()
    assert word not in COMMON_WORDS and word != "sks"
    assert len(tokenizer.tokenize(word)) == 1
    # rare: its id is above every common word that the vocabulary has
    vocab = tokenizer.get_vocab()
    common_ids = [vocab[f"{w}</w>"] for w in ("a", "photo", "of", "dog", "the") if f"{w}</w>" in vocab]
    assert vocab[f"{word}</w>"] > max(common_ids)


def test_choice_is_deterministic_and_seed_dependent(tokenizer):
    picks = {choose_identifier(tokenizer, seed=s) for s in range(8)}
    assert choose_identifier(tokenizer, seed=3) == choose_identifier(tokenizer, seed=3)
    assert len(picks) > 1


def test_candidates_are_rarest_first(tokenizer):
    vocab = tokenizer.get_vocab()
    ids = [vocab[f"{w}</w>"] for w in rare_candidates(tokenizer)]
    assert ids == sorted(ids, reverse=True)


def test_multi_token_identifier_warns(tokenizer):
    warnings = check_instance_prompt(tokenizer, "a photo of qqzzxxv dog", "dog")
    assert len(warnings) == 1 and "splits into" in warnings[0]
    assert not is_single_token(tokenizer, "qqzzxxv")


def test_common_word_identifier_warns(tokenizer):
    assert "common word" in check_instance_prompt(tokenizer, "a photo of red dog", "dog")[0]


def test_missing_identifier_warns(tokenizer):
    assert "no identifier" in check_instance_prompt(tokenizer, "a photo of a dog", None)[0]


def test_rare_identifier_gives_no_warning(tokenizer):
    word = choose_identifier(tokenizer)
    assert check_instance_prompt(tokenizer, f"a photo of {word} dog", "dog") == []


def test_find_and_fill_identifier():
    assert find_identifier("a photo of sks dog", "dog") == "sks"
    assert find_identifier("a sks photo", None) == "sks"
    assert fill_identifier("a <id> dog and a [V] dog", "xyz") == "a xyz dog and a xyz dog"
