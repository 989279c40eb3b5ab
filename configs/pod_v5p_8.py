"""The paper's run on a TPU v5p-8 (4 chips on one host, 95 GiB of HBM each): 8 images per chip, data parallel,
no accumulation -> effective batch 4 x 8 x 1 = 32, the paper's, at the paper's learning rate 5e-5.

Per-chip memory is not measured here; check it before renting:
  xpsr-jax train --config configs/pod_v5p_8.py --compile-only --topology v5p-8
Launch: launch/tpu_pod.sh with ACCELERATOR=v5p-8 and --config configs/pod_v5p_8.py.
"""

import xpsr_paper  # configs/xpsr_paper.py (the config loader puts this folder on the path)

CHIPS = 4
PER_CHIP_BATCH = 8
GRAD_ACCUM = 1


def get_config():
    c = xpsr_paper.get_config()
    c.mesh.shape = (("data", -1), ("fsdp", 1))
    c.optim.grad_accum_steps = GRAD_ACCUM
    c.global_batch_size = CHIPS * PER_CHIP_BATCH * GRAD_ACCUM
    return c
