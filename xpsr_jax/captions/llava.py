"""Captioning with transformers' ``LlavaForConditionalGeneration`` (PyTorch), as XPSR's data scripts did.

Generation is ``generate(**inputs, max_length=200)`` with nothing else set, so decoding follows the model's own
generation config (greedy for ``llava-hf/llava-1.5-7b-hf``). XPSR ran transformers 4.36, whose processor left
``<image>`` as a single token and let the model expand it; ``max_length`` therefore counted the text prompt with
the image as one token. Recent processors expand ``<image>`` to one token per patch (576 for LLaVA-1.5), which
would leave no room at all under 200, so the limit is turned into the same number of new tokens
(``max_length`` minus the prompt length counted the old way). The settings used are returned by
:meth:`LlavaCaptioner.describe` and stored with the captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .prompts import (HIGHLEVEL_PROMPT, LOWLEVEL_DEVIATION, LOWLEVEL_PROMPT_LLAVA, highlevel_postprocess,
                      llava_answer, lowlevel_postprocess)

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
DEFAULT_MAX_LENGTH = 200
DTYPES = ("auto", "float32", "float16", "bfloat16")


def choose_device(device: str | None = None) -> str:
    """``device`` when given, else the first CUDA device when there is one, else the CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(dtype: str, device: str):
    """The torch dtype for ``dtype``; ``auto`` is float16 on GPUs (what XPSR used) and float32 on the CPU,
    where half-precision kernels are slow or missing."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


@dataclass
class LoadedLlava:
    """A LLaVA model and its processor, placed on a device; shared by captioners that use the same id."""

    model_id: str
    model: Any
    processor: Any
    device: str
    dtype: Any


def load_llava(model_id: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str = "auto") -> LoadedLlava:
    """Load a hub id or a local folder (``config.json``, weights, tokenizer and processor files)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    device = choose_device(device)
    torch_dtype = choose_dtype(dtype, device)
    processor = AutoProcessor.from_pretrained(model_id)
    model = LlavaForConditionalGeneration.from_pretrained(model_id, dtype=torch_dtype).to(device).eval()
    _complete_processor(processor, model.config)
    # Decoder-only batches are padded on the left so every row's reply starts right after its prompt.
    processor.tokenizer.padding_side = "left"
    return LoadedLlava(model_id, model, processor, device, torch_dtype)


def _complete_processor(processor, config) -> None:
    """Older LLaVA processor configs lack the fields the current processor needs to expand ``<image>``;
    fill them from the model config (a CLIP tower adds one CLS token to its patches)."""
    if getattr(processor, "patch_size", None) is None:
        processor.patch_size = config.vision_config.patch_size
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
        processor.num_additional_image_tokens = 1


def legacy_prompt_length(input_ids, image_token_id: int) -> int:
    """Width of a batch of prompts counted as transformers 4.36 counted it: each row's run of expanded image
    tokens counts as one token."""
    n_image = int((input_ids == image_token_id).sum(dim=1).max())
    return int(input_ids.shape[1]) - n_image + (1 if n_image else 0)


class LlavaCaptioner:
    """One instruction asked of batches of images; returns one post-processed string per image."""

    def __init__(self, loaded: LoadedLlava, prompt: str, postprocess: Callable[[str], str], *,
                 max_length: int = DEFAULT_MAX_LENGTH, role: str = "", note: str = ""):
        self.loaded = loaded
        self.prompt = prompt
        self.postprocess = postprocess
        self.max_length = max_length
        self.role = role
        self.note = note
        # The tokenizer alone leaves "<image>" as one token: the prompt length under the 4.36 rules.
        self.prompt_length = len(loaded.processor.tokenizer(prompt)["input_ids"])
        self.max_new_tokens = max(max_length - self.prompt_length, 1)

    def caption(self, images: list) -> list[str]:
        """Captions of PIL images, generated as one padded batch."""
        import torch

        if not images:
            return []
        proc, model = self.loaded.processor, self.loaded.model
        inputs = proc(images=images, text=[self.prompt] * len(images), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.loaded.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        decoded = proc.batch_decode(out, skip_special_tokens=True)
        return [self.postprocess(text) for text in decoded]

    def describe(self) -> dict:
        """Everything needed to reproduce this captioner's output, for the store's metadata."""
        import torch
        import transformers

        gen = self.loaded.model.generation_config
        described = {
            "role": self.role,
            "model": self.loaded.model_id,
            "architecture": type(self.loaded.model).__name__,
            "prompt": self.prompt,
            "device": self.loaded.device,
            "dtype": str(self.loaded.dtype).replace("torch.", ""),
            "max_length": self.max_length,
            "max_length_counts": "prompt tokens with <image> as one token (transformers 4.36 semantics)",
            "prompt_length": self.prompt_length,
            "max_new_tokens": self.max_new_tokens,
            # the model's own settings (what differs from transformers' defaults), then how they resolve
            "generation_config": gen.to_diff_dict(),
            "decoding": _decoding(gen),
            "padding_side": self.loaded.processor.tokenizer.padding_side,
            "decode": "batch_decode(skip_special_tokens=True) of prompt and reply",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
        if self.note:
            described["deviation"] = self.note
        return described


def _decoding(gen) -> str:
    """Greedy, sampling or beam search, as ``generate`` resolves the model's generation config."""
    beams = gen.num_beams or 1
    if gen.do_sample:
        return f"sampling (temperature={gen.temperature}, top_k={gen.top_k}, top_p={gen.top_p}, beams={beams})"
    return "greedy" if beams == 1 else f"beam search ({beams} beams)"


def highlevel_captioner(loaded: LoadedLlava, max_length: int = DEFAULT_MAX_LENGTH) -> LlavaCaptioner:
    """XPSR's content caption: the official LLaVA prompt and post-processing."""
    return LlavaCaptioner(loaded, HIGHLEVEL_PROMPT, highlevel_postprocess, max_length=max_length,
                          role="highlevel")


def _lowlevel_from_llava(decoded: str) -> str:
    return lowlevel_postprocess(llava_answer(decoded))


def lowlevel_captioner(loaded: LoadedLlava, max_length: int = DEFAULT_MAX_LENGTH) -> LlavaCaptioner:
    """XPSR's quality instruction asked of a LLaVA-architecture model (a documented deviation)."""
    return LlavaCaptioner(loaded, LOWLEVEL_PROMPT_LLAVA, _lowlevel_from_llava, max_length=max_length,
                          role="lowlevel", note=LOWLEVEL_DEVIATION)
