"""One GRPO run with or without extrapolation, on any model and task: shared by the demo and the benchmarks."""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import logging as hf_logging
from trl import GRPOTrainer

from rlvr_extrap.config import ExtrapGRPOConfig
from rlvr_extrap.experiments.evaluation import HeldoutAccuracyCallback
from rlvr_extrap.experiments.models import TOY, load_model
from rlvr_extrap.experiments.tasks import TOY_TASK, get_task
from rlvr_extrap.runtime.callback import ExtrapolationCallback

__all__ = ["LOG_FILE", "FileLogCallback", "ProgressBarCallback", "Run", "run_experiment", "transformers_bars_off"]

LOG_FILE = "trainer_log.jsonl"  # in the output folder of a run with log_to_file


@dataclass
class Run:
    """Settings of one GRPO run; ``extrap`` holds ``extrap_*`` fields (empty: vanilla GRPO).

    The defaults are the embedded toy's; ``model`` is anything ``models.load_model`` takes.
    """

    name: str
    grpo_steps: int
    extrap: dict[str, Any] = field(default_factory=dict)
    model: str = TOY
    task: str = TOY_TASK
    learning_rate: float = 1e-3
    lora_rank: int | None = 8
    """None: full-parameter training (no adapter)."""
    prompts_per_step: int = 16  # with 4, the toy's GRPO gradient is mostly noise and accuracy stays flat
    num_generations: int = 8
    max_completion_length: int = 6
    dataset_rows: int = 16000  # fixed, so every run (any length) sees the same prompts in the same order
    eval_batch_size: int = 128
    heldout_size: int | None = None  # evaluate on the first this many held-out problems (None: all of them)
    threads: int | None = 1  # torch threads during the run (None: leave as is)
    seed: int = 0
    eval_every: int = 20
    progress: bool = True
    """A progress bar (and, unless ``log_to_file``, the evaluations printed)."""
    lr_scheduler_type: str = "constant"
    """Constant by default: a run stopped at step S equals a longer run read at step S. TRL's default is "linear"."""
    save_every: int | None = None
    """Save a trainer checkpoint (adapter, optimizer, scheduler, RNG) every this many steps; None: none."""
    save_total_limit: int | None = None
    """Keep only this many checkpoints (the Trainer deletes older ones); None: all."""
    logging_steps: int | None = None
    """Steps between the trainer's log dicts; None: a quarter of the run, or for a branch its checkpoint's."""
    log_to_file: bool = False
    """The trainer's log dicts, the held-out evaluations and this package's log messages go to ``LOG_FILE`` in the
    output folder (JSON lines) instead of the console, which shows only the progress bar (``progress``)."""


