"""Super-resolution: the low-res conditioning shared by pretraining, fine-tuning and inference."""
