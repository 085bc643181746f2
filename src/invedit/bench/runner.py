"""`invedit bench`: run methods over a PIE-Bench-format dataset, resumably, on one process or many.

A run directory holds ``run.json`` (the settings it was started with), ``edits/<method>/<id>.png`` with a
``<id>.json`` record beside each (prompts, settings, seed, NFE, seconds, versions, model fingerprint, the image's
SHA-256), and ``failures*.jsonl`` (one line per failed edit or bad entry). Each image and its record are written
as one atomic group (`invedit.outputs.write_atomically`), the record last: a pair counts as done when its record
names the image's hash, so a kill at any moment loses at most the edits in flight.

Methods that share an inversion (same method, options and source-branch prompt) invert each image once; through
the on-disk `InversionCache`, later runs reuse it as well. Under ``accelerate launch`` the images are split by
position in id order (``items[rank::world]``): no gaps, no duplicates, each process writing only its own files.
Processes that were not split that way (the same command started twice, a stray process beside a launch) share
the work through a lock per image (``.locks/<id>.lock``, `run_share`): an image another live process holds is
left for the end, when it is usually done.

``run.json`` also records what changes an edit's bits besides the settings (`run_environment`: library versions,
device, on CPU the thread count and vector instructions); a resume in another environment is refused unless mixing
is allowed. A method's options may still change while it has no finished edit (a typo does not lock the folder).
Entry ids name files, so they are checked (`invedit.bench.data.check_id`) and every path is built inside the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backbones import backbone
from ..errors import InveditError
from ..inversion import get_inversion
from ..outputs import PathLock, folder_lock, path_inside, prepare_output_dir, remove_created, umask
from .cache import InversionCache, file_sha256, inversion_key, open_cache
from .data import EDIT_TYPES, BenchItem, check_id, read_benchmark
from .methods import MethodSpec

RUN_FILE = "run.json"
EDITS_DIR = "edits"
RUN_FORMAT = 1
#: Record fields that legitimately differ between two runs of the same edit (timings, where the inversion came
#: from); everything else in a record is a deterministic function of the inputs.
VOLATILE_RECORD_KEYS = ("seconds", "seconds_inversion", "seconds_edit", "seconds_spent", "inversion_source")


@dataclass
class BenchSummary:
    """What one `run_bench` call did (this process's share)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    nfe_edit: int = 0
    nfe_inversion: int = 0
    nfe_saved_in_run: int = 0
    nfe_saved_from_cache: int = 0
    seconds: float = 0.0
    rank: int = 0
    world: int = 1
    failures: list[dict[str, str]] = field(default_factory=list)

    def line(self) -> str:
        saved = self.nfe_saved_in_run + self.nfe_saved_from_cache
        where = f"[process {self.rank + 1}/{self.world}] " if self.world > 1 else ""
        return (f"{where}{self.done} done, {self.skipped} already done, {self.failed} failed in {self.seconds:.1f} s; "
                f"NFE {self.nfe_inversion} inversion + {self.nfe_edit} edit; shared inversions saved {saved} NFE "
                f"({self.nfe_saved_in_run} within this run, {self.nfe_saved_from_cache} from the cache)")


def edit_paths(run_dir: Path, method: str, item_id: str, parity: bool) -> tuple[Path, Path]:
    """(image, record) of one edit; JPEG in parity mode, PNG otherwise.

    Raises:
        InveditError: an id that is not a plain file name, or a path that would leave the run folder.
    """
    image = path_inside(run_dir, EDITS_DIR, method, f"{check_id(item_id)}.{'jpg' if parity else 'png'}")
    return image, image.with_suffix(".json")


def finished(image: Path, record: Path) -> bool:
    """Whether an edit is complete: its record parses and names the SHA-256 of the image beside it."""
    try:
        files = json.loads(record.read_text())["files"]
        return file_sha256(image) == files[image.name]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def trajectory_of(m: MethodSpec) -> tuple[str, dict[str, Any]]:
    """What ``m``'s inversion computes, as (name, options) for grouping and the cache key: ``("shared",
    {"trajectory": key})`` where its method's trajectory serves other methods too (`Inverted.trajectory_key`),
    else its method and options."""
    method = get_inversion(m.inversion)
    key = method.trajectory_key(method.validate_options(m.inversion_options))
    return ("shared", {"trajectory": list(key)}) if key is not None else (m.inversion, m.inversion_options)


def clear_leftovers(run_dir: Path, methods: list[MethodSpec], item_id: str) -> None:
    """Remove the temporary files a killed run left for these pairs (only this process writes them)."""
    for m in methods:
        for path in (run_dir / EDITS_DIR / m.name).glob(f".{item_id}.*.part"):
            path.unlink(missing_ok=True)


def process_share(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world size, device) of this process; one plain process when not launched by accelerate/torchrun."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, device
    from accelerate import PartialState

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if device is None or device == "cuda":
        device = str(state.device)
    return state.process_index, state.num_processes, device


def check_selection(edit_types: list[str] | None, limit: int | None) -> None:
    for t in edit_types or []:
        if t not in EDIT_TYPES:
            raise InveditError(f"unknown edit type {t!r}; PIE-Bench's are 0–9 ({', '.join(EDIT_TYPES.values())})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InveditError(f"--limit must be a positive integer, got {limit!r}")


def remember_settings(run_dir: Path, settings: dict[str, Any], allow_mixed: bool = False) -> None:
    """Write ``run.json`` or check this run against it: the same global settings, the same environment (see
    `run_environment`; ``allow_mixed`` accepts another, noting it), and the same options for every method that
    has a finished edit (new methods are added; a method with no edit yet takes the new options, so a typo does
    not lock the folder). Locked, so processes of one launch agree.

    Raises:
        InveditError: the folder was run with other settings (one line naming the first difference).
    """
    path = run_dir / RUN_FILE
    with folder_lock(run_dir):
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InveditError(f"cannot read {path}: {exc}") from None
            for key, value in settings.items():
                if key not in ("methods", ENVIRONMENT_KEY) and old.get(key) != value:
                    raise InveditError(f"{run_dir} was run with {key}={old.get(key)!r}, not {value!r}; resume it "
                                       "with the same settings or choose a new --out")
            environment = _checked_environment(run_dir, old, settings.get(ENVIRONMENT_KEY), allow_mixed)
            for name, spec in settings["methods"].items():
                before = old["methods"].get(name, spec)
                changed = [f"{k} {before.get(k)} → {v}" for k, v in spec.items() if before.get(k) != v]
                if changed and has_edits(run_dir, name):
                    raise InveditError(f"{run_dir} ran {name} with other settings ({'; '.join(changed)}); give the "
                                       f"new ones another name, e.g. {name.split('@')[0]}@b")
            merged = {**old, **environment, "methods": {**old["methods"], **settings["methods"]}}
            if merged == old:
                return
        else:
            merged = settings
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RUN_FILE}.", suffix=".part")
        try:  # replaced inside the lock (write_atomically would take the same lock again)
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f, indent=2)
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


