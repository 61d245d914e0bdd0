"""Pretraining of the micro world's models, stage by stage, from seeds.

Stages: tokenizer -> text (the text encoder, trained on captions, then frozen everywhere) -> clip
(micro-CLIP on that text tower) -> instance (the world's "DINO") -> base (32x32 text-to-image) ->
sr (32->64 super-resolution).
Each stage writes its result under OUT/<stage>/ and is skipped when already complete, and the
long ones checkpoint as they go, so `dreambooth world pretrain --out DIR` resumes after an
interruption.
"""
