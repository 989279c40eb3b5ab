"""A GPU to compile for without one: XLA's deviceless ahead-of-time compile for an NVIDIA H200.

XLA:GPU compiles for a device it is told about in a ``GpuTargetConfigProto`` (text format below, written from the
H200's public specifications and the memory the benchmark H200 reported, 143771 MiB). JAX builds compile-only
devices from it with ``jax.experimental.topologies.get_topology_desc(platform="cuda", topology="1x1x1",
target_config=...)``; ``jit(...).lower(<shapes on a mesh over them>).compile()`` then gives the program's memory
analysis, as for a TPU slice. Needs the CUDA plugin at the pinned JAX version, best in a separate environment (it
brings gigabytes of NVIDIA libraries)::

    python -m venv /tmp/gpu-aot && /tmp/gpu-aot/bin/pip install "jax[cuda12]==0.10.2" -r requirements.txt

What such a compile cannot know: the workspaces that autotuning sizes on a device (each cuDNN call's scratch
buffer is 0 bytes here) and the memory a running process has already taken. Its figures are the program's own.
"""

from __future__ import annotations

import importlib.util
import os

MIB = 1 << 20

H200 = f"""
gpu_device_info {{
  name: "NVIDIA H200"
  model_str: "NVIDIA H200"
  device_vendor: "NVIDIA Corporation"
  cuda_compute_capability {{ major: 9 minor: 0 }}
  core_count: 132
  fpus_per_core: 128
  clock_rate_ghz: 1.98
  device_memory_size: {143771 * MIB}
  memory_bandwidth: 4800000000000
  l2_cache_size: {50 * MIB}
  shared_memory_per_block: 49152
  shared_memory_per_core: {228 * 1024}
  shared_memory_per_block_optin: {227 * 1024}
  threads_per_block_limit: 1024
  threads_per_core_limit: 2048
  threads_per_warp: 32
  thread_dim_limit_x: 1024
  thread_dim_limit_y: 1024
  thread_dim_limit_z: 64
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  device_address_bits: 64
  runtime_version: "12.9.0"
  dnn_version: "9.28.0"
}}
platform_name: "CUDA"
runtime_version {{ major: 12 minor: 9 patch: 0 }}
dnn_version_info {{ major: 9 minor: 28 patch: 0 }}
device_description_str: "NVIDIA H200"
"""
TARGETS = {"h200": (H200, (9, 0))}


def prepare_environment() -> None:
    """Before JAX is imported: no CUDA device is looked for (the plugin would fail to initialise without one), and
    XLA's Triton GEMM emitter is off: without a device to autotune on it cannot tile some of the text encoder's and
    the fp32 loop's dots ("Couldn't find output tile sizes"), so dots go to cuBLAS (the bf16 batch-8 denoise loop:
    5.83 GiB this way, 5.87 with Triton where both compile)."""
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        raise SystemExit("compiling for a GPU without one needs the CUDA plugin at this JAX's version: "
                         "pip install 'jax[cuda12]==<jax version>' (see bench/gpu_target.py)")
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()


def mesh(name: str):
    """A one-device mesh over a compile-only GPU ``name``; JAX's cuDNN attention checks told its compute
    capability (they ask the host's default backend, a CPU here, and would refuse head dims above 128)."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn_checks
    from jax.experimental import topologies

    config, capability = TARGETS[name]
    as_tuple = lambda text: tuple(int(x) for x in text.split("."))  # noqa: E731
    cudnn_checks.check_compute_capability = lambda needed: capability >= as_tuple(needed)
    cudnn_checks.is_cuda_compute_capability_equal = lambda wanted: capability == as_tuple(wanted)
    topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1", target_config=config)
    return topologies.make_mesh(topology, (1,), ("batch",))


def facts(mesh) -> dict:
    """What a result line compiled for ``mesh``'s GPU says of its device (merged over the host's facts)."""
    return {"device": mesh.devices.flat[0].device_kind, "backend": "gpu",
            "compiled_on": "a host without the GPU (XLA deviceless compile)", "xla_flags": os.environ["XLA_FLAGS"]}
