"""DreamBooth: personalize text-to-image diffusion models from a few photos."""

__version__ = "0.1.0"