ENVIRONMENT_KEY = "environment"


def run_environment(device) -> dict[str, Any]:
    """What changes an edit's bits besides the settings: library versions, the device, and on CPU the thread
    count (1 vs 2 threads move pixels by ±1 level) and the vector instructions torch uses."""
    import torch

    from ..versions import versions

    device = torch.device(device)
    env: dict[str, Any] = {k: v for k, v in versions().items() if k in ("torch", "diffusers", "transformers")}
    if device.type == "cpu":
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["threads"] = torch.get_num_threads()
    elif device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


_ENVIRONMENT_HINTS = {
    "threads": "set INVEDIT_THREADS={old}",
    "cpu_capability": "run on a CPU with {old} or set ATEN_CPU_CAPABILITY={old}",
    "gpu": "run on a {old}",
}


def _checked_environment(run_dir: Path, old: dict[str, Any], new: dict[str, Any] | None,
                         allow_mixed: bool) -> dict[str, Any]:
    """The run.json fields to update for this process's environment (see `remember_settings`)."""
    if new is None:
        return {}
    before = old.get(ENVIRONMENT_KEY)
    if before is None:  # a folder from before environments were recorded: adopt this one
        return {ENVIRONMENT_KEY: new}
    changed = [k for k in sorted(set(before) | set(new)) if before.get(k) != new.get(k)]
    if not changed:
        return {}
    if not allow_mixed:
        key = changed[0]
        hint = _ENVIRONMENT_HINTS.get(key, "use {key} {old}").format(key=key, old=before.get(key))
        raise InveditError(f"{run_dir} was made with {key} {before.get(key)}, this process has {new.get(key)}: "
                           f"resumed edits would differ in their bits; {hint} (or --allow-mixed to mix them)")
    mixed = list(old.get("mixed_environments", []))
    return {"mixed_environments": mixed + [new]} if new not in mixed else {}


