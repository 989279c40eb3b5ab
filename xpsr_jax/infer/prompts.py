"""The four prompt strings of one image and their token ids (§5.3, §8 item 5).

Per image, two streams, each a CFG pair (negative, positive):

* high-level: (``negative_prompt``, caption + " " + ``added_prompt``), the caption being the MLLM's scene
  description (empty when there is none: the positive prompt is then just the added prompt);
* low-level: (``lowlevel_negative_prompt``, the MLLM's quality description, nothing appended).

Each string is tokenised on its own to 77 ids with truncation, exactly like ``CLIPTokenizer(padding="max_length",
truncation=True)``: long captions lose their tail, and with it the added prompt, as in the official pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xpsr_jax.data.tokenizer import ClipTokenizer
from xpsr_jax.infer.settings import SRSettings

SOURCES = ("flag", "captions", "sidecar", "official", "none")


@dataclass(frozen=True)
class Prompt:
    """The MLLM prompts of one image. ``source`` says where each came from (for the output's sidecar)."""

    highlevel: str = ""
    lowlevel: str = ""
    source: dict = field(default_factory=lambda: {"highlevel": "none", "lowlevel": "none"})

    @property
    def empty(self) -> bool:
        return not self.highlevel and not self.lowlevel


@dataclass(frozen=True)
class PromptTexts:
    """The four strings an image is denoised with."""

    negative_high: str
    positive_high: str
    negative_low: str
    positive_low: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def prompt_texts(prompt: Prompt, settings: SRSettings) -> PromptTexts:
    """Caption and quality description -> the four strings (official concatenation: caption + " " + added)."""
    return PromptTexts(
        negative_high=settings.negative_prompt,
        positive_high=prompt.highlevel + " " + settings.added_prompt,
        negative_low=settings.lowlevel_negative_prompt,
        positive_low=prompt.lowlevel,
    )


def token_ids(tokenizer: ClipTokenizer, texts: list[PromptTexts]) -> tuple[np.ndarray, np.ndarray]:
    """B images' strings -> (high, low) ids, each (B, 2, 77) int32 with [negative, positive] on axis 1."""
    high = tokenizer([s for t in texts for s in (t.negative_high, t.positive_high)])
    low = tokenizer([s for t in texts for s in (t.negative_low, t.positive_low)])
    b = len(texts)
    return high.reshape(b, 2, -1), low.reshape(b, 2, -1)


def truncated(tokenizer: ClipTokenizer, text: str) -> bool:
    """Whether ``text`` loses tokens to the 77-token limit."""
    return len(tokenizer.encode(text)) > tokenizer.max_length - 2
