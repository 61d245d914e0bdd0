"""What a run writes beyond checkpoints: LoRA files (diffusers and kohya layouts), single-file checkpoints."""