def run_experiment(
    run: Run,
    output_dir: str | Path,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train, evaluate held-out greedy accuracy along the way, and return a report row.

    ``callbacks`` are added after the extrapolation and accuracy callbacks (e.g. a timer). ``resume_from``:
    a checkpoint folder of this run (``save_every``) to continue from.

    The toy runs torch on one thread: for a model this small, two threads are slower, and collapse
    when another process shares the cores.
    """
    threads = torch.get_num_threads()
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    try:
        with ExitStack() as stack:
            stack.enter_context(_library_warnings_ignored())
            lines = stack.enter_context(_quiet_console(Path(output_dir) / LOG_FILE)) if run.log_to_file else None
            return _run(run, output_dir, callbacks, resume_from, lines)
    finally:
        torch.set_num_threads(threads)


def _run(
    run: Run,
    output_dir: str | Path,
    callbacks: Sequence[TrainerCallback],
    resume_from: str | Path | None,
    lines: JsonLines | None,
) -> dict[str, Any]:
    model, tokenizer = load_model(run.model)
    logging_steps, save_steps = _cadence(run, resume_from)
    task = get_task(run.task)
    args = ExtrapGRPOConfig(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,
        per_device_train_batch_size=run.prompts_per_step * run.num_generations,
        num_generations=run.num_generations,
        max_completion_length=run.max_completion_length,
        temperature=1.0,
        beta=0.0,
        learning_rate=run.learning_rate,
        lr_scheduler_type=run.lr_scheduler_type,
        max_steps=run.grpo_steps,
        logging_steps=logging_steps,
        save_strategy="steps" if run.save_every else "no",
        save_steps=save_steps,
        save_total_limit=run.save_total_limit,
        report_to=[],
        seed=run.seed,
        data_seed=run.seed,
        resume_from_checkpoint=str(resume_from) if resume_from else None,
        disable_tqdm=not run.progress or lines is not None,  # with lines: our bar, not the trainer's
        **run.extrap,
    )
    extrapolation = ExtrapolationCallback()  # given its trainer below: it must come first among the callbacks
    accuracy = HeldoutAccuracyCallback(
        task.heldout_problems()[: run.heldout_size],
        every=run.eval_every,
        batch_size=run.eval_batch_size,
        max_new_tokens=task.max_new_tokens,
        check=task.check,
        verbose=run.progress and lines is None,
    )
    console: list[TrainerCallback] = []
    if lines is not None:
        console.append(FileLogCallback(lines, accuracy))
        if run.progress:
            console.append(ProgressBarCallback(run.name, accuracy))
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=task.reward,
        train_dataset=task.train_dataset(run.dataset_rows, run.seed),
        processing_class=tokenizer,
        peft_config=None
        if run.lora_rank is None
        else LoraConfig(
            r=run.lora_rank, lora_alpha=2 * run.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        # extrapolation first: a jump step is evaluated after the jump; the console last: it shows that evaluation
        callbacks=[extrapolation, accuracy, *callbacks, *console],
    )
    if lines is not None:
        trainer.remove_callback(PrinterCallback)  # its log dicts go to the file (FileLogCallback)
    extrapolation.trainer = trainer
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    jumps = [j for j in extrapolation.jumps if j.applied]
    return {
        "name": run.name,
        "method": run.extrap.get("extrap_method") or "none",
        "grpo_steps": run.grpo_steps,
        "effective_steps": run.grpo_steps + sum(j.horizon for j in jumps),
        "heldout_accuracy": accuracy.history[-1][1],
        "history": accuracy.history,
        "jumps": [j.to_dict() for j in extrapolation.jumps],
        "skill": extrapolation.skill_history,
        "train_seconds": time.perf_counter() - start,
        "snapshot_seconds": extrapolation.snapshot_seconds,
        "worker_cpu_seconds": extrapolation.worker_cpu_seconds,
        "settings": asdict(run),
    }


def _cadence(run: Run, resume_from: str | Path | None) -> tuple[int, int]:
    """``logging_steps`` and ``save_steps``; a branch keeps its checkpoint's where the run leaves them open.

    The Trainer warns when they differ from the checkpoint's; neither changes a result (``save_steps`` is not even
    read when the run saves nothing).
    """
    saved: dict[str, Any] = {}
    if resume_from is not None and (Path(resume_from) / TRAINER_STATE_NAME).is_file():
        saved = json.loads((Path(resume_from) / TRAINER_STATE_NAME).read_text())
    logging_steps = run.logging_steps or saved.get("logging_steps") or max(run.grpo_steps // 4, 1)
    return logging_steps, run.save_every or saved.get("save_steps") or 500


@contextmanager
def _library_warnings_ignored() -> Iterator[None]:
    """Ignore the library warnings a run cannot act on, each by message and category."""
    with warnings.catch_warnings():
        # peft (PeftModel.__init__) and trl (generation, disable_gradient_checkpointing) read
        # PreTrainedModel.is_gradient_checkpointing, deprecated in transformers 5; this package uses the new name
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class JsonLines:
    """A file written afresh, one JSON object a line; thread-safe (the extrapolation worker logs from its thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(entry, default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _LinesHandler(logging.Handler):
    """Log records as ``{"level", "logger", "message"}`` lines."""

    def __init__(self, lines: JsonLines) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.write({"level": record.levelname, "logger": record.name, "message": record.getMessage()})
        except Exception:
            self.handleError(record)


def _not_deepspeed_cpu_notice(record: logging.LogRecord) -> bool:
    # accelerate imports deepspeed where it is installed (the test extra), and deepspeed's accelerator probe then
    # says "Setting accelerator to CPU" on any machine without a GPU: nothing about the run
    return not record.getMessage().startswith("Setting accelerator to CPU")


@contextmanager
def transformers_bars_off() -> Iterator[None]:
    """transformers' own progress bars (loading and writing weights) off, for the duration."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def _quiet_console(path: Path) -> Iterator[JsonLines]:
    """While a run trains: this package's log messages (INFO and up) go to ``path`` instead of the console,
    transformers' progress bars are off and DeepSpeed's accelerator notice is dropped."""
    lines = JsonLines(path)
    package, deepspeed = logging.getLogger("rlvr_extrap"), logging.getLogger("DeepSpeed")
    handler, level, propagate = _LinesHandler(lines), package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    deepspeed.addFilter(_not_deepspeed_cpu_notice)
    try:
        with transformers_bars_off():
            yield lines
    finally:
        deepspeed.removeFilter(_not_deepspeed_cpu_notice)
        package.removeHandler(handler)
        package.setLevel(level)
        package.propagate = propagate
        lines.close()


class FileLogCallback(TrainerCallback):
    """Writes the trainer's log dicts and the held-out evaluations to a ``JsonLines`` file, each with its step."""

    def __init__(self, lines: JsonLines, accuracy: HeldoutAccuracyCallback) -> None:
        self.lines = lines
        self.accuracy = accuracy
        self._written = 0  # evaluations of accuracy.history already written

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a branch: the evaluations before its checkpoint's step are in the log of the run it branched from
        self._written = sum(1 for step, _ in self.accuracy.history if step < state.global_step)
        self._write_evaluations(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write_evaluations(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self.lines.write({"step": state.global_step, **logs})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write_evaluations(state)

    def _write_evaluations(self, state: Any) -> None:
        if state.is_world_process_zero:
            for step, accuracy in self.accuracy.history[self._written :]:
                self.lines.write({"step": step, "heldout_accuracy": accuracy})
        self._written = len(self.accuracy.history)


class ProgressBarCallback(TrainerCallback):
    """One tqdm bar of optimizer steps, named after the run, showing the latest held-out accuracy."""

    def __init__(self, name: str, accuracy: HeldoutAccuracyCallback) -> None:
        self.name = name
        self.accuracy = accuracy
        self.bar: tqdm | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc=self.name, unit="step", dynamic_ncols=True
            )
            self._show_accuracy()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self._show_accuracy()
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self._show_accuracy()
            self.bar.close()
            self.bar = None

    def _show_accuracy(self) -> None:
        if self.accuracy.history:
            step, accuracy = self.accuracy.history[-1]
            self.bar.set_postfix_str(f"held-out {accuracy:.3f} at step {step}", refresh=False)