def has_edits(run_dir: Path, method: str) -> bool:
    """Whether ``method`` has a finished edit in the run (records are written only with their image)."""
    folder = run_dir / EDITS_DIR / method
    return folder.is_dir() and any(folder.glob("*.json"))


def _failure(summary: BenchSummary, log_path: Path, item_id: str, method: str, message: str, say) -> None:
    entry = {"id": item_id, "method": method, "error": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    summary.failed += 1
    summary.failures.append(entry)
    with open(log_path, "a") as f:  # one write per line: lines of concurrent writers never interleave
        f.write(json.dumps(entry) + "\n")
    say(f"failed {item_id} {method}: {message}")  # ids are checked names, or escaped by `read_benchmark`


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, InveditError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first[:200]}"


def run_bench(data_dir: str | os.PathLike, run_dir: str | os.PathLike, methods: list[MethodSpec], *,
              model: str | None = None, steps: int | None = None, guidance: float | None = None, seed: int = 0,
              device: str | None = None, dtype: str | None = None, resolution: int | None = None,
              offload: str | None = None, quantize: str | None = None, loras: list[str] | None = None,
              max_memory: float | str | None = None, parity: bool = False,
              edit_types: list[str] | None = None, limit: int | None = None,
              cache_dir: str | os.PathLike | None = None, progress: bool = True, say=print,
              allow_mixed: bool = False) -> BenchSummary:
    """Edit every (image, method) pair of this process's share that is not done yet (see the module docstring).

    ``steps`` / ``guidance`` None: the model's (`invedit.prepare.model_numbers`). Before the model loads, its
    folder is inspected (`invedit.models.inspect`) and every method is checked on it (`check_methods`), so a
    method that cannot run on the model is refused once, not once per entry.

    Returns the summary; failures are in it, in the run's failure log, and were reported through ``say``.
    Raises:
        InveditError: settings that cannot run at all (bad options, a method the model cannot run, a folder run
            with other settings, a model that does not load, a dataset folder that is not one).
    """
    from .. import api
    from ..load_options import check_load_options
    from ..models import (
        inspect,
        load,
        model_fingerprint,
        model_name,
        native_resolution,
        resolve_device,
        resolve_dtype,
    )
    from ..versions import versions

    started = time.perf_counter()
    if steps is not None:
        api.check_steps(steps)
    if guidance is not None:
        api.check_guidance(guidance)
    api.check_seed(seed)
    check_selection(edit_types, limit)
    data_dir, run_dir = Path(data_dir).resolve(), Path(run_dir)
    items, problems = read_benchmark(data_dir, edit_types)
    if limit is not None:
        items = items[:limit]
    if not items and not problems:
        raise InveditError(f"{data_dir} has no entries" + (f" of types {','.join(edit_types)}" if edit_types else ""))
    rank, world, device = process_share(device)
    if rank == 0 and run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / RUN_FILE).exists():
        raise InveditError(f"{run_dir} is not empty and holds no bench run; choose a new or empty folder")
    resolve_dtype(dtype, resolve_device(device))
    check_load_options(resolve_device(device), offload, quantize, loras)
    model_view = inspect(model, device, dtype, resolution, offload, max_memory)  # no weight read yet
    from ..prepare import model_numbers

    steps, guidance, _ = model_numbers(model_view, steps, guidance)
    check_methods(model_view, methods, items, steps, guidance, seed)
    if world > 1:  # the processes of one launch create the folder together
        run_dir.mkdir(parents=True, exist_ok=True)
        created: list[Path] = []
    else:
        created = prepare_output_dir(run_dir, "the run")  # removed again if the run cannot start

    try:
        pipe = load(model, device=device, dtype=dtype, resolution=resolution, offload=offload, quantize=quantize,
                    loras=loras, max_memory=max_memory)
        size = native_resolution(pipe)
        model_record = backbone(pipe)
        dtype_name = str(model_record.dtype).replace("torch.", "")
        settings = {"format": RUN_FORMAT, "data": str(data_dir), "model": model_name(pipe),
                    "model_fingerprint": model_fingerprint(pipe), "steps": steps, "guidance_scale": guidance,
                    "seed": seed, "dtype": dtype_name, "device_type": model_record.device.type, "resolution": size,
                    "parity": parity, "quantize": model_record.quantize,
                    "loras": [{k: r[k] for k in ("name", "scale", "sha256")} for r in model_record.loras] or None,
                    "invedit": versions()["invedit"], "methods": {m.name: m.settings() for m in methods},
                    ENVIRONMENT_KEY: run_environment(model_record.device)}
        remember_settings(run_dir, settings, allow_mixed)
    except BaseException:
        remove_created(created)
        raise

    summary = BenchSummary(rank=rank, world=world)
    log_path = run_dir / ("failures.jsonl" if world == 1 else f"failures.rank{rank}.jsonl")
    share = items[rank::world]
    todo = [(item, [m for m in methods if not finished(*edit_paths(run_dir, m.name, item.id, parity))])
            for item in share]
    summary.skipped = sum(len(methods) - len(pending) for _, pending in todo)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(share) * len(methods), initial=summary.skipped, desc="bench", unit="edit",
               disable=not progress, dynamic_ncols=True)
    say = bar.write if progress else say
    if rank == 0:
        for item_id, problem in problems:
            _failure(summary, log_path, item_id, "*", problem, say)
    cache = open_cache(cache_dir, say)
    context = _RunContext(pipe, size, steps, guidance, seed, dtype_name, parity, run_dir, data_dir, cache,
                          summary, log_path, say, bar)
    try:
        run_share(context, todo)
    finally:
        bar.close()
    for message in dict.fromkeys(cache.unreadable):
        say(f"note: recomputed an unreadable cached inversion ({message})")
    summary.seconds = time.perf_counter() - started
    return summary


