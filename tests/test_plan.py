"""Planning TPU slices from a CPU host: slice names, the figures read from compiled programs, the batch search,
and ``xpsr-jax train --compile-only`` on the tiny model (``-m tpu``: each TPU compile takes minutes here)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpsr_jax.train import hlo_stats  # noqa: E402
from xpsr_jax.train.plan import ChipMemory, parse_oom, search_batch  # noqa: E402
from xpsr_jax.train.plan_cli import EXIT_DOES_NOT_FIT  # noqa: E402
from xpsr_jax.train.tpu_topology import parse  # noqa: E402

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]')")

# accelerator name -> (chips, torus of chips, device kind)
SLICES = {
    "v4-8": (4, "v4:2x2x1", "TPU v4"),
    "v5e-1": (1, "v5e:1x1", "TPU v5 lite"),
    "v5e-8": (8, "v5e:2x4", "TPU v5 lite"),
    "v5litepod-8": (8, "v5e:2x4", "TPU v5 lite"),
    "v5p-8": (4, "v5p:2x2x1", "TPU v5"),
    "v5p-64": (32, "v5p:2x4x4", "TPU v5"),
    "v6e-8": (8, "v6e:2x4", "TPU v6 lite"),
}


@pytest.mark.parametrize("name", sorted(SLICES))
def test_slice_names_give_cloud_tpu_chip_counts(name):
    chips, torus, _ = SLICES[name]
    topo = parse(name)
    assert (topo.chips, topo.topology_name) == (chips, torus)


def test_slice_names_that_do_not_exist_are_refused():
    for bad, says in [("v5p-4", "smallest"), ("v5p-7", "two per chip"), ("v5e-6", "power of two"),
                      ("v7x-8", "unknown generation"), ("tpu-8", "expected an accelerator type")]:
        with pytest.raises(ValueError, match=says):
            parse(bad)


@needs_libtpu
@pytest.mark.parametrize("name", sorted(SLICES))
def test_slices_build_their_devices(name):
    """The compile-only devices libtpu gives: one per chip (v4/v5p as megacore), of the named generation."""
    chips, _, kind = SLICES[name]
    devices = parse(name).devices()
    assert len(devices) == chips
    assert {d.device_kind for d in devices} == {kind}


@needs_libtpu
def test_the_slice_sets_the_global_batch_and_refuses_meshes_it_cannot_hold():
    from xpsr_jax.configs import xpsr_sd15
    from xpsr_jax.train.plan import SliceMismatchError, slice_config

    config = xpsr_sd15.get_config()
    config.mesh.shape = (("data", -1), ("fsdp", 8))
    planned, mesh, dp = slice_config(config, parse("v5p-64"), 2)
    assert (dict(mesh.shape), dp, planned.global_batch_size) == ({"data": 4, "fsdp": 8}, 32, 64)
    with pytest.raises(SliceMismatchError, match="4 chips"):
        slice_config(config, parse("v5p-8"), 2)
    config.mesh.shape, config.optim.grad_accum_steps = (("data", -1), ("fsdp", 1)), 3
    with pytest.raises(SliceMismatchError, match="accumulation"):
        slice_config(config, parse("v5p-8"), 2)


def test_collectives_read_from_hlo_text():
    """Synchronous ops counted once; an async pair once, at its -done, with the output's bytes."""
    hlo = "\n".join([
        "  %all-reduce.3 = (f32[8]{0}, bf16[4,4]{1,0}) all-reduce(f32[8]{0} %a, bf16[4,4]{1,0} %b), channel_id=1",
        "  %ag-start = (bf16[4]{0}, bf16[16]{0}) all-gather-start(bf16[4]{0} %x), dimensions={0}",
        "  %ag-done = bf16[16]{0} all-gather-done((bf16[4]{0}, bf16[16]{0}) %ag-start)",
        "  ROOT reduce-scatter.1 = f32[2,3]{1,0} reduce-scatter(f32[8,3]{1,0} %g), dimensions={0}",
        "  %fusion.2 = f32[8]{0} fusion(f32[8]{0} %all-reduce.3), kind=kLoop",
    ])
    assert hlo_stats.collectives(hlo) == {
        "all-reduce": {"count": 1, "bytes": 8 * 4 + 16 * 2},
        "all-gather": {"count": 1, "bytes": 16 * 2},
        "reduce-scatter": {"count": 1, "bytes": 6 * 4},
    }


