"""GRPO (+ trajectory extrapolation) recipe: any causal LM from a hub id or a local path, math data verified by math-verify.

    python recipes/grpo.py --config recipes/toy_arithmetic.yaml
    python recipes/grpo.py --config recipes/smollm2_math.yaml
    python recipes/grpo.py --config recipes/qwen2.5_1.5b_gsm8k.yaml
    python recipes/grpo.py --config recipes/qwen2.5_1.5b_gsm8k.yaml --extrap_method relex --extrap_jump_at 150
    python recipes/grpo.py --config recipes/smollm2_math_full.yaml      # full-parameter GRPO (no LoRA adapter)
    python recipes/grpo.py --config recipes/smollm2_math.yaml --full_parameter true --learning_rate 1e-5

Every GRPOConfig field and every ``extrap_*`` field is a flag; the YAML sets defaults. Bad input (a config
file, a flag, the model or the dataset) ends in one stderr line naming it and the fix, with exit status 2.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from datasets import Dataset, load_dataset
from peft import LoraConfig
from trl import GRPOTrainer, TrlParser

from rlvr_extrap import ExtrapGRPOConfig, ExtrapolationCallback, ExtrapolationConfigError
from rlvr_extrap.experiments.models import SMOLLM2, TOY, ModelSourceError, load_model
from rlvr_extrap.experiments.rewards import math_verify_reward
from rlvr_extrap.experiments.tasks import TOY_TASK, get_task, task_names
from rlvr_extrap.runtime.lora import NoLoraAdapterError
from rlvr_extrap.runtime.state import StateFileError

SYSTEM_PROMPT = "Solve the problem step by step, then give the final answer as \\boxed{...}."
PROG = "grpo.py"


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(
        default=TOY,
        metadata={
            "help": f"Hub id or local path of a causal LM; '{TOY}' for the embedded default, '{SMOLLM2}' for SmolLM2-135M-Instruct."
        },
    )
    dataset: str = field(
        default=TOY_TASK,
        metadata={
            "help": f"A built-in task ({', '.join(task_names())}), a hub dataset id, or a local .json/.jsonl file."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config (e.g. 'main' for gsm8k)."})
    dataset_split: str = field(default="train")
    question_field: str = field(default="question")
    answer_field: str = field(default="answer", metadata={"help": "Gold answer; GSM8K's '#### 42' tail is extracted."})
    max_train_rows: int | None = field(default=None)
    full_parameter: bool = field(
        default=False,
        metadata={
            "help": "Train every weight (no LoRA adapter); the callback extrapolates the weights extrap_full_modules "
            "selects. The model is loaded in float32 (with --bf16 true, autocast computes in bf16 and the float32 "
            "weights take the jumps exactly). The lora_* flags are then unused."
        },
    )
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "'all-linear' or a comma-separated list of module names."}
    )


def gold_answer(text: str) -> str:
    """The final answer of a worked solution: GSM8K's ``#### 42`` tail, else the text itself."""
    match = re.search(r"####\s*(.+)$", str(text).strip())
    return match.group(1).strip().replace(",", "") if match else str(text).strip()


def math_dataset(script: ScriptArguments, conversational: bool) -> Dataset:
    """``prompt`` and ``answer`` columns from a hub dataset or a local JSON(L) file."""
    local = script.dataset.endswith((".json", ".jsonl"))
    if local and not Path(script.dataset).is_file():
        raise ValueError(
            f"--dataset {script.dataset}: no such file; pass an existing .json/.jsonl file, a hub dataset id, "
            f"or a built-in task ({', '.join(task_names())})"
        )
    if local and Path(script.dataset).stat().st_size == 0:
        raise ValueError(f"--dataset {script.dataset} is empty; pass a file with one JSON object per line")
    try:
        if local:
            raw = load_dataset("json", data_files=script.dataset, split="train")
        else:
            raw = load_dataset(script.dataset, script.dataset_config, split=script.dataset_split)
    except Exception as err:  # datasets raises many kinds (generation, connection, missing split, empty file)
        cause = err.__cause__ or err
        fix = (
            "check that it holds one JSON object per line"
            if local
            else "check the id, --dataset_config and --dataset_split, and that the hub is reachable"
        )
        raise ValueError(f"--dataset {script.dataset}: cannot load it ({_one_line(cause)}); {fix}") from None
    if len(raw) == 0:
        raise ValueError(f"--dataset {script.dataset} has no rows; pass a dataset with training examples")
    missing = {script.question_field, script.answer_field} - set(raw.column_names)
    if missing:
        raise ValueError(
            f"--dataset {script.dataset}: column(s) {sorted(missing)} not found (it has {raw.column_names}); "
            "set --question_field / --answer_field"
        )
    if script.max_train_rows:
        raw = raw.select(range(min(script.max_train_rows, len(raw))))

    def to_row(example: dict) -> dict:
        question = example[script.question_field]
        prompt = (
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
            if conversational
            else f"{SYSTEM_PROMPT}\nQuestion: {question}\nAnswer:"
        )
        return {"prompt": prompt, "answer": gold_answer(example[script.answer_field])}

    return raw.map(to_row, remove_columns=raw.column_names)


