"""The paper's run on one host with 8 GPUs (80 GB each), split as the official run was: 2 images per GPU and 2
accumulation steps -> effective batch 8 x 2 x 2 = 32, the paper's, at the paper's learning rate 5e-5.

Use: xpsr-jax train --config configs/pod_gpu_8.py --workdir runs/xpsr (with jax[cuda12] installed). Larger
per-GPU batches with fewer accumulation steps (4 x 1) keep the effective batch and change only speed and memory.
"""

import xpsr_paper  # configs/xpsr_paper.py (the config loader puts this folder on the path)

CHIPS = 8
PER_CHIP_BATCH = 2
GRAD_ACCUM = 2


def get_config():
    c = xpsr_paper.get_config()
    c.mesh.shape = (("data", -1), ("fsdp", 1))
    c.optim.grad_accum_steps = GRAD_ACCUM
    c.global_batch_size = CHIPS * PER_CHIP_BATCH * GRAD_ACCUM
    return c
