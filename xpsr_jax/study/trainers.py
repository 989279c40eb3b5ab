"""One compiled train step per distinct program: runs that differ only in what the step does not see (seed, step
count, data paths, prompt handling, checkpoint cadence) share it, so a study compiles once per model shape."""

from __future__ import annotations

import json

import ml_collections

# Config keys that change no compiled program: they steer the loop, the data or the files around the step.
NOT_IN_PROGRAM = ("seed", "num_train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "init_from",
                  "validate_every", "validation", "device_peak_tflops", "data.path", "data.source",
                  "data.worker_count", "data.hr_condition_prob", "data.online_degradation",
                  "data.embeddings", "model.highlevel_prompt")


def program_key(config: ml_collections.ConfigDict) -> str:
    """The parts of a config that make the train step's program, as canonical JSON."""
    doc = config.to_dict()
    for dotted in NOT_IN_PROGRAM:
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return json.dumps(doc, sort_keys=True, default=repr)


class TrainerCache:
    """``get(config)``: a trainer whose program fits ``config``, compiled on first need and then reused.
    ``add(trainer)`` offers one compiled elsewhere (the tests' shared step)."""

    def __init__(self):
        self._trainers: dict[str, object] = {}
        self.compiled = 0  # how many trainers this cache built itself

    def add(self, trainer) -> None:
        self._trainers[program_key(trainer.config)] = trainer

    def get(self, config: ml_collections.ConfigDict):
        key = program_key(config)
        if key not in self._trainers:
            from xpsr_jax.train import partition
            from xpsr_jax.train.trainer import create_trainer

            mesh = partition.make_mesh(tuple(tuple(a) for a in config.mesh.shape))
            self._trainers[key] = create_trainer(config, mesh)
            self.compiled += 1
        return self._trainers[key]
