"""GRPO (+ trajectory extrapolation) recipe: any causal LM from a hub id or a local path, math data verified by math-verify.

    python recipes/grpo.py --config recipes/toy_arithmetic.yaml
    python recipes/grpo.py --config recipes/qwen2.5_1.5b_gsm8k.yaml
    python recipes/grpo.py --config recipes/qwen2.5_1.5b_gsm8k.yaml --extrap_method relex --extrap_jump_at 150

Every GRPOConfig field and every ``extrap_*`` field is a flag; the YAML sets defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from datasets import Dataset, load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer, TrlParser

from rlvr_extrap import ExtrapGRPOConfig, ExtrapolationCallback
from rlvr_extrap.rewards import math_verify_reward
from rlvr_extrap.toy import load_toy_model, train_dataset

SYSTEM_PROMPT = "Solve the problem step by step, then give the final answer as \\boxed{...}."
TOY = "toy"


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(
        default=TOY, metadata={"help": "Hub id or local path of a causal LM; 'toy' for the embedded default."}
    )
    dataset: str = field(
        default="toy-arithmetic",
        metadata={"help": "'toy-arithmetic', a hub dataset id, or a local .json/.jsonl file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config (e.g. 'main' for gsm8k)."})
    dataset_split: str = field(default="train")
    question_field: str = field(default="question")
    answer_field: str = field(default="answer", metadata={"help": "Gold answer; GSM8K's '#### 42' tail is extracted."})
    max_train_rows: int | None = field(default=None)
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
    if script.dataset.endswith((".json", ".jsonl")):
        raw = load_dataset("json", data_files=script.dataset, split="train")
    else:
        raw = load_dataset(script.dataset, script.dataset_config, split=script.dataset_split)
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


def main() -> None:
    script, args = TrlParser((ScriptArguments, ExtrapGRPOConfig)).parse_args_and_config()
    if script.model_name_or_path == TOY:
        model, tokenizer = load_toy_model()
    else:
        tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path, padding_side="left")
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path, dtype=dtype)
    if script.dataset == "toy-arithmetic":
        dataset = train_dataset(script.max_train_rows or 4000, seed=args.seed)
    else:
        dataset = math_dataset(script, conversational=tokenizer.chat_template is not None)
    trainer = GRPOTrainer(
        model=model,
        args=args,
        reward_funcs=math_verify_reward,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=script.lora_r,
            lora_alpha=script.lora_alpha,
            target_modules=script.lora_target_modules
            if script.lora_target_modules == "all-linear"
            else script.lora_target_modules.split(","),
            task_type="CAUSAL_LM",
        ),
        callbacks=[ExtrapolationCallback()],
    )
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
