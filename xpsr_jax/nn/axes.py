"""Logical axis names for parameters and activations, in one place.

Model code names what an axis means; the config's ``logical_axis_rules`` maps these names onto mesh axes
(``data``, ``fsdp``, ...). A name the rules do not mention stays replicated.
"""

# parameters
CONV_IN = "conv_in"  # input channels of a conv kernel
CONV_OUT = "conv_out"  # output channels of a conv kernel (and its bias)
EMBED = "embed"  # input features of a dense kernel
MLP = "mlp"  # output features of a dense kernel (and its bias)
NORM = "norm"  # scale / bias of a normalisation layer
VOCAB = "vocab"  # rows of an embedding table

CONV_KERNEL = (None, None, CONV_IN, CONV_OUT)
DENSE_KERNEL = (EMBED, MLP)
EMBED_TABLE = (VOCAB, EMBED)

# activations
BATCH = "batch"
LENGTH = "length"
HEADS = "heads"
CHANNELS = "channels"

ALL_PARAM_AXES = (CONV_IN, CONV_OUT, EMBED, MLP, NORM, VOCAB)


def constrain_batch(x):
    """Keep an activation sharded over the batch (data-parallel) axes, replicated otherwise.

    A no-op unless the caller set ``flax.linen.logical_axis_rules`` and a mesh (the train step does): it tells the
    partitioner the layout instead of leaving it to propagation, which otherwise re-replicates some activations.
    """
    import flax.linen as nn

    return nn.with_logical_constraint(x, (BATCH,) + (None,) * (x.ndim - 1))
