"""Training on an 8-device CPU mesh: the trainable split, sharded state, exact resume, NaN stop, preemption, and
a corrupt checkpoint. One compiled train step (tiny config, data x fsdp = 4 x 2) is shared by the module."""

import json
import os
import signal
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpsr_jax import testing  # noqa: E402
from xpsr_jax.configs import xpsr_sd15  # noqa: E402
from helpers import tiny_train_config as tiny_config  # noqa: E402
from xpsr_jax.train import models, partition  # noqa: E402
from xpsr_jax.train.checkpoints import RestoreError  # noqa: E402
from xpsr_jax.train.loop import NonFiniteLossError, train_and_evaluate  # noqa: E402
from xpsr_jax.train.synthetic import SyntheticIterator  # noqa: E402
from xpsr_jax.train.trainer import create_trainer  # noqa: E402


@pytest.fixture(scope="module")
def trainer(tiny_trainer):
    return tiny_trainer


def test_trainable_parameters_at_sd15_size():
    """ControlNet + UNet pixel attentions train (868,451,469 parameters); nothing else does."""
    c = xpsr_sd15.get_config()
    abstract = models.build(c.model, c.compute_dtype).abstract_params(boxed=False)
    mask = partition.trainable_mask(abstract, c.optim.trainable)
    trainable, frozen = partition.split(abstract, mask)
    count = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t))  # noqa: E731
    assert count(trainable) == 868_451_469
    assert set(frozen) == {"unet", "vae", "text_encoder"}
    assert count(trainable["unet"]) == 248_234_560
    assert count(frozen["unet"]) == 859_520_964