def test_program_size_read_from_hlo_text():
    hlo = "\n".join([
        "HloModule m", "",
        "%fused_negate (p: f32[2]) -> f32[2] {", "  %p = f32[2]{0} parameter(0)",
        "  ROOT %n = f32[2]{0} negate(f32[2]{0} %p)", "}", "",
        "ENTRY %main (a: f32[2]) -> f32[2] {", "  %a = f32[2]{0} parameter(0)",
        "  ROOT %f = f32[2]{0} fusion(f32[2]{0} %a), kind=kLoop, calls=%fused_negate", "}",
    ])
    assert hlo_stats.instruction_counts(hlo) == {"instructions": 4, "fusions": 1, "computations": 2}


def test_out_of_memory_compile_is_an_answer_with_the_compilers_figures():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (120.00G) "
           "exceeds available HBM (15.75G).")
    oom = parse_oom(msg)
    assert oom["required_bytes"] == 120 * (1 << 30)
    assert oom["available_bytes"] == int(15.75 * (1 << 30))
    assert parse_oom("INVALID_ARGUMENT: bad sharding") is None


def test_remedies_name_what_would_help():
    """An SD1.5 step that the compiler refused on a data-parallel v5p-8: FSDP, splash, remat, a smaller batch."""
    from types import SimpleNamespace

    from xpsr_jax.configs import xpsr_sd15
    from xpsr_jax.train.plan import FitReport, train_remedies

    config = xpsr_sd15.get_config()
    report = FitReport("train_step", "xpsr_sd15", parse("v5p-8"), {"data": 4, "fsdp": 1}, 16, 64, False, None,
                       0.0, 0.0, 0.0, {"xla:4096->4096:d40": 32, "xla:4096->77:d40": 32}, {},
                       oom={"required_bytes": 200 << 30})
    remedies = train_remedies(config, report, SimpleNamespace(shape={"data": 4, "fsdp": 1}))
    assert [r.split(":")[0] for r in remedies] == ["FSDP width", "attention kernel", "remat", "smaller batch"]
    assert '("fsdp", 4)' in remedies[0] and "8 per chip" in remedies[3]
    config.model.remat = True
    report.per_chip_batch, report.attention = 1, {"splash:4096->4096:d40": 32}
    assert [r.split(":")[0] for r in train_remedies(config, report, SimpleNamespace(shape={"fsdp": 4}))] == []


def test_batch_search_doubles_then_bisects():
    class Probe:
        def __init__(self, b):
            self.per_chip_batch, self.fits = b, b <= 13

    seen = []
    best, probes = search_batch(Probe, start=1, on_probe=lambda r: seen.append(r.per_chip_batch))
    assert best == 13
    assert seen == [1, 2, 4, 8, 16, 12, 14, 13] == [p.per_chip_batch for p in probes]
    best, _ = search_batch(lambda b: Probe(b * 100), start=4)  # nothing fits: halving down to 1
    assert best is None


def _memory_probe(peak_gib, hbm_gib=95.74, fixed_gib=10.0):
    """A probe of a program whose per-chip peak is ``peak_gib(batch)`` (fixed_gib of it arguments): fitting ones
    carry the compiler's memory analysis, refused ones only the bytes it asked for, as real compiles do."""
    topology = SimpleNamespace(hbm_bytes=int(hbm_gib * 2**30))

    def probe(b):
        need = int(peak_gib(b) * 2**30)
        fits = need <= topology.hbm_bytes
        memory = ChipMemory(int(fixed_gib * 2**30), need - int(fixed_gib * 2**30), 0, 0) if fits else None
        return SimpleNamespace(per_chip_batch=b, fits=fits, memory=memory, topology=topology,
                               oom=None if fits else {"required_bytes": need})
    return probe


def test_batch_search_predicts_from_the_measured_peaks():
    """Peak = 10 GiB + 2.7 GiB per image on a 95.74 GiB chip: the largest batch is 31. From a probe at 8 the line
    through its batch-independent bytes predicts 31; 32 then closes the bracket: 3 compiles where doubling and
    bisection take 7 (8, 16, 32, 24, 28, 30, 31)."""
    best, probes = search_batch(_memory_probe(lambda b: 10 + 2.7 * b), start=8)
    assert best == 31 and [p.per_chip_batch for p in probes] == [8, 31, 32]
    # not a line (activations that grow faster than the batch): the predictions are kept inside the bracket and
    # the answer is still exact; a line through two probes that both miss hands over to bisection
    # near the HBM the compiler rematerialises: the peak stops growing until the program cannot fit (at 44 here,
    # as the v5p-8 step's 92.1 and 92.0 GiB at 36 and 38 per chip): the search steps on instead of doubling
    plateau = lambda b: 10 + 2.2 * b if b <= 37 else (92.0 if b <= 44 else 100)  # noqa: E731
    best, probes = search_batch(_memory_probe(plateau), start=8)
    assert best == 44 and len(probes) <= 7, [p.per_chip_batch for p in probes]  # doubling from 39: 10 probes
    assert max(p.per_chip_batch for p in probes) < 50  # and no compile of a program far larger than the chip
    for peak in (plateau, lambda b: 10 + 0.1 * b * b, lambda b: 10 + 8 * b ** 0.5, lambda b: 96 + b):
        best, probes = search_batch(_memory_probe(peak), start=8)
        fitting = [b for b in range(1, 1025) if peak(b) * 2**30 <= 95.74 * 2**30]
        assert best == (max(fitting) if fitting else None)
        assert len(probes) <= 8, [p.per_chip_batch for p in probes]