def _one_line(err: BaseException) -> str:
    """An exception as one line: its type and its message with newlines and runs of spaces collapsed."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr naming the input and the fix, exit status 2, no traceback."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_arguments(argv: list[str] | None = None) -> tuple[ScriptArguments, ExtrapGRPOConfig]:
    """The recipe's and the trainer's settings from ``--config`` YAML and flags; any bad one ends in ``fail``."""
    parser = TrlParser((ScriptArguments, ExtrapGRPOConfig), prog=PROG)
    parser.error = lambda message: fail(f"{message}; see {PROG} --help")  # argparse prints the whole usage first
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        at = argv.index("--config") + 1
        _check_config(argv[at] if at < len(argv) else None)
    try:
        script, args = parser.parse_args_and_config(argv)
    except ExtrapolationConfigError as err:
        fail(str(err))
    except (ValueError, TypeError) as err:  # GRPOConfig / TrainingArguments validation
        text = " ".join(str(err).split())
        unknown = re.search(r"not used by the HfArgumentParser: (.*)", text)
        if unknown:
            fail(f"unknown argument(s) {unknown.group(1)}; see {PROG} --help for the flags")
        fail(f"invalid training settings: {text}")
    if script.max_train_rows is not None and script.max_train_rows < 1:
        fail(f"--max_train_rows {script.max_train_rows}: must be >= 1, or left out to use every row")
    for name in ("lora_r", "lora_alpha"):
        if getattr(script, name) < 1:
            fail(f"--{name} {getattr(script, name)}: must be a positive integer (e.g. 16)")
    return script, args


def _check_config(path: str | None) -> None:
    """``--config``: an existing YAML mapping whose keys are all settings (TRL's own errors are tracebacks)."""
    example = "e.g. --config recipes/toy_arithmetic.yaml"
    if path is None:
        fail(f"--config needs the path of a YAML file; {example}")
    if not Path(path).is_file():
        fail(f"--config {path}: no such file; pass an existing YAML file, {example}")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        fail(f"--config {path} is not valid YAML ({where}{problem}); fix the file")
    if not isinstance(config, dict):
        fail(f"--config {path} must be a YAML mapping of setting: value (see recipes/toy_arithmetic.yaml)")
    known = {f.name for cls in (ScriptArguments, ExtrapGRPOConfig) for f in fields(cls)} | {"env"}
    unknown = sorted(set(config) - known)
    if unknown:
        fail(f"--config {path}: unknown setting(s) {unknown}; fix the spelling or remove them (see {PROG} --help)")


def load_trainable_model(script: ScriptArguments, args: ExtrapGRPOConfig) -> tuple[Any, Any]:
    """The model and tokenizer ``--model_name_or_path`` names; a missing or unloadable one ends in ``fail``."""
    name = script.model_name_or_path
    fix = (
        "pass a local model directory (save_pretrained), a reachable hub id such as Qwen/Qwen2.5-1.5B-Instruct, "
        f"'{SMOLLM2}' or '{TOY}'"
    )
    local = Path(name).expanduser()
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        fail(f"--model_name_or_path {name}: no such directory; {fix}")
    if local.exists() and not local.is_dir():
        fail(f"--model_name_or_path {name} is a file, not a model directory; {fix}")
    try:
        half = args.bf16 and not script.full_parameter  # full-parameter: float32 weights, bf16 autocast
        return load_model(name, dtype=torch.bfloat16 if half else torch.float32)
    except ModelSourceError as err:
        fail(f"--model_name_or_path {err}")
    except (OSError, ValueError, KeyError) as err:
        fail(f"--model_name_or_path {name}: cannot load a causal LM ({_one_line(err)[:300]}); {fix}")


def main(argv: list[str] | None = None) -> None:
    script, args = parse_arguments(argv)
    model, tokenizer = load_trainable_model(script, args)
    reward = math_verify_reward
    try:
        if script.dataset in task_names():
            task = get_task(script.dataset)
            dataset, reward = task.train_dataset(script.max_train_rows or 4000, args.seed), task.reward
        else:
            dataset = math_dataset(script, conversational=tokenizer.chat_template is not None)
    except ValueError as err:
        fail(str(err))
    target_modules = (
        script.lora_target_modules
        if script.lora_target_modules == "all-linear"
        else script.lora_target_modules.split(",")
    )
    try:
        trainer = GRPOTrainer(
            model=model,
            args=args,
            reward_funcs=reward,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=None
            if script.full_parameter
            else LoraConfig(
                r=script.lora_r, lora_alpha=script.lora_alpha, target_modules=target_modules, task_type="CAUSAL_LM"
            ),
        )
    except ValueError as err:  # e.g. target modules the model lacks
        fail(f"cannot set up GRPO training: {' '.join(str(err).split())} (check --lora_target_modules and the model)")
    trainer.add_callback(ExtrapolationCallback(trainer))
    try:
        trainer.train()
        trainer.save_model(args.output_dir)
    except (ExtrapolationConfigError, NoLoraAdapterError, StateFileError) as err:  # found at train start
        fail(str(err))
    finally:  # several processes: destroy the process group before the interpreter shuts down (see README)
        trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
