"""Files in, PNGs out: the work behind ``xpsr-jax sr``, usable from Python too.

    >>> runner = SRRunner.create("weights/xpsr", SRSettings(), captions="captions.jsonl")
    >>> report = runner.run(["testset/LR"], "out/")
    >>> report.written, report.failed                      # failed: [(path, reason), ...]

Images are scheduled from their file headers (so a folder is never decoded all at once), decoded when their batch
runs, and written as soon as it finishes: ``OUT/<name>.png`` plus ``OUT/<name>.json`` with the settings, sizes,
prompts, tiles and timings. A bad input (unreadable, corrupt, too large, a prompt file that is not UTF-8) is
recorded and skipped; so is a batch whose computation raises, so one failure never stops the rest. Both files
appear atomically, the sidecar first (a killed run leaves no half image and no PNG without its sidecar), and the
sidecar is strict JSON. ``OUT`` may be a ``gs://`` prefix: each image's two objects are uploaded as soon as its
batch finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from xpsr_jax.data.images import ImageDecodeError
from xpsr_jax.errors import InputNotFoundError, TextDecodeError
from xpsr_jax.files import NonFiniteJSONError, strict_json_dumps
from xpsr_jax.infer.inputs import InputImage, PromptFinder, discover
from xpsr_jax.infer.pipeline import BatchItem, SRPipeline, SRResult
from xpsr_jax.infer.preprocess import image_size, read_lr_image
from xpsr_jax.infer.settings import SRSettings
from xpsr_jax.paths import AnyPath, as_path, replacing


@dataclass
class RunReport:
    written: int = 0
    no_prompt: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[AnyPath] = field(default_factory=list)


class SRRunner:
    def __init__(self, pipeline: SRPipeline, prompts: PromptFinder):
        self.pipeline = pipeline
        self.prompts = prompts

    @classmethod
    def create(cls, weights, settings: SRSettings, captions=None, prompt: str | None = None,
               lowlevel_prompt: str | None = None) -> "SRRunner":
        store = None
        if captions is not None:
            from xpsr_jax.captions.store import CaptionStore

            if not as_path(captions, "--captions").is_file():
                raise InputNotFoundError(f"--captions {captions}: no such caption store")
            store = CaptionStore.open(captions)
        return cls(SRPipeline.from_pretrained(weights, settings), PromptFinder(prompt, lowlevel_prompt, store))

    def run(self, inputs: Sequence[str | Path], out: str | AnyPath, progress: bool = True) -> RunReport:
        items, problems = discover(inputs)
        return self.run_items(items, problems, out, progress)

    def run_items(self, items: list[InputImage], problems: list[tuple[str, str]], out: str | AnyPath,
                  progress: bool = True) -> RunReport:
        """Super-resolve ``items`` (from :func:`discover`, whose ``problems`` are reported as failures) into
        ``out``, a local folder or a gs:// prefix."""
        from tqdm import tqdm

        out = as_path(out, "OUT")
        report = RunReport()
        report.failed.extend(problems)
        pipe, s = self.pipeline, self.pipeline.settings
        planned, plans = [], []
        for item in items:
            try:
                w, h = image_size(item.path)
                if w * h > s.max_input_pixels:
                    read_lr_image(item.path, s.max_input_pixels)  # raises the documented error
                plans.append(pipe.plan((w, h), str(item.path)))
                planned.append(item)
            except (ImageDecodeError, OSError) as e:
                report.failed.append((str(item.path), str(e)))
        bar = tqdm(total=len(planned), unit="img", disable=not progress, desc="xpsr-jax sr")
        for batch in pipe.schedule(plans):
            group = [planned[i] for i in batch.indices]
            decoded = self._decode(group, report)
            # a decoded size can differ from the header's (EXIF rotation): such images run in their own calls
            by_size: dict[tuple, list] = {}
            for item, rgb, notes in decoded:
                try:
                    plan = pipe.plan((rgb.shape[1], rgb.shape[0]), str(item.path))
                except ImageDecodeError as e:
                    report.failed.append((str(item.path), str(e)))
                    continue
                by_size.setdefault(plan.process, []).append((item, rgb, notes, plan))
            for members in by_size.values():
                self._run_members(members, batch, plans[batch.indices[0]].latent, report, out)
            bar.update(len(group))
        bar.close()
        return report

    def _decode(self, group: list[InputImage], report: RunReport):
        decoded = []
        for item in group:
            try:
                rgb, notes = read_lr_image(item.path, self.pipeline.settings.max_input_pixels)
                decoded.append((item, rgb, notes))
            except (ImageDecodeError, OSError) as e:
                report.failed.append((str(item.path), str(e)))
        return decoded

    def _run_members(self, members, batch, scheduled_latent, report: RunReport, out: AnyPath) -> None:
        pipe = self.pipeline
        members, prompts = self._with_prompts(members, report)
        if not members:
            return
        items = [m[0] for m in members]
        latent = members[0][3].latent
        same = latent == scheduled_latent and len(members) == len(batch.indices)
        sharded = batch.sharded and same
        try:
            tile_plan = batch.tile_plan if latent == scheduled_latent else pipe.tile_plan(latent, len(members))
            batch_items = [BatchItem(m[1], m[3], prompt, item.image_id)
                           for m, prompt, item in zip(members, prompts, items)]
            results = pipe.run_batch(batch_items, tile_plan, sharded=sharded)
        except Exception as e:  # noqa: BLE001 - reported per image; the remaining batches still run
            for item in items:
                report.failed.append((str(item.path), f"{type(e).__name__}: {e}"))
            return
        for (item, _, notes, _), res in zip(members, results):
            try:
                self._write(out, item, notes, res)
            except (OSError, NonFiniteJSONError) as e:
                report.failed.append((str(item.path), f"cannot write output: {e}"))
                continue
            report.written += 1
            report.no_prompt += int(res.prompt.empty)
            report.outputs.append(output_paths(item, out)[0])

    def _with_prompts(self, members, report: RunReport):
        """Members whose prompts could be read, and their prompts; the others are reported as failed."""
        kept, prompts = [], []
        for m in members:
            try:
                prompts.append(self.prompts.find(m[0]))
                kept.append(m)
            except TextDecodeError as e:
                report.failed.append((str(m[0].path), str(e)))
        return kept, prompts

    def _write(self, out: AnyPath, item: InputImage, notes, res: SRResult) -> None:
        png, sidecar = output_paths(item, out)
        meta = {"input": str(item.path), "conversions": list(notes), **res.sidecar(self.pipeline.settings)}
        if res.prompt.empty:
            meta["note"] = "no prompts found: ran with empty high- and low-level prompts"
        text = strict_json_dumps(meta) + "\n"  # before any file is written: a NaN leaves no image without sidecar
        # each file appears whole (renamed into place, or uploaded), the PNG, which marks an image done, last
        with replacing(sidecar) as f:
            f.write(text.encode("utf-8"))
        with replacing(png) as f:
            Image.fromarray(np.asarray(res.image, np.uint8), "RGB").save(f, format="PNG")


def output_paths(item: InputImage, out: str | AnyPath) -> tuple[AnyPath, AnyPath]:
    """(PNG, JSON sidecar) that ``item`` is written to under ``out`` (a folder or a gs:// prefix). The suffixes
    are appended, not swapped in: ``photo.v1`` and ``photo.v2`` must not both become ``photo.png``."""
    base = as_path(out, "OUT") / item.out_rel.as_posix()
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".json")
