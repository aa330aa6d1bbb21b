"""After a jump the next generation uses the new weights: checked through TRL's own vLLM sync check.

vLLM needs a GPU, so a stand-in for TRL's ``VLLMGeneration`` records what each ``sync_weights`` call
would send (the live merged weights) and returns sampled completions; everything else, including the
``state.global_step != _last_loaded_step`` check that decides when to sync, is TRL's real code.
In TRL 1.16 that check fires at every new step anyway; the callback also resets ``_last_loaded_step``
so that a jump is synced even where a step does not move ``global_step`` past the last sync.
With ``merged=True`` the stand-in reads the weights through TRL's own ``VLLMGeneration._iter_named_params``
(merge the adapter, read the base weights under vLLM's names, unmerge): what vLLM would receive, in the base's dtype.
"""

from __future__ import annotations

import random

import torch
import transformers
from grpo_utils import WeightProbe, make_trainer, tiny_model
from trl.distributed import DistributedBackend
from trl.generation.vllm_generation import VLLMGeneration

from rlvr_extrap import ExtrapolationCallback
from rlvr_extrap.experiments.toy.tokenizer import build_char_tokenizer
from rlvr_extrap.runtime.lora import find_lora_modules


class FakeVLLMGeneration:
    def __init__(self, trainer, tokenizer, merged: bool = False) -> None:
        self.trainer, self.merged = trainer, merged
        self.tokens = [tokenizer.convert_tokens_to_ids(c) for c in "1234"] + [tokenizer.eos_token_id]
        self.rng = random.Random(0)
        self.syncs: list[tuple[int, dict[str, torch.Tensor]]] = []

    def sync_weights(self) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if self.merged:  # TRL's own reading of the merged weights, with only the engine left out
            trl = VLLMGeneration.__new__(VLLMGeneration)
            trl.model, trl._dist = model, DistributedBackend(self.trainer.accelerator)
            weights = {name: w.clone() for name, w in trl._iter_named_params()}
        else:
            weights = {n: m.effective_weight() for n, m in find_lora_modules(model).items()}
        self.syncs.append((self.trainer.state.global_step, weights))

    def generate(self, prompts, images, num_generations, profiler):
        with profiler:
            ids = [[self.rng.choice(self.tokens) for _ in range(3)] for _ in prompts]  # prompts come repeated
        return None, ids, [[[-1.0] for _ in seq] for seq in ids], None


class LoadedStep(transformers.TrainerCallback):
    def __init__(self, trainer) -> None:
        self.trainer, self.at = trainer, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.at[state.global_step] = self.trainer._last_loaded_step


def test_next_generation_after_a_jump_syncs_the_jumped_weights(tmp_path):
    before, after = WeightProbe(), WeightProbe()
    callback = ExtrapolationCallback()
    trainer = make_trainer(
        tmp_path,
        [before, callback, after],
        max_steps=6,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
        extrap_horizon=4,
    )
    fake = FakeVLLMGeneration(trainer, trainer.processing_class)
    trainer.use_vllm, trainer.vllm_generation, trainer.vllm_importance_sampling_correction = True, fake, False
    trainer._last_loaded_step = -1  # as GRPOTrainer.__init__ sets it with use_vllm=True
    loaded = LoadedStep(trainer)
    trainer.add_callback(loaded)
    trainer.train()

    assert callback.jumps[0].step == 4 and callback.jumps[0].applied
    assert loaded.at[4] == -1 and loaded.at[3] == 2  # the jump forced a re-sync; TRL's own bookkeeping otherwise
    synced = dict(fake.syncs)
    assert sorted(synced) == [0, 1, 2, 3, 4, 5]  # one sync per generation, before it
    for name, weight in after.at[4].items():  # the generation of step 5 was sent the jumped weights
        assert torch.equal(synced[4][name], weight)
    assert any(not torch.equal(synced[4][n], before.at[4][n]) for n in before.at[4])


def test_vllm_receives_the_jump_held_as_an_offset_on_a_bf16_base(tmp_path):
    """TRL merges the adapter before it streams the weights: the offset beside the LoRA path is merged with it."""
    before, after = WeightProbe(), WeightProbe()
    callback = ExtrapolationCallback()
    tokenizer = build_char_tokenizer()
    trainer = make_trainer(
        tmp_path,
        [before, callback, after],
        model_and_tokenizer=(tiny_model(tokenizer).to(torch.bfloat16), tokenizer),
        max_steps=6,
        extrap_method="linear",
        extrap_jump_at=[4],
        extrap_snapshot_every=2,
        extrap_horizon=16,  # a jump well above bfloat16's resolution, so that vLLM's copy can show it
    )
    fake = FakeVLLMGeneration(trainer, trainer.processing_class, merged=True)
    trainer.use_vllm, trainer.vllm_generation, trainer.vllm_importance_sampling_correction = True, fake, False
    trainer._last_loaded_step = -1
    trainer.train()

    modules = find_lora_modules(trainer.accelerator.unwrap_model(trainer.model))
    assert callback.jumps[0].applied and all(m.offset is not None for m in modules.values())
    synced = dict(fake.syncs)[4]  # sent to the generation of step 5: the jumped model
    for name in after.at[4]:
        got = synced[name.removeprefix("base_model.model.") + ".weight"]
        assert got.dtype == torch.bfloat16
        jumped, pre = after.at[4][name], before.at[4][name]
        assert (got.float() - jumped).abs().max() <= 2**-8 * jumped.abs().max()  # bfloat16 rounding of W + sBA + offset
        assert (got.float() - jumped).norm() < 0.5 * (got.float() - pre).norm()  # nearer the jump than before it