def test_search_probes_compile_in_child_processes_and_a_killed_one_keeps_the_answers_so_far(
        tmp_path, monkeypatch, capsys):
    """Each probe of ``--search-batch`` compiles in a fresh process (its figures come back through the plan cache);
    a probe killed there (as the out-of-memory killer does) stops the search with the largest batch that fitted and
    names the batch that was killed, instead of losing every answer with the planning process."""
    from xpsr_jax.train import plan, plan_cli

    monkeypatch.setenv("XPSR_PLAN_CACHE_DIR", str(tmp_path))
    children = []

    def command(args, batch):  # the child of batch 31 dies of SIGKILL, the others finish
        children.append(batch)
        return [sys.executable, "-c", f"import os, signal\nif {batch} == 31: os.kill(os.getpid(), signal.SIGKILL)"]

    fake = _memory_probe(lambda b: 10 + 2.7 * b)

    def plan_train_step(config, topology, batch, **_):
        report = fake(batch)
        report.compile_seconds, report.as_json = 1.0, lambda: {"per_chip_batch": batch, "fits": report.fits}
        return report

    monkeypatch.setattr(plan_cli, "probe_command", command)
    monkeypatch.setattr(plan, "plan_train_step", plan_train_step)
    args = SimpleNamespace(config="tiny", topology="v5p-8", per_chip_batch=8, search_batch=True, config_overrides=[])
    assert plan_cli.run_plan(args, config=None) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    assert children == [8, 31]
    assert summary["largest_per_chip_batch"] == 8 and summary["stopped"] == {"per_chip_batch": 31, "exit": -9}
    assert [p["per_chip_batch"] for p in summary["probes"]] == [8]
    assert "the compile at 31 per chip exited with status -9" in err and "out-of-memory" in err


def test_a_search_probe_is_this_command_at_one_batch():
    from xpsr_jax.cli import build_parser
    from xpsr_jax.train.plan_cli import probe_command

    args = SimpleNamespace(config="xpsr_sd15", topology="v5e-8", per_chip_batch=2, search_batch=True,
                           config_overrides=["--config.mesh.shape=((\"data\",-1),(\"fsdp\",8))"])
    cmd = probe_command(args, 5)
    assert cmd[:2] == [sys.executable, "-c"] and cmd[-1] == args.config_overrides[0]
    child = build_parser().parse_args([a for a in cmd[3:] if not a.startswith("--config.")])
    assert (child.config, child.topology, child.per_chip_batch) == ("xpsr_sd15", "v5e-8", 5)
    assert child.compile_only and not child.search_batch


@pytest.mark.parametrize("argv, says", [
    (["train", "--config", "tiny", "--topology", "v5e-8"], "add --compile-only"),
    (["train", "--config", "tiny", "--compile-only"], "needs --topology"),
    (["train", "--config", "tiny", "--compile-only", "--topology", "v5p-4"], "smallest v5p slice"),
    (["train", "--config", "tiny"], "--workdir is required"),
    (["sr", "--compile-only"], "needs --topology"),
    (["sr", "--topology", "v5e-1", "a.png", "out"], "add --compile-only"),
    (["sr", "a.png", "out"], "--weights is required"),
])
def test_planning_flags_are_checked_before_any_work(argv, says, capsys):
    from xpsr_jax.cli import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err


# --- the CLI on the tiny model, compiled for a TPU slice -----------------------------------------------------------
TINY = ["--config", "tiny", "--config.model.unet.layers_per_block=1", "--config.data.resolution=64"]


@pytest.fixture(scope="module")
def plan_cache(tmp_path_factory):
    """An empty plan cache, so that the CLI tests compile."""
    return tmp_path_factory.mktemp("tpu-plans")


