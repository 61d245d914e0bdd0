"""Library chatter a user cannot act on, silenced once at the command line's start.

Each filter names one message and says why it is noise here; everything else the libraries log
still reaches the user.
"""

from __future__ import annotations

import logging

# (logger name, substrings that all must occur in the message)
NOISE = (
    # transformers: image processors fall back to PIL without torchvision. We never use them for
    # anything but loading a pipeline that has none; there is no CPU torchvision wheel to install.
    ("transformers", ("requires torchvision",)),
    # diffusers: IF pipelines declare a T5 text encoder; the micro world's IF-layout pipelines carry
    # its CLIP text encoder on purpose (docs/microworld.md).
    ("diffusers", ("Expected types for text_encoder", "T5EncoderModel", "CLIPTextModel")),
    # diffusers: a LoRA of the UNet alone (our default: --train_text_encoder off) has no text-encoder
    # keys by design; loading it says so for every text encoder.
    ("diffusers", ("No LoRA keys associated to", "found with the prefix=")),
)


class _Drop(logging.Filter):
    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not all(n in message for n in self.needles)


def quiet_libraries() -> None:
    """Drop the NOISE messages and the per-component loading bars (our own bars show each phase)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for name, needles in NOISE:
        root = (tlog if name == "transformers" else dlog)._get_library_root_logger()
        for handler in root.handlers:     # a handler filter sees the records of every child logger
            if not any(isinstance(f, _Drop) and f.needles == needles for f in handler.filters):
                handler.addFilter(_Drop(needles))
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