def check_methods(model, methods: list[MethodSpec], items: list[BenchItem], steps: int, guidance: float,
                  seed: int) -> None:
    """Refuse, in one line, a method that cannot run on the model (``model``: a `Backbone`, typically the
    weightless one of `invedit.models.inspect`): an inversion or editor of another family, an option out of range
    at these steps. Each method's editor is dry-run (`invedit.prepare.prepare_edit`) on the first entry whose
    prompts the model reads, with its source prompt as both prompts (no blend words: those are the entry's), so
    what fails here fails for every entry.

    Raises:
        InveditError: ``method NAME: …``.
    """
    from ..prepare import EditSettings, check_model_kind, check_prompt, prepare_edit

    probe = None
    for item in items:
        try:
            check_prompt(item.source_prompt, model.tokenizer, "source prompt")
            entry_mask(item, None)
        except (InveditError, OSError):
            continue
        probe = item
        break
    for m in methods:
        try:
            check_model_kind(model, m.inversion, m.editor)
            if probe is not None:
                settings = EditSettings(m.inversion, m.editor, steps, guidance, seed, m.inversion_options,
                                        m.editor_options)
                prepare_edit(model.pipe, probe.source_prompt, probe.source_prompt, settings,
                             mask=entry_mask(probe, m.editor))
        except InveditError as exc:
            raise InveditError(f"method {m.name}: {exc}") from None


def entry_mask(item: BenchItem, editor: str | None):
    """The entry's edit mask (its true region, without the evaluator's border) for an editor that takes one
    (`Editor.takes_mask`: KV-Edit), else None; ``editor`` None: read it anyway (a check that it can be read)."""
    from ..editing import get_editor
    from ..masks import EditMask, image_size

    if editor is not None and not get_editor(editor).takes_mask:
        return None
    width, height = image_size(item.image_path)
    return EditMask.from_pixels(item.mask((height, width)), f"entry {item.id}", f"the mask of entry {item.id}")


LOCKS_DIR = ".locks"