def test_state_is_born_sharded(trainer):
    state = trainer.abstract_state
    assert not any("pixel_attentions" in "/".join(map(str, p)) for p, _ in
                   jax.tree_util.tree_flatten_with_path(state.frozen)[0])
    kernel = state.trainable["controlnet"]["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert kernel.sharding.spec == P(None, None, None, "fsdp")
    mu = state.opt_state[1][0].mu["controlnet"]["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec  # optimizer moments follow their parameters
    head = state.trainable["controlnet"]["conv_degradation_0_0"]["kernel"]
    assert head.sharding.spec == P()  # too small to shard
    assert trainer.batch_shardings["hr"].spec[0] == ("data", "fsdp")
    assert trainer.flops_per_step and trainer.flops_per_step > 0


def test_resume_gives_the_uninterrupted_losses(trainer, tmp_path):
    full = train_and_evaluate(tiny_config(4), tmp_path / "full", trainer=trainer)
    assert sorted(full.losses) == [1, 2, 3, 4] and all(np.isfinite(list(full.losses.values())))
    first = train_and_evaluate(tiny_config(2), tmp_path / "split", trainer=trainer)
    second = train_and_evaluate(tiny_config(4), tmp_path / "split", trainer=trainer)
    assert second.start_step == 2
    assert first.losses == {k: full.losses[k] for k in (1, 2)}
    assert second.losses == {k: full.losses[k] for k in (3, 4)}  # exactly, not approximately
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "mse", "dfc_rgb", "dfc_latent", "grad_norm", "lr", "img_per_s"} <= set(rows[-1])
    assert list((tmp_path / "full" / "tensorboard").iterdir())


class _PoisonAt(SyntheticIterator):
    def __init__(self, bad_index, signal_at=None, **kw):
        super().__init__(**kw)
        self.bad_index, self.signal_at = bad_index, signal_at

    def __next__(self):
        if self.signal_at is not None and self.index == self.signal_at:  # arrives while step index+1 runs
            os.kill(os.getpid(), signal.SIGTERM)
        batch = super().__next__()
        if self.index - 1 == self.bad_index:
            batch["hr"][:] = np.nan
        return batch


def _iterator(c, **kw):
    return _PoisonAt(local_batch=c.global_batch_size, resolution=c.data.resolution, seed=c.seed, **kw)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(trainer, tmp_path):
    c = tiny_config(4)
    with pytest.raises(NonFiniteLossError, match=r"at step 3; stopping.*step 2"):
        train_and_evaluate(c, tmp_path, trainer=trainer, data_iter=_iterator(c, bad_index=2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


def test_sigterm_saves_and_exits(trainer, tmp_path):
    c = tiny_config(4)
    summary = train_and_evaluate(c, tmp_path, trainer=trainer, data_iter=_iterator(c, bad_index=-1, signal_at=0))
    assert summary.preempted and summary.end_step == 1
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_damaged_checkpoint_is_an_error_not_a_fresh_start(trainer, tmp_path):
    c = tiny_config(2)
    train_and_evaluate(c, tmp_path, trainer=trainer)
    for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"\0" * 16)
    with pytest.raises(RestoreError, match="step 2"):
        train_and_evaluate(tiny_config(4), tmp_path, trainer=trainer)


def test_unknown_config_key_is_refused():
    from xpsr_jax.train.cli import load_config

    with pytest.raises(SystemExit, match="no key 'optim.learning_rat'"):
        load_config(str(ROOT / "xpsr_jax/configs/tiny.py"), ["--config.optim.learning_rat=1"])
    c = load_config(str(ROOT / "xpsr_jax/configs/ablation_sequential.py"), ["--config.global_batch_size=16"])
    assert c.model.fusion == "sequential" and c.global_batch_size == 16


def test_configs_by_bundled_name_or_file(tmp_path, monkeypatch):
    """Bundled configs travel with the package (no checkout needed) and are found by name; a file of one's own
    may build on them; an unknown name lists the bundled ones."""
    from xpsr_jax.train.cli import load_config

    monkeypatch.chdir(tmp_path)  # away from the checkout
    assert load_config("xpsr_sd15", []).data.resolution == 512
    assert load_config("tiny.py", []).model.unet.block_out_channels == testing.UNET["block_out_channels"]
    mine = tmp_path / "mine.py"
    mine.write_text("from xpsr_jax.configs import tiny\n\ndef get_config():\n    c = tiny.get_config()\n"
                    "    c.num_train_steps = 7\n    return c\n")
    assert load_config(str(mine), []).num_train_steps == 7
    with pytest.raises(SystemExit, match=r"'xpsr_sd16'.*ablation_no_dfc.*xpsr_sd15"):
        load_config("xpsr_sd16", [])
    with pytest.raises(SystemExit, match="no such file"):
        load_config("elsewhere/tiny.py", [])


def test_ablation_configs_change_only_what_they_name():
    from xpsr_jax.configs import (ablation_no_dfc, ablation_no_highlevel, ablation_no_latent_dfc,
                                  ablation_no_lowlevel, ablation_no_pixel_dfc, ablation_sequential)

    base = xpsr_sd15.get_config().to_dict()
    expected = {
        ablation_no_highlevel: {("model", "highlevel_prompt"): "none"},
        ablation_no_lowlevel: {("model", "fusion"): "high_only"},
        ablation_sequential: {("model", "fusion"): "sequential"},
        ablation_no_dfc: {("model", "pixel_dfc"): False, ("model", "latent_dfc"): False},
        ablation_no_pixel_dfc: {("model", "pixel_dfc"): False},
        ablation_no_latent_dfc: {("model", "latent_dfc"): False},
    }
    from xpsr_jax.weights.keymap import flatten

    flat_base = flatten(base)
    for module, diff in expected.items():
        flat = flatten(module.get_config().to_dict())
        changed = {k: v for k, v in flat.items() if flat_base.get(k) != v}
        assert changed == diff, module.__name__


def test_export_a_run_to_flax_and_pytorch(trainer, tmp_path):
    """A run's weights come out as a Flax checkpoint the denoiser reads, and in the official PyTorch layout."""
    import torch

    from xpsr_jax import XPSRDenoiser, torch_ref
    from xpsr_jax.cli import main as cli
    from xpsr_jax.train import partition as part

    train_and_evaluate(tiny_config(2), tmp_path / "run", trainer=trainer)
    assert cli(["export", str(tmp_path / "run"), str(tmp_path / "flax"), "--torch", str(tmp_path / "pt")]) == 0
    den = XPSRDenoiser.from_pretrained(tmp_path / "flax", attention_impl="xla")
    unet, cn = torch_ref.load_official(tmp_path / "pt")
    rng = np.random.RandomState(0)
    x, t = rng.randn(1, 4, 16, 16).astype(np.float32), np.array([321])
    hi, lo, lr = rng.randn(1, 77, 32).astype(np.float32), rng.randn(1, 77, 32).astype(np.float32), \
        rng.rand(1, 3, 128, 128).astype(np.float32)
    eps, _ = den(x, t, hi, lo, lr)
    with torch.no_grad():
        tt = [torch.from_numpy(a) for a in (x, t, hi, lo, lr)]
        out = cn(*tt)
        want = unet(tt[0], tt[1], tt[2], out.down_residuals, out.mid_residual).numpy()
    assert np.abs(eps - want).max() <= 1e-4 * np.abs(want).max()


def test_validation_hook_samples_images(trainer, tmp_path):
    from PIL import Image

    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    rng = np.random.RandomState(0)
    for name in ("a", "b"):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(lr_dir / f"{name}.png")
    c = tiny_config(2)
    c.validate_every = 2
    c.validation.lr_dir = str(lr_dir)
    c.validation.steps = 2
    c.validation.process_size = 64
    c.validation.upscale = 2.0
    train_and_evaluate(c, tmp_path / "run", trainer=trainer)
    out = tmp_path / "run/validation/step_0000002"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "a.png").size == (64, 64)


def test_global_flop_count_covers_the_whole_batch(trainer):
    """The per-device compiled count times the devices is about the global recount (same program, 8 shards)."""
    per_device, total = trainer.flops_per_step, trainer.global_flops_per_step
    assert total and per_device
    assert 0.7 < per_device * 8 / total < 1.3


def test_activation_constraints_reach_the_lowered_step():
    """The model's batch constraints (flax logical constraints) must survive into the program: they resolve only
    under jax.set_mesh, and silently vanish under the older `with mesh:`."""
    from xpsr_jax.train.trainer import lower_step, plan_state

    c = tiny_config()
    plan = plan_state(c, partition.make_mesh(c.mesh.shape))
    data_axes = tuple(a for a, _ in c.mesh.shape)  # the batch is sharded over every data-parallel mesh axis
    constraints = [line for line in lower_step(c, plan).as_text().splitlines() if "sharding_constraint" in line]
    batch_sharded = [line for line in constraints if "[{" + ", ".join(f'"{a}"' for a in data_axes) + "}" in line]
    assert len(batch_sharded) >= 10, constraints[:3]


def test_sharded_step_equals_single_device_and_learns_a_fixed_batch(trainer):
    """Same params, key and batch: the 8-device (data 4 x fsdp 2) step and the one-device step agree within fp32
    tolerance; frozen weights stay bit-unchanged; the optimizer holds only trainable leaves; and with the step's
    randomness held fixed (the step counter reset) the loss falls on a fixed batch."""
    c = tiny_config()
    single = create_trainer(c, partition.make_mesh((("data", 1), ("fsdp", 1)), jax.devices()[:1]))
    params = trainer.nets.fresh_params(0)
    batch = next(SyntheticIterator(c.global_batch_size, c.data.resolution, seed=5))
    key = jax.random.key(0)

    def run(t, steps, reset):
        from xpsr_jax.train.loop import global_batch

        state = t.state_from_params(partition.host_to_global(params, t.plan.param_shardings), key)
        frozen_before = jax.device_get(state.frozen)
        assert jax.tree.structure(state.opt_state[1][0].mu) == jax.tree.structure(state.trainable)
        losses = []
        for _ in range(steps):
            state, m = t.step(state, global_batch(t, batch))
            losses.append(float(m["loss"]))
            if reset:
                state = state.replace(step=state.step * 0)
        frozen_after = jax.device_get(state.frozen)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)))
        return losses

    sharded, one = run(trainer, 2, False), run(single, 2, False)
    np.testing.assert_allclose(sharded, one, rtol=1e-4)
    fixed = run(trainer, 4, True)
    assert fixed[-1] < fixed[0]
