"""Evaluation: the DreamBooth paper's protocol and metrics (issue 5), on real models and in the micro world."""
