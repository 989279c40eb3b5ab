"""Reproduction studies: runs (config x seed) from one spec, each trained, exported, sampled on the spec's test
sets and evaluated, then one report with the published numbers beside the measured ones.

* :mod:`.spec` - what a study is (``configs/studies/*.py`` return a :class:`~.spec.StudySpec` from ``get_spec()``);
* :mod:`.state` - per-run stage markers, so every stage is resumable and skipped when done;
* :mod:`.trainers` - one compiled train step per model shape, shared by the runs;
* :mod:`.runner` - ``xpsr-jax study run``: the stages of each run;
* :mod:`.results`, :mod:`.plots`, :mod:`.report` - ``xpsr-jax study report``.
"""
