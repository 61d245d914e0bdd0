"""The identifier [V]: a rare token of the model's own tokenizer, bound to the subject.

Paper §4.2: a common word ("unique", "sks"-like abbreviations people use) carries a prior the
model must first unlearn; a random string splits into letters the model knows too well. So we pick
a single vocabulary token that decodes to a short string (<= 3 characters, no spaces) from the
rarely-merged end of the vocabulary, excluding common words.
"""

from __future__ import annotations

import random
import re

PLACEHOLDERS = ("<id>", "[V]", "[v]")

# Short words and abbreviations with a strong meaning of their own; never chosen as identifiers.
COMMON_WORDS = set("""
a an as at be by do go he hi if in is it me my no of oh ok on or so to up us we
all and any are ask bad big bit box boy but buy can car cat cow cry cup cut day did die dog dry
due ear eat egg end eye far fat few fit fly for fox fun gas get god gun guy had has hat her him
his hit hot how ice ill its job joy key kid law lay leg let lie lot low man map may men mix mom
new nor not now nut odd off oil old one our out own pay pen per pet pig pop put ran raw red rid
run sad saw say sea see set sex she shy sit six sky son sun tax tea ten the tie tip toe too top
toy try two use van war was way web wet who why win yes yet you zoo art bag bed bee bus dad fan
fig fix gap hen hug ink jam jar kit lab lip log mad mat mud net nod oak owl pad pan paw pie pin
pot rat rug sip spy tab tan tap toy tub wax wig yak zip
""".split())
# Identifiers so widely used in public fine-tunes that they carry a learned meaning of their own
# in community checkpoints ('sks' is also a rifle); accepted from users, never chosen by default.
OVERUSED = {"sks", "ohwx", "zwx", "tok"}


def fill_identifier(prompt: str, identifier: str) -> str:
    """Replace '<id>' / '[V]' in a user's prompt with the identifier."""
    for ph in PLACEHOLDERS:
        prompt = prompt.replace(ph, identifier)
    return prompt


def default_prompts(identifier: str, class_name: str) -> tuple[str, str]:
    """(instance prompt, class prompt) as in the paper: 'a photo of [V] dog' / 'a photo of dog'."""
    return f"a photo of {identifier} {class_name}", f"a photo of {class_name}"


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def is_single_token(tokenizer, word: str) -> bool:
    """True when `word` stays one token both alone and inside a sentence."""
    alone = _token_ids(tokenizer, word)
    if len(alone) != 1:
        return False
    return alone[0] in _token_ids(tokenizer, f"a photo of {word} thing")


def rare_candidates(tokenizer, max_chars: int = 3, exclude: tuple[str, ...] = ()) -> list[str]:
    """Short, letters-only, word-level vocabulary entries, rarest (highest id) first.

    BPE vocabularies (CLIP) number merges by frequency, so high ids are rare; sentencepiece
    vocabularies (T5) are ordered by score the same way.
    """
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: -kv[1])
    seen, out = set(), []
    for token, _ in by_id:
        # Word-level pieces only: CLIP marks word ends with '</w>', sentencepiece marks word starts with '▁'.
        if not (token.endswith("</w>") or token.startswith("▁")):
            continue
        word = token.removesuffix("</w>").removeprefix("▁")
        if not re.fullmatch(rf"[a-z]{{1,{max_chars}}}", word) or word in COMMON_WORDS or word in OVERUSED \
                or word in exclude:
            continue
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def choose_identifier(tokenizer, seed: int = 0, exclude: tuple[str, ...] = (), also: tuple = ()) -> str:
    """Pick a rare single-token identifier deterministically from `seed`; it must also be a single
    token of every tokenizer in `also` (SDXL's second tokenizer)."""
    candidates = rare_candidates(tokenizer, exclude=exclude)
    # The rarest third: rare enough to carry little prior, still a real vocabulary entry.
    band = candidates[: max(1, len(candidates) // 3)]
    random.Random(seed).shuffle(band)
    for word in band + candidates[len(band):]:
        if all(is_single_token(tok, word) for tok in (tokenizer, *also)):
            return word
    raise ValueError("the tokenizer has no short single-token word to use as an identifier")


PROMPT_WORDS = frozenset({"photo", "picture", "image", "the"})


def is_common_word(word: str) -> bool:
    """A word prompts use anyway ('of', 'photo'): no identifier, whatever its position."""
    return word.lower() in COMMON_WORDS or word.lower() in PROMPT_WORDS


def find_identifier(prompt: str, class_name: str | None) -> str | None:
    """Guess the identifier in a user's prompt: the word before the class noun, else the first
    word that is not a common word."""
    words = re.findall(r"[\w<>\[\]]+", prompt.lower())
    if class_name and class_name.lower() in words:
        i = words.index(class_name.lower())
        if i > 0:
            return words[i - 1]
    unusual = [w for w in words if not is_common_word(w)]
    return unusual[0] if unusual else None


def check_instance_prompt(tokenizer, prompt: str, class_name: str | None,
                          identifier: str | None = None) -> list[str]:
    """Warnings (not errors) about a user-written instance prompt's identifier."""
    word = identifier or find_identifier(prompt, class_name)
    if word is None:
        return [f"The instance prompt {prompt!r} has no identifier word: the subject will be bound to the class "
                f"word itself, which drifts its meaning. Put a rare token before the class noun, or pass "
                f"--class-name alone to have one chosen."]
    warnings = []
    pieces = tokenizer.tokenize(word)
    if len(pieces) > 1:
        warnings.append(f"The identifier {word!r} splits into {len(pieces)} tokens {pieces}; the paper uses a "
                        f"single rare token so the model has no prior to unlearn. Try "
                        f"--identifier {choose_identifier(tokenizer)}.")
    elif word in COMMON_WORDS:
        warnings.append(f"The identifier {word!r} is a common word with a strong prior meaning; a rare token "
                        f"binds faster and leaves the word intact.")
    if word.lower() in OVERUSED:
        rifle = " ('sks' is also a rifle, which base models draw)" if word.lower() == "sks" else ""
        warnings.append(f"The identifier {word!r} is the one tutorials spread{rifle}: it is not rare, and models "
                        f"fine-tuned by others have taught it a meaning of its own. Try --identifier "
                        f"{choose_identifier(tokenizer)}, or pass --class-name alone to have a rare token chosen.")
    return warnings