def run_plan(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_PLATFORMS": "cpu", "XPSR_PLAN_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "xpsr_jax.cli", "train", *TINY, "--compile-only", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def fitting_plan(plan_cache):
    return run_plan("--topology", "v5e-4", "--per-chip-batch", "1", cache=plan_cache)


@pytest.mark.tpu
@needs_libtpu
def test_tiny_step_fits_a_v5e_slice(fitting_plan):
    assert fitting_plan.returncode == 0, fitting_plan.stderr[-3000:]
    [line] = json_lines(fitting_plan.stdout)
    assert (line["topology"], line["chips"], line["mesh"]) == ("v5e-4", 4, {"data": 4, "fsdp": 1})
    assert (line["per_chip_batch"], line["global_batch"], line["fits"]) == (1, 4, True)
    mem = line["bytes_per_chip"]
    assert mem["peak"] == mem["arguments"] + mem["temporaries"] + mem["outputs"] - mem["aliased"]
    assert 0 < mem["peak"] < line["hbm_bytes"] == int(15.75 * (1 << 30))
    assert mem["aliased"] > 0  # the state is donated
    # data parallel over 4 chips: the gradients are all-reduced
    assert line["collectives"]["all-reduce"]["count"] > 0
    # every attention call of the tiny model (UNet, ControlNet, VAE, CLIP) is counted with the kernel it got
    assert line["attention_kernels"]["xla"] == sum(line["attention"].values()) > 0
    assert any(":77->77:" in k for k in line["attention"])  # the text encoder
    assert line["flops_per_step"] > 0


@pytest.mark.tpu
@needs_libtpu
def test_impossible_batch_does_not_fit_and_names_the_remedy(plan_cache):
    """512 px and 64 images per chip: the score matrices of the 4096-token self-attention alone exceed a v5e chip."""
    res = run_plan("--topology", "v5e-1", "--per-chip-batch", "64", "--config.data.resolution=512", cache=plan_cache)
    assert res.returncode == EXIT_DOES_NOT_FIT, res.stderr[-3000:]
    [line] = json_lines(res.stdout)
    assert line["fits"] is False
    need = line["bytes_per_chip"]["peak"] if "bytes_per_chip" in line else line["oom"]["required_bytes"]
    assert need > line["hbm_bytes"]
    assert "does not fit" in res.stderr and "smaller batch" in res.stderr and "remat" in res.stderr


@pytest.mark.tpu
@needs_libtpu
def test_a_program_planned_before_is_not_compiled_again(tmp_path, monkeypatch):
    """JAX's persistent cache cannot load compile-only executables; the plan cache keeps the compiler's figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from xpsr_jax.train.plan import compile_for_slice

    monkeypatch.setenv("XPSR_PLAN_CACHE_DIR", str(tmp_path))
    topo = parse("v5e-4")
    mesh = Mesh(np.array(topo.devices()), ("data",))
    x = jax.ShapeDtypeStruct((512, 256), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    fn = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(0))
    first = compile_for_slice(lambda: fn.lower(x), topo.topology_name)
    again = compile_for_slice(lambda: fn.lower(x), topo.topology_name)
    other = compile_for_slice(lambda: fn.lower(x), "v5e:2x4")  # another slice: compiled
    assert (first.cached, again.cached, other.cached) == (False, True, False)
    assert again.memory == first.memory and again.memory.peak > 0
    assert again.collectives == first.collectives


@pytest.mark.tpu
@needs_libtpu
def test_denoise_loop_plan_for_a_slice(tmp_path, monkeypatch):
    """The sampling program of the tiny model (2 steps) on v5e-4: 2 images per chip, sharded over 4 chips."""
    from xpsr_jax import testing
    from xpsr_jax.infer.plan import plan_denoise
    from xpsr_jax.infer.settings import SRSettings

    monkeypatch.setenv("XPSR_PLAN_CACHE_DIR", str(tmp_path))
    settings = SRSettings(steps=2, dtype="float32", attention_impl="xla", batch_size=2)
    report = plan_denoise("v5e-4", 2, 64, unet_config=testing.unet_config(), vae_config=testing.vae_config(),
                          settings=settings, config_name="tiny")
    line = report.as_json()
    assert (line["what"], line["chips"], line["per_chip_batch"], line["global_batch"]) == ("plan_denoise", 4, 2, 8)
    assert line["fits"] and 0 < line["bytes_per_chip"]["peak"] < line["hbm_bytes"]
    assert (line["latent"], line["latent_tile"]) == ([8, 8], None)
    assert line["attention_kernels"]["xla"] > 0
