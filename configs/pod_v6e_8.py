"""The paper's run on a TPU v6e-8 (8 chips on one host, 31 GiB of HBM each): weights, gradients and optimizer
state sharded over all 8 chips (FSDP), 4 images per chip, no accumulation -> effective batch 8 x 4 x 1 = 32, the
paper's, at the paper's learning rate 5e-5.

Per-chip memory is not measured here; check it before renting:
  xpsr-jax train --config configs/pod_v6e_8.py --compile-only --topology v6e-8
"""

import xpsr_paper  # configs/xpsr_paper.py (the config loader puts this folder on the path)

CHIPS = 8
PER_CHIP_BATCH = 4
GRAD_ACCUM = 1


def get_config():
    c = xpsr_paper.get_config()
    c.mesh.shape = (("data", -1), ("fsdp", 8))
    c.optim.grad_accum_steps = GRAD_ACCUM
    c.global_batch_size = CHIPS * PER_CHIP_BATCH * GRAD_ACCUM
    return c
