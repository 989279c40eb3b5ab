"""The key maps of the UNet and the ControlNet (the generic rules of ``keymap`` do the rest).

Their module names mirror diffusers' (``down_blocks.0.attentions_lowlevel.1``, ``conv_degradation.3.0``), so the
only exceptions are ``time_embedding.linear_1``/``linear_2``, names that end in a number without being list items.
"""

from xpsr_jax.weights.keymap import KeyMap

UNET_KEYMAP = KeyMap(name="UNet2DConditionModel", literal_names=("linear_1", "linear_2"))
CONTROLNET_KEYMAP = KeyMap(name="ControlNetModel", literal_names=("linear_1", "linear_2"))
