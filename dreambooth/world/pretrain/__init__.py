"""Pretraining of the micro world's models, stage by stage, from seeds.

Stages: tokenizer -> clip (micro-CLIP; its text tower is the base model's text encoder) ->
instance (the world's "DINO") -> base (32x32 text-to-image) -> sr (32->64 super-resolution).
Each stage writes its result under OUT/<stage>/ and is skipped when already complete, and the
long ones checkpoint as they go, so `dreambooth world pretrain --out DIR` resumes after an
interruption.
"""
