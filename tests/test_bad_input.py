"""Bad input at every user-facing entry point ends in one line naming the input and the fix, never a traceback.

Entry points: ``rlvr-extrap analyze/extrapolate/demo`` (exit status 2, one stderr line), ``recipes/grpo.py``
(exit status 2, last stderr line), ``load_state`` / ``apply_offsets`` (a ValueError or FileNotFoundError).
Every case asserts the name of the bad input and the hint of the fix, so a vaguer message fails.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from grpo_utils import make_trainer, tiny_config, tiny_model
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.cli import main
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.linalg.lowrank import LowRank
from rlvr_extrap.runtime.lora import NoLoraAdapterError, find_lora_modules
from rlvr_extrap.runtime.state import CallbackState, apply_offsets, load_state, save_state

ROOT = Path(__file__).parents[1]
STEPS = (10, 20, 30)
SHAPES = {"layer.a.weight": (8, 6), "layer.b.weight": (6, 4), "norm.weight": (6,)}
LORA_MODULES = ("layer.a", "layer.b")


# ---------------------------------------------------------------------------------------------------------------
# Tiny runs written with safetensors directly (no model classes): a base, full checkpoints, LoRA adapters.


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _base_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=g) for k, shape in SHAPES.items()}
    return tensors | {"position_ids": torch.arange(4)}  # a non-floating tensor, copied as is


def _adapter(step: int, r: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for module in LORA_MODULES:
        out_features, in_features = SHAPES[f"{module}.weight"]
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_features, generator=g)
        tensors[f"base_model.model.{module}.lora_B.weight"] = 0.01 * step * torch.randn(out_features, r, generator=g)
    return tensors


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    base = _base_tensors()
    _write(root / "base" / "model.safetensors", base)
    (root / "base" / "config.json").write_text("{}")
    for step in STEPS:
        moved = {k: v + 0.01 * step if v.is_floating_point() else v for k, v in base.items()}
        _write(root / "full" / f"checkpoint-{step}" / "model.safetensors", moved)
        _write(root / "lora" / f"checkpoint-{step}" / "adapter_model.safetensors", _adapter(step))
        config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": list(LORA_MODULES)}
        (root / "lora" / f"checkpoint-{step}" / "adapter_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def work(pristine, tmp_path) -> Path:
    """A private copy of the base and both runs (cases mutate them)."""
    for name in ("base", "full", "lora"):
        shutil.copytree(pristine / name, tmp_path / name)
    return tmp_path


def _truncate(file: Path, keep: int | None = None) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep is not None else data[:-40])


def _edit(file: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(file)
    change(tensors)
    _write(file, tensors)


def _shard_base(w: Path) -> None:
    """Split the base into two shards with an index, as save_pretrained does for large models."""
    tensors = load_file(w / "base" / "model.safetensors")
    (w / "base" / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for name, shard_keys in shards.items():
        _write(w / "base" / name, {k: tensors[k] for k in shard_keys})
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (w / "base" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _set(tensors: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    tensors[key] = value


def _poison(tensors: dict[str, torch.Tensor], key: str) -> None:
    tensors[key][0] = float("nan")


def _mkfile(path: Path) -> Path:
    path.write_text("not a directory")
    return path


# (mutation of the work dir, command line with {w} for the work dir, substrings the one line must hold).
# Commands default to `extrapolate {w}/full --base {w}/base --method relex --target-step 100 --out {w}/out`.
EXTRAPOLATE = "extrapolate {run} --base {w}/base --method relex --target-step 100 --out {w}/out"
ANALYZE = "analyze {run} --base {w}/base --out {w}/out"
CLI_CASES: dict[str, tuple[Callable[[Path], object] | None, str, tuple[str, ...]]] = {
    # RUN_DIR
    "run dir missing": (
        None,
        EXTRAPOLATE.replace("{run}", "{w}/nowhere"),
        ("RUN_DIR", "does not exist", "checkpoint-N/"),
    ),
    "run dir is a file": (
        lambda w: _mkfile(w / "file"),
        EXTRAPOLATE.replace("{run}", "{w}/file"),
        ("RUN_DIR", "is a file", "pass the directory holding"),
    ),
    "empty checkpoint dir (interrupted save)": (
        lambda w: [p.unlink() for p in (w / "full" / "checkpoint-30").iterdir()],
        EXTRAPOLATE,
        ("checkpoint-30 has no model.safetensors", "leave its step out with --steps"),
    ),
    "zero-byte checkpoint file": (
        lambda w: _truncate(w / "full" / "checkpoint-20" / "model.safetensors", 0),
        EXTRAPOLATE,
        ("checkpoint-20/model.safetensors: unreadable", "corrupt or truncated", "leave its step out with --steps"),
    ),
    "truncated checkpoint header": (
        lambda w: _truncate(w / "full" / "checkpoint-20" / "model.safetensors", 20),
        EXTRAPOLATE,
        ("checkpoint-20/model.safetensors: unreadable", "corrupt or truncated", "--steps"),
    ),
    "NaN in a checkpoint": (
        lambda w: _edit(w / "full" / "checkpoint-30" / "model.safetensors", lambda t: _poison(t, "norm.weight")),
        EXTRAPOLATE.replace("relex", "linear"),
        ("checkpoint-30/model.safetensors", "'norm.weight' has NaN or Inf", "leave its step out with --steps"),
    ),
    "NaN in a checkpoint (analyze)": (
        lambda w: _edit(w / "full" / "checkpoint-30" / "model.safetensors", lambda t: _poison(t, "layer.a.weight")),
        ANALYZE,
        ("checkpoint-30/model.safetensors", "'layer.a.weight' has NaN or Inf", "--steps"),
    ),
    "checkpoint shape differs from the base": (
        lambda w: _edit(
            w / "full" / "checkpoint-20" / "model.safetensors", lambda t: _set(t, "layer.a.weight", torch.zeros(9, 6))
        ),
        EXTRAPOLATE,
        ("checkpoint-20: layer.a.weight has shape (9, 6)", "--base must be the model this run started from"),
    ),
    "only .bin weights": (
        lambda w: (
            (w / "full" / "checkpoint-30" / "model.safetensors").unlink(),
            torch.save({}, w / "full" / "checkpoint-30" / "pytorch_model.bin"),
        ),
        EXTRAPOLATE,
        ("checkpoint-30 holds only .bin weights", "convert them to safetensors"),
    ),
    # --base
    "base is missing": (None, EXTRAPOLATE.replace("{w}/base", "{w}/nobase"), ("--base", "not a local model directory")),
    "base has no weights": (
        lambda w: (w / "base" / "model.safetensors").unlink(),
        EXTRAPOLATE,
        ("--base", "has no model.safetensors", "save_pretrained"),
    ),
    "base file truncated": (
        lambda w: _truncate(w / "base" / "model.safetensors"),
        EXTRAPOLATE,
        (
            "base/model.safetensors: unreadable",
            "corrupt or truncated",
            "--base must be the model this run started from",
        ),
    ),
    "base lacks a tensor": (
        lambda w: _edit(w / "base" / "model.safetensors", lambda t: t.pop("norm.weight")),
        EXTRAPOLATE,
        ("different tensors", "'norm.weight'", "--base must be the model this run started from"),
    ),
    "base shard index is not an object": (
        lambda w: (_shard_base(w), (w / "base" / "model.safetensors.index.json").write_text("[]")),
        EXTRAPOLATE,
        ("model.safetensors.index.json holds a JSON list, not an object", "--base must be"),
    ),
    "base shard index without weight_map": (
        lambda w: (_shard_base(w), (w / "base" / "model.safetensors.index.json").write_text('{"metadata": {}}')),
        EXTRAPOLATE,
        ("model.safetensors.index.json has no weight_map", "--base must be"),
    ),
    "base shard missing": (
        lambda w: (_shard_base(w), (w / "base" / "model-00002-of-00002.safetensors").unlink()),
        EXTRAPOLATE,
        ("model-00002-of-00002.safetensors is missing", "the shard index names it", "--base must be"),
    ),
    # LoRA checkpoints
    "adapter_config.json is not an object": (
        lambda w: (w / "lora" / "checkpoint-20" / "adapter_config.json").write_text("[1, 2]"),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("checkpoint-20/adapter_config.json holds a JSON list", "leave its step out with --steps"),
    ),
    "adapter_config.json missing": (
        lambda w: (w / "lora" / "checkpoint-20" / "adapter_config.json").unlink(),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("no adapter_config.json", "--steps"),
    ),
    "LoRA A and B ranks disagree": (
        lambda w: _edit(
            w / "lora" / "checkpoint-20" / "adapter_model.safetensors",
            lambda t: _set(t, "base_model.model.layer.a.lora_A.weight", torch.zeros(3, 6)),
        ),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("checkpoint-20: layer.a.weight has lora_A of shape (3, 6)", "do not multiply", "--steps"),
    ),
    "Inf in a LoRA factor": (
        lambda w: _edit(
            w / "lora" / "checkpoint-10" / "adapter_model.safetensors",
            lambda t: _set(t, "base_model.model.layer.b.lora_B.weight", torch.full((6, 2), float("inf"))),
        ),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("checkpoint-10/adapter_model.safetensors", "has NaN or Inf", "--steps"),
    ),
    "adapters of one run adapt other modules": (
        lambda w: _edit(
            w / "lora" / "checkpoint-20" / "adapter_model.safetensors",
            lambda t: [t.pop(f"base_model.model.layer.b.lora_{f}.weight") for f in "AB"],
        ),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("checkpoint-20 adapts other modules", "leave the odd steps out with --steps"),
    ),
    "adapted module missing from the base": (
        lambda w: _edit(w / "base" / "model.safetensors", lambda t: t.pop("layer.b.weight")),
        EXTRAPOLATE.replace("{run}", "{w}/lora"),
        ("adapted module layer.b.weight is not in the base", "--base must be the model this run started from"),
    ),
    "full and LoRA checkpoints mixed": (
        lambda w: (
            shutil.rmtree(w / "full" / "checkpoint-30"),
            shutil.copytree(w / "lora" / "checkpoint-30", w / "full" / "checkpoint-30"),
        ),
        EXTRAPOLATE,
        ("mixes full checkpoints", "pick one kind with --steps"),
    ),
    # values of the options
    "--steps names a missing step": (
        None,
        EXTRAPOLATE + " --steps 10 40",
        ("step(s) [40] not found", "available steps"),
    ),
    "--target-step negative": (None, EXTRAPOLATE.replace("100", "-5"), ("--target-step -5", "predict ahead of it")),
    "--target-step before the last (analyze)": (
        None,
        ANALYZE + " --target-step 20",
        ("--target-step 20 is before the last checkpoint (step 30)", "predict ahead of it"),
    ),
    "--fit-window 1": (None, EXTRAPOLATE + " --fit-window 1", ("--fit-window 1", "use 2 or more")),
    "--fit-window 0 (analyze)": (None, ANALYZE + " --fit-window 0", ("--fit-window 0", "use 2 or more")),
    "--holdout negative": (None, ANALYZE + " --holdout -1", ("--holdout -1", "must be >= 0")),
    "--alpha zero": (None, EXTRAPOLATE + " --alpha 0", ("--alpha 0.0", "finite number > 0")),
    "--as-adapter on a full run": (None, EXTRAPOLATE + " --as-adapter", ("--as-adapter needs a LoRA run", "drop")),
    "--out exists": (lambda w: (w / "out").mkdir(), EXTRAPOLATE, ("--out", "already exists", "choose a new path")),
    "--out under a file": (
        lambda w: _mkfile(w / "file"),
        EXTRAPOLATE.replace("{w}/out", "{w}/file/out"),
        ("--out", "file is a file", "choose another path"),
    ),
    "--out is a file (analyze)": (
        lambda w: _mkfile(w / "out"),
        ANALYZE,
        ("--out", "is a file", "pass a directory"),
    ),
    "--out under a file (analyze)": (
        lambda w: _mkfile(w / "file"),
        ANALYZE.replace("{w}/out", "{w}/file/out"),
        ("--out", "is a file", "choose another path"),
    ),
    # argparse errors: one line too, with the --help hint
    "--method unknown": (
        None,
        EXTRAPOLATE.replace("relex", "cubic"),
        ("--method", "invalid choice: 'cubic'", "--help"),
    ),
    "--method next (not streamable)": (None, EXTRAPOLATE.replace("relex", "next"), ("--method", "'next'", "--help")),
    "--target-step not a number": (None, EXTRAPOLATE.replace("100", "soon"), ("--target-step", "'soon'", "--help")),
    "required options missing": (None, "extrapolate {w}/full", ("required", "--base", "--help")),
    "unknown option": (None, EXTRAPOLATE + " --bogus", ("unrecognized arguments: --bogus", "--help")),
    "unknown subcommand": (None, "fly", ("invalid choice: 'fly'", "--help")),
    # demo
    "demo --out is a file": (lambda w: _mkfile(w / "out"), "demo --out {w}/out", ("--out", "is a file", "directory")),
    "demo --seed negative": (None, "demo --seed -1 --out {w}/out", ("--seed -1", "--seed 0")),
    "demo --seed not a number": (None, "demo --seed x --out {w}/out", ("--seed", "'x'", "--help")),
}


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse
        return int(exit.code)


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_line(work, capsys, case):
    mutate, command, expected = CLI_CASES[case]
    if mutate is not None:
        mutate(work)
    snapshot = sorted(p.relative_to(work) for p in work.rglob("*"))
    argv = command.replace("{run}", "{w}/full").replace("{w}", str(work)).split()
    capsys.readouterr()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    *before, line = err.strip().splitlines()
    assert all("%|" in progress for progress in before), err  # only tqdm bars may come before the error line
    assert line.startswith("rlvr-extrap"), line
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == snapshot, "bad input wrote or removed files"


def test_nothing_is_written_when_a_late_tensor_is_bad(work):
    """The NaN sits in the last tensor read: every other tensor was written by then, into the temporary dir only."""
    last = sorted(SHAPES)[-1]
    _edit(work / "full" / "checkpoint-30" / "model.safetensors", lambda t: _poison(t, last))
    argv = EXTRAPOLATE.replace("{run}", "{w}/full").replace("{w}", str(work)).split()
    assert run_cli(argv) == 2
    assert not (work / "out").exists()
    assert not list(work.glob(".out.tmp-*"))


def test_good_input_still_works(work, capsys):
    """The fixtures are valid: only the mutation makes each case fail."""
    for run in ("full", "lora"):
        argv = EXTRAPOLATE.replace("{run}", f"{{w}}/{run}").replace("{w}", str(work)).split()
        argv[-1] += f"-{run}"
        assert run_cli(argv) == 0, capsys.readouterr().err
    assert (work / "out-full" / "model.safetensors").is_file() and (work / "out-lora" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# extrap_state.safetensors: load_state and apply_offsets


def _peft_model(hidden: int = 32, trainable: bool = True):
    torch.manual_seed(0)
    model = get_peft_model(
        Qwen2ForCausalLM(tiny_config(20, hidden_size=hidden)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    if not trainable:
        model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def state_file(tmp_path_factory) -> Path:
    modules = find_lora_modules(_peft_model())
    g = torch.Generator().manual_seed(0)
    offsets = {
        name: LowRank(torch.randn(m.base_weight.shape[0], 1, generator=g), torch.randn(1, m.base_weight.shape[1]))
        for name, m in modules.items()
    }
    state = CallbackState(offsets, [0, 10], {}, {"snapshot_steps": [0, 10], "jumps": []})
    return save_state(state, tmp_path_factory.mktemp("state"))


def _state_variant(tmp_path: Path, state_file: Path, kind: str) -> Path:
    path = tmp_path / "extrap_state.safetensors"
    if kind == "truncated":
        path.write_bytes(state_file.read_bytes()[:-50])
    elif kind == "other safetensors":
        _write(path, {"x": torch.zeros(2)})
    elif kind == "metadata missing":
        save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "rlvr_extrap.state.v1"})
    elif kind == "factor missing":
        tensors = load_file(state_file)
        tensors.pop(next(k for k in tensors if k.endswith(".right")))
        save_file(tensors, str(path), metadata={"format": "rlvr_extrap.state.v1", "steps": "[0]", "history": "{}"})
    return path


STATE_CASES = {
    "no state file in the dir": (
        FileNotFoundError,
        ("no extrap_state.safetensors here", "output_dir or checkpoint-N/"),
    ),
    "truncated": (ValueError, ("corrupt or truncated", "earlier checkpoint-N/")),
    "other safetensors": (ValueError, ("not an rlvr_extrap state file", "that ExtrapolationCallback wrote")),
    "metadata missing": (ValueError, ("damaged rlvr_extrap state", "'steps'", "earlier checkpoint-N/")),
    "factor missing": (ValueError, ("damaged rlvr_extrap state", ".right", "earlier checkpoint-N/")),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_load_state_bad_file(state_file, tmp_path, case):
    error, expected = STATE_CASES[case]
    path = tmp_path if case == "no state file in the dir" else _state_variant(tmp_path, state_file, case)
    with pytest.raises(error) as info:
        load_state(path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


APPLY_CASES = {
    "plain model, no LoRA": (
        lambda: Qwen2ForCausalLM(tiny_config(20)),
        ("no trainable LoRA layer", "is_trainable=True"),
    ),
    "adapter loaded frozen": (lambda: _peft_model(trainable=False), ("no trainable LoRA layer", "is_trainable=True")),
    "other base model (shapes)": (
        lambda: _peft_model(hidden=64),
        ("has shape (32, 32)", "base weight has (64, 64)", "load the base model the run trained"),
    ),
    "other LoRA modules": (
        lambda: get_peft_model(Qwen2ForCausalLM(tiny_config(20)), LoraConfig(r=2, target_modules=["k_proj"])),
        ("does not have as trainable LoRA layers", "load the adapter the offsets were saved with"),
    ),
}


@pytest.mark.parametrize("case", list(APPLY_CASES))
def test_apply_offsets_refuses_a_mismatched_model_untouched(state_file, case):
    make, expected = APPLY_CASES[case]
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        apply_offsets(model, state_file.parent)
    message = str(info.value)
    assert "\n" not in message and str(state_file.parent) in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "a failed apply_offsets changed weights"


def test_apply_offsets_good_model(state_file):
    assert apply_offsets(_peft_model(), state_file.parent) == len(load_state(state_file).offsets)


# ---------------------------------------------------------------------------------------------------------------
# A real GRPOTrainer whose LoRA base layers cannot take a jump: refused at train begin, before any step


class _WrappedWeight(torch.Tensor):
    """Stands for a quantized or otherwise wrapped weight (torchao and the like): a tensor subclass."""


def _base_weight(layer: torch.nn.Module) -> torch.nn.Parameter:
    return layer.get_base_layer().weight


UNEDITABLE: dict[str, tuple[Callable[[torch.nn.Module], None], tuple[str, ...]]] = {
    "int8 base weight": (
        lambda layer: setattr(
            layer.get_base_layer(),
            "weight",
            torch.nn.Parameter(_base_weight(layer).detach().to(torch.int8), requires_grad=False),
        ),
        ("torch.int8, not a floating-point tensor", "load the base model unquantized"),
    ),
    "wrapped base weight": (
        lambda layer: setattr(
            layer.get_base_layer(),
            "weight",
            torch.nn.Parameter(_base_weight(layer).detach().as_subclass(_WrappedWeight), requires_grad=False),
        ),
        ("_WrappedWeight, not a plain tensor", "load the base model unquantized"),
    ),
    "trainable base weight": (
        lambda layer: _base_weight(layer).requires_grad_(True),
        ("trainable (requires_grad=True)", "keep the base model frozen"),
    ),
    "DoRA": (lambda layer: layer.use_dora.update(default=True), ("uses DoRA", "use_dora=False")),
}


@pytest.mark.parametrize("case", list(UNEDITABLE))
def test_a_base_layer_that_cannot_take_a_jump_is_refused_at_train_begin(tmp_path, case):
    change, expected = UNEDITABLE[case]
    trainer = make_trainer(
        tmp_path,
        [ExtrapolationCallback()],
        max_steps=4,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
    )
    name, layer = next((n, m) for n, m in trainer.model.named_modules() if n.endswith("layers.1.mlp.up_proj"))
    change(layer)
    with pytest.raises(NoLoraAdapterError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and f"LoRA module {name} cannot take an extrapolated update" in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert trainer.state.global_step == 0  # refused before the first step, not at the jump


def test_an_offloaded_base_weight_is_refused():
    model = _peft_model()
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    layer.get_base_layer().weight = torch.nn.Parameter(torch.empty(32, 32, device="meta"), requires_grad=False)
    with pytest.raises(NoLoraAdapterError, match=r"v_proj cannot take .* on the meta device .*no device_map"):
        find_lora_modules(model)


# ---------------------------------------------------------------------------------------------------------------
# recipes/grpo.py, run in-process (parse errors come before any training)


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("grpo_recipe", ROOT / "recipes" / "grpo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_char_tokenizer()
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _files(w: Path, tiny: Path) -> None:
    (w / "unknown.yaml").write_text("model_name_or_path: toy\nlearning_rat: 1.0e-5\n")
    (w / "broken.yaml").write_text("model_name_or_path: [toy\n")
    (w / "list.yaml").write_text("- model_name_or_path\n")
    (w / "columns.jsonl").write_text('{"problem": "1+1", "solution": "2"}\n')
    (w / "broken.jsonl").write_text('{"question": "1+1", "answer": "2"}\n{broken\n')
    (w / "empty.jsonl").write_text("")
    (w / "model.bin").write_text("x")
    gguf = shutil.copytree(tiny, w / "gguf-flagged")  # what a GGUF checkpoint's config says: the weights are quantized
    config = json.loads((gguf / "config.json").read_text())
    (gguf / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gguf"}}))
    truncated = shutil.copytree(tiny, w / "truncated")  # an interrupted download or copy
    with (truncated / "model.safetensors").open("r+b") as weights:
        weights.truncate(1000)


RECIPE_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "--config missing file": (
        "--config {w}/nope.yaml",
        ("--config", "nope.yaml: no such file", "recipes/toy_arithmetic.yaml"),
    ),
    "--config without a path": ("--config", ("--config needs the path of a YAML file",)),
    "--config unknown key": ("--config {w}/unknown.yaml", ("unknown.yaml", "['learning_rat']", "fix the spelling")),
    "--config broken YAML": ("--config {w}/broken.yaml", ("broken.yaml is not valid YAML", "line 2", "fix the file")),
    "--config not a mapping": ("--config {w}/list.yaml", ("list.yaml must be a YAML mapping",)),
    "unknown flag": ("--bogus_flag 1", ("unknown argument(s) ['--bogus_flag', '1']", "--help")),
    "flag of the wrong type": ("--lora_r many", ("--lora_r", "invalid int value: 'many'", "--help")),
    "--lora_r 0": ("--lora_r 0", ("--lora_r 0", "positive integer")),
    "--max_train_rows negative": ("--max_train_rows -2", ("--max_train_rows -2", "must be >= 1")),
    "--extrap_method unknown": ("--extrap_method cubic", ("extrap_method='cubic'", "choose one of")),
    "--extrap_jump_at before two snapshots": (
        "--extrap_method relex --extrap_jump_at 5",
        ("extrap_jump_at=[5]", "jump at step >= 10"),
    ),
    "GRPOConfig invalid": (
        "--per_device_train_batch_size 3 --num_generations 2",
        ("invalid training settings", "divisible by num_generations"),
    ),
    "--model_name_or_path missing dir": (
        "--model_name_or_path {w}/no-model",
        ("--model_name_or_path", "no-model: no such directory", "local model directory"),
    ),
    "--model_name_or_path is a file": ("--model_name_or_path {w}/model.bin", ("model.bin is a file", "hub id")),
    "--model_name_or_path GGUF-flagged": (
        "--model_name_or_path {w}/gguf-flagged",
        ("gguf-flagged: the model is quantized (gguf) and cannot be trained", "load plain weights"),
    ),
    "--model_name_or_path with truncated weights": (
        "--model_name_or_path {w}/truncated",
        ("truncated: cannot load the model (SafetensorError", "corrupt or incomplete: save or download it again"),
    ),
    "--dataset missing file": (
        "--model_name_or_path {tiny} --dataset {w}/nope.jsonl",
        ("--dataset", "nope.jsonl: no such file", ".json/.jsonl"),
    ),
    "--dataset empty file": ("--model_name_or_path {tiny} --dataset {w}/empty.jsonl", ("empty.jsonl is empty",)),
    "--dataset broken JSON": (
        "--model_name_or_path {tiny} --dataset {w}/broken.jsonl",
        ("--dataset", "broken.jsonl: cannot load it", "one JSON object per line"),
    ),
    "--dataset without the columns": (
        "--model_name_or_path {tiny} --dataset {w}/columns.jsonl",
        ("columns.jsonl", "['answer', 'question'] not found", "--question_field / --answer_field"),
    ),
    "--lora_target_modules the model lacks": (
        "--model_name_or_path {tiny} --dataset "
        + str(ROOT / "tests/fixtures/gsm8k_tiny.jsonl")
        + " --lora_target_modules nope_proj --per_device_train_batch_size 4 --num_generations 4",
        ("nope_proj", "--lora_target_modules"),
    ),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_recipe_bad_input_is_one_line(recipe, tiny_model_dir, tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _files(tmp_path, tiny_model_dir)
    command, expected = RECIPE_CASES[case]
    argv = command.replace("{w}", str(tmp_path)).replace("{tiny}", str(tiny_model_dir)).split()
    argv += ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none", "--max_steps", "1"]
    if command == "--config":  # the path is missing: --config must come last
        argv = argv[1:] + ["--config"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        recipe.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("grpo.py: error: "), line
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert not (tmp_path / "out").exists()
