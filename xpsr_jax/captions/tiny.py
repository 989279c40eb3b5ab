"""A tiny random LLaVA built entirely in code, saved as a model folder that ``--model DIR`` loads.

It exists so that the caption pass, its tests and the offline demo run the real transformers classes
(``LlavaForConditionalGeneration``, ``LlavaProcessor``) without downloading anything. Its captions are word
salad: the weights are random. Everything is small: a 2-layer CLIP vision tower on 16x16 images (2x2 patches
of 8 pixels, so 4 image tokens), a 2-layer Llama with a 32-wide residual stream, and a byte-level BPE tokenizer
learnt from a few sentences, so that prompts and replies decode back to exact text (``ASSISTANT:`` included).
"""

from __future__ import annotations

import os
from pathlib import Path

from .prompts import HIGHLEVEL_PROMPT, LOWLEVEL_PROMPT_LLAVA

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")  # ids 0..4, in this order
IMAGE_SIZE = 16
PATCH_SIZE = 8

# Sentences the tokenizer learns its merges from: the two prompts plus caption-like text, so the random model's
# tokens are word pieces a person can read.
_CORPUS = (
    HIGHLEVEL_PROMPT,
    LOWLEVEL_PROMPT_LLAVA,
    "The image shows a small house with a red roof next to a green tree under a blue sky.",
    "A close-up photo of a cat sitting on a wooden table near a window.",
    "A city street at night with cars, people and bright lights.",
    "The quality of the image is poor: it is blurry, noisy and has compression artifacts.",
    "The image is sharp and clear, with fine details, good lighting and natural colors.",
    "Overall, the quality of this image is acceptable but the texture is slightly over-smoothed.",
)


def _build_tokenizer():
    """A byte-level BPE tokenizer learnt in code; BOS is prepended like LLaMA's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    # The alphabet is only the corpus's characters, so random replies never decode to control bytes.
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    core.train_from_iterator(list(_CORPUS), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left")


def _build_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # One CLS token besides the patches; "default" feature selection drops it again.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def _build_config(vocab_size: int, token_ids: dict[str, int]):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=16)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=token_ids["<s>"], eos_token_id=token_ids["</s>"],
                       pad_token_id=token_ids["<pad>"])
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=token_ids["<image>"],
                       vision_feature_layer=-2, vision_feature_select_strategy="default")


def make_tiny_llava(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random tiny LLaVA (config, safetensors weights, tokenizer, processor) into ``directory``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    directory = Path(directory)
    tokenizer = _build_tokenizer()
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _build_config(len(tokenizer), token_ids)
    with torch.random.fork_rng(devices=[]):  # a fixed model without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(directory)
    _build_processor(tokenizer).save_pretrained(directory)
    return directory
