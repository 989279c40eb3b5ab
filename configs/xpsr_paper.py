"""The paper's run (XPSR, ECCV 2024): SD1.5 at 512 px, effective batch 32, AdamW 5e-5 constant, 300k steps;
the packaged base ``xpsr_jax/configs/xpsr_sd15.py`` with the inputs of the reproduction guide filled in.

Use: xpsr-jax train --config configs/xpsr_paper.py --workdir runs/xpsr
     (add a pod preset's mesh and batch split from configs/pods/, or use the preset file itself)
"""

from xpsr_jax.configs import xpsr_sd15

# Where docs/reproduce.md writes them (§2 convert sd15, §4 make-data); override with --config.init_from=...
INIT_FROM = "weights/xpsr-init"
DATA_PATH = "data/train"


def get_config():
    c = xpsr_sd15.get_config()
    c.init_from = INIT_FROM
    c.data.path = DATA_PATH
    c.data.worker_count = 8
    return c
