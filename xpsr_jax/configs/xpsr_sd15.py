"""XPSR as in the paper and the released code: SD1.5, 512 px, effective batch 32, AdamW 5e-5 constant, 300k steps.

Use: xpsr-jax train --config xpsr_sd15 --workdir runs/xpsr --config.init_from=weights/xpsr-init
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # model: the UNet/ControlNet shape (a diffusers-style dict; empty = SD1.5) and XPSR's switches
    c.model = ml_collections.ConfigDict()
    c.model.unet = ml_collections.ConfigDict()  # overrides of UNetConfig fields, e.g. block_out_channels
    c.model.fusion = "parallel"  # parallel (SFA) | sequential | high_only
    c.model.pixel_dfc = True
    c.model.latent_dfc = True
    # high-level prompt: "empty" in training, the caption when sampling (released code) | "caption" in both
    # (the paper's intent) | "none": empty in both (ablation)
    c.model.highlevel_prompt = "empty"
    c.model.vae = ml_collections.ConfigDict()  # overrides of VAEConfig fields
    c.model.text_encoder = ml_collections.ConfigDict()  # overrides of the CLIP text config
    c.model.attention_impl = "auto"  # auto | xla | cudnn | splash (xpsr_jax/nn/attention.py)
    c.model.splash_min_length = 1024  # TPU: self-attentions with at least this many tokens use splash attention
    c.model.remat = False  # recompute each ResNet / Transformer2D block in the backward pass

    # where the weights start: a Flax checkpoint from `xpsr-jax convert sd15` ("" = random init, tests only)
    c.init_from = ""

    # loss
    c.loss = ml_collections.ConfigDict()
    c.loss.prediction_type = "epsilon"  # epsilon | v_prediction
    c.loss.dfc_weight = 0.05  # per DFC term (3 RGB + 13 latent)
    # the frozen encoders' outputs, computed in the step or read from make-data --cache-latents records:
    c.loss.latents = "vae_sample"  # vae_sample (encode HR in the step) | precomputed (stored HR posterior, sampled)
    c.loss.text = "encoder"  # encoder (CLIP text encoder in the step) | precomputed (the data's embedding store)

    # optimisation
    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 5e-5
    c.optim.warmup_steps = 0  # the released code configures 500 but its constant schedule ignores them
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 1e-2
    c.optim.grad_clip_norm = 1.0
    c.optim.grad_accum_steps = 1
    c.optim.trainable = ("controlnet/.*", r"unet/.*pixel_attentions.*")  # regexes on parameter paths
    c.optim.frozen_dtype = "bfloat16"  # frozen weights (UNet, VAE, text encoder) stored in this dtype

    # compute
    c.compute_dtype = "bfloat16"
    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (("data", -1), ("fsdp", 1))  # -1: all remaining devices
    c.mesh.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("conv_out", "fsdp"),
        ("mlp", "fsdp"),
        ("conv_in", None),
        ("embed", None),
        ("norm", None),
        ("vocab", None),
    )

    # data
    c.data = ml_collections.ConfigDict()
    c.data.source = "records"  # records (make-data output) | synthetic
    c.data.path = ""
    c.data.resolution = 512
    c.data.hr_condition_prob = 0.1  # the HR image as the condition, with the HR-derived low-level prompt
    c.data.worker_count = 0
    c.data.online_degradation = False  # True for `make-data --hr-only` records: degrade in the input pipeline
    c.data.embeddings = ""  # loss.text="precomputed": the prompt-embedding store ("" = data.path's embeddings/)
    c.global_batch_size = 32

    # schedule of the run
    c.num_train_steps = 300_000
    c.log_every = 50
    c.checkpoint_every = 50_000
    c.keep_checkpoints = 3
    c.validate_every = 0  # 0: never; else super-resolve validation.lr_dir every so many steps
    c.validation = ml_collections.ConfigDict()
    c.validation.lr_dir = ""  # a folder of LR images (e.g. Set5 LR)
    c.validation.max_images = 4
    c.validation.steps = 20
    c.validation.process_size = 512
    c.validation.upscale = 4.0
    c.device_peak_tflops = 0.0  # for MFU; 0 = look the device up, unknown -> MFU not reported
    return c