def run_share(context: _RunContext, todo: list[tuple[BenchItem, list[MethodSpec]]]) -> None:
    """Edit each image's pending methods while holding the image's lock, so that processes sharing a run folder
    (the same command started twice, accelerate workers plus a stray process) share the work: an image a live
    process holds is skipped and taken up again at the end, when it is usually done already."""
    waiting = [(item, pending) for item, pending in todo if pending and not context.run_locked(item, pending)]
    for item, pending in waiting:
        context.run_locked(item, pending, blocking=True)
    clear_stale_locks(context.run_dir)


def clear_stale_locks(run_dir: Path) -> None:
    """Remove the lock files of processes that died (a live holder keeps its own), then the empty folder."""
    folder = run_dir / LOCKS_DIR
    for path in folder.glob("*.lock"):
        lock = PathLock(path)
        if lock.acquire():
            lock.release()
    with contextlib.suppress(OSError):
        folder.rmdir()


@dataclass
class _RunContext:
    """The loaded model and run settings while editing one process's share."""

    pipe: Any
    size: int
    steps: int
    guidance: float
    seed: int
    dtype: str
    parity: bool
    run_dir: Path
    data_dir: Path
    cache: InversionCache
    summary: BenchSummary
    log_path: Path
    say: Any
    bar: Any

    def run_locked(self, item: BenchItem, pending: list[MethodSpec], blocking: bool = False) -> bool:
        """`run_item` under the image's lock, for the methods still pending once it is held; ``False`` (nothing
        done) when another live process holds it and ``blocking`` is false."""
        lock = PathLock(self.run_dir / LOCKS_DIR / f"{item.id}.lock")
        if not lock.acquire(blocking):
            return False
        try:
            still = [m for m in pending if not finished(*edit_paths(self.run_dir, m.name, item.id, self.parity))]
            self.summary.skipped += len(pending) - len(still)  # done by another process meanwhile
            self.bar.update(len(pending) - len(still))
            clear_leftovers(self.run_dir, still, item.id)  # under the lock: nobody else is writing them
            if still:
                self.run_item(item, still)
        finally:
            lock.release()
        return True

    def run_item(self, item: BenchItem, pending: list[MethodSpec]) -> None:
        """Invert ``item`` once per distinct trajectory its pending methods need (methods with equal
        `Inverted.trajectory_key`, e.g. ``ddim`` and ``direct`` with any offsets, share one), then run each
        method."""
        from ..images import load_image
        from ..prepare import EditSettings, prepare_edit

        try:
            image = load_image(item.image_path, self.size)
            image_sha = file_sha256(item.image_path)
        except (InveditError, OSError) as exc:
            for m in pending:
                self._fail(item, m, _error_text(exc))
            return
        # (trajectory, inversion prompt) -> (the trajectory, its methods)
        groups: dict[tuple[str, str], tuple[tuple[str, dict[str, Any]], list[MethodSpec]]] = {}
        requests: dict[tuple[str, str], Any] = {}
        for m in pending:
            try:  # every check, the editor's dry run included, before inverting: refusals cost no inversion
                settings = EditSettings(m.inversion, m.editor, self.steps, self.guidance, self.seed,
                                        m.inversion_options, self._editor_options(item, m))
                target, instruction = self._target(item, m)
                prepared = prepare_edit(self.pipe, item.source_prompt, instruction or target, settings,
                                        mask=self._mask(item, m))
            except InveditError as exc:
                self._fail(item, m, str(exc))
                continue
            trajectory = trajectory_of(m)
            key = (json.dumps(trajectory, sort_keys=True, default=str), prepared.inversion_prompt)
            groups.setdefault(key, (trajectory, []))[1].append(m)
            if prepared.feature_request is not None:  # one inversion records what every method of its group reads
                requests[key] = prepared.feature_request.merged(requests.get(key))
        for key, (trajectory, group) in groups.items():
            try:
                inverted, source = self._inversion(image, image_sha, key[1], trajectory, group[0], requests.get(key))
            except Exception as exc:  # noqa: BLE001 (recorded; the run goes on)
                for m in group:
                    self._fail(item, m, _error_text(exc))
                continue
            for m in group:
                try:
                    served = inverted.as_method(m.inversion, m.inversion_options)
                except InveditError as exc:  # a method whose trajectory key promises more than it keeps
                    self._fail(item, m, str(exc))
                    continue
                self._edit(item, m, served, source, image_sha)
                source = "run"  # the next method of the group shares it

    def _inversion(self, image, image_sha: str, prompt: str, trajectory: tuple[str, dict[str, Any]], m: MethodSpec,
                   record=None):
        """The group's inversion (from the cache, or computed by its first method ``m`` and cached) under the
        group's ``trajectory`` (`trajectory_of`, its cache name and options), recording ``record`` (the features its
        methods read, `invedit.features.FeatureRequest`): part of the cache key."""
        from .. import api
        from ..models import model_fingerprint
        from ..versions import versions

        name, options = trajectory  # a trajectory several methods share is cached under its own name
        keyed = {**options, **({"recorded_features": record.record()} if record is not None else {})}
        key = inversion_key(image_sha, prompt, model_fingerprint(self.pipe), self.steps, name, keyed, self.guidance,
                            self.seed, self.dtype, backbone(self.pipe).device.type, self.size, versions()["invedit"])
        cached = self.cache.get(key, backbone(self.pipe).device)
        if cached is not None:
            return cached, "cache"
        inverted = api.invert(self.pipe, image, prompt, m.inversion, self.steps, self.guidance, self.seed,
                              record=record, **m.inversion_options)
        self.cache.put(key, inverted)  # never fails the edit (a failed write is warned about once)
        self.summary.nfe_inversion += inverted.stats.nfe
        return inverted, "computed"

    def _editor_options(self, item: BenchItem, m: MethodSpec) -> dict[str, Any]:
        """The method's editor options, with the entry's blend words for editors that take them (P2P)."""
        from ..editing import get_editor
        from ..editing.p2p import parse_blend_words

        options = dict(m.editor_options)
        key = get_editor(m.editor).blend_option()
        if key is not None and key not in options and item.blend_words:
            options[key] = parse_blend_words(item.blend_words)
        return options

    @staticmethod
    def _target(item: BenchItem, m: MethodSpec) -> tuple[str | None, str | None]:
        """(target prompt, instruction) of the edit: the entry's ``editing_instruction`` for an instruction editor
        (`Editor.takes_instruction`: FLUX.1 Kontext, Qwen-Image-Edit), else its target prompt."""
        from ..editing import get_editor

        if get_editor(m.editor).takes_instruction:
            return None, item.instruction
        return item.target_prompt, None

    def _mask(self, item: BenchItem, m: MethodSpec):
        """`entry_mask` of the method's editor."""
        return entry_mask(item, m.editor)

    def _edit(self, item: BenchItem, m: MethodSpec, inverted, source: str, image_sha: str) -> None:
        from .. import api

        options = self._editor_options(item, m)
        try:
            mask = self._mask(item, m)
            target, instruction = self._target(item, m)
            result = api.edit(self.pipe, inverted, None if instruction else item.source_prompt, target, editor=m.editor,
                              guidance_scale=self.guidance, seed=self.seed, mask=mask, instruction=instruction,
                              **options)
            result.settings.update({
                "source_prompt": item.source_prompt,  # the entry's (the editor's own source branch is recorded too)
                "image": str(item.image_path.relative_to(self.data_dir)) if item.image_path.is_relative_to(
                    self.data_dir) else str(item.image_path),
                "inversion_source": source,
                "bench": {"id": item.id, "method": m.name, "edit_type": item.edit_type,
                          "source_prompt": item.source_prompt, "target_prompt": item.target_prompt,
                          **({"instruction": instruction} if instruction is not None else {}),
                          "blended_word": item.blend_words, "source_sha256": image_sha,
                          **({"mask_given": True} if mask is not None else {}),
                          **({"notes": item.notes} if item.notes else {})},
            })
            image_path, _ = edit_paths(self.run_dir, m.name, item.id, self.parity)
            result.save(image_path)
        except Exception as exc:  # noqa: BLE001 (recorded; the run goes on)
            self._fail(item, m, _error_text(exc))
            return
        s = self.summary
        s.done += 1
        s.nfe_edit += result.nfe_edit
        s.nfe_saved_in_run += result.nfe_inversion if source == "run" else 0
        s.nfe_saved_from_cache += result.nfe_inversion if source == "cache" else 0
        self.bar.update(1)

    def _fail(self, item: BenchItem, m: MethodSpec, message: str) -> None:
        _failure(self.summary, self.log_path, item.id, m.name, message, self.say)
        self.bar.update(1)
