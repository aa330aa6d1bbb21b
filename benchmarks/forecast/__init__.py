"""A regime map: when is a GRPO weight trajectory predictable? (issue 12, item 5)

Run it from the repository root as a folder (python runs its ``__main__.py``): ``python benchmarks/forecast
collect|analyze ...``; ``--help`` on either command lists its options.

    python benchmarks/forecast collect --workers 2   # train the grid, caching every run (resumable)
    python benchmarks/forecast analyze               # from the cache: forecast.{md,json,png}, forecast_records.json
    python benchmarks/forecast render --name forecast_smollm2   # only the md again, from the committed json

    # what this session ran (the machine was shared): large-batch runs at 256 completions x 100 steps
    python benchmarks/forecast collect --workers 2 --large-prompts 32 --large-steps 100
    python benchmarks/forecast analyze --note "..."  # --note: a paragraph for the md's top

    # SmolLM2 LoRA on math-add (steps_saved_smollm2's vanilla runs, then 16 prompts x 4 completions): one worker
    python benchmarks/forecast collect --model smollm2 --workers 1
    python benchmarks/forecast analyze --only 'smollm2-math-add_lr*_r16' --weights-only --name forecast_smollm2

    # full-parameter SmolLM2 (no LoRA), lr 1e-5, seeds 0 and 1, 60 steps each: one worker (8.1 GiB peak memory),
    # 270 MB of bf16 snapshot per 10 steps and the last 2 trainer checkpoints (1.6 GB each) per run
    python benchmarks/forecast collect --model smollm2-full --workers 1
    python benchmarks/forecast analyze --only _full_ --name forecast_smollm2_full   # its own map (regimes are
    # keyed by lr x completions: the file name is what says "full-parameter")

Scoring a run (every variant, both time axes, every origin and horizon, held-out accuracy of predictions
at a few (H, h)) takes minutes per run on a loaded 2-core machine; the scores are cached next to the run
(``scores_<key>.json``, keyed by the variants and the analysis grid), so a re-analysis only scores new runs.
``--rescore`` after changing an extrapolator's code; ``--only ID_PART`` (repeatable) restricts to some runs,
e.g. to score in two processes; ``--score-only`` writes no results.

``collect`` trains one GRPO run per ``RunSpec`` (learning rate x completions per step x seed) and saves,
per run, the merged LoRA deltas ``s*B@A`` (factored) every ``snapshot_every`` steps including step 0,
the held-out greedy accuracy at every snapshot and the learning rate of every optimizer step, in
``benchmarks/cache/forecast/<run id>/extrap_state.safetensors`` (``rlvr_extrap.runtime.state`` format; the
settings, accuracies and learning rates are its metadata). The file is written once, atomically, when
the run ends: a run in the cache is complete and is skipped on the next ``collect``; an interrupted
run resumes from its latest trainer checkpoint where its spec saves them (``save_every``), else restarts.
``analyze`` keeps the committed results' runs that the cache lacks (their summaries and records, marked with
the commit that scored them; ``--fresh`` drops them): the cache stays on the machine that trained it.

Schedule: the toy grid uses TRL's default linear decay to 0 at the last step (what users get); the SmolLM2
grids a constant rate (``RunSpec.lr_schedule``). Under a decay the fit
then has two time axes: optimizer steps, and the cumulative learning rate tau(t) (``lr_clock``),
along which the decay is undone. The cost: a run's trajectory depends on its length, so runs of
different lengths are not prefixes of each other.

Models (``MODELS``, grids in ``GRIDS``): ``toy`` (the embedded a+b model), ``smollm2`` (LoRA on ``math-add``,
the vanilla runs of ``steps_saved_smollm2.py`` and a second batch size) and ``smollm2-full`` (full-parameter);
the analysis reads any cached run (``--only 'smollm2-math-add_lr*_r16'`` for the LoRA map; constant rate:
there the two time axes agree).

Full-parameter runs (``RunSpec(lora_rank=None)``, grid ``smollm2-full``) have no factors: the trajectory is the
dense ``W_t - W_0`` of the linear modules LoRA would adapt, stored in bf16 one file per snapshot
(``DenseSnapshotRecorder``, ``<run>/snapshots/step-<N>.safetensors``; the state file then holds only steps and
history); the analysis loads them all (about 270 MB per SmolLM2 snapshot) and takes inner products in float32.

The stages, one module each: ``grids`` (the run grids, per-model settings, the cache's layout), ``recording``
(training runs that record their trajectories into the cache, and reading them back), ``scoring`` (forecasts,
backtests, true skill, held-out accuracy of predictions), ``summaries`` (per-regime skill, the gate's calls,
runs carried from the committed results), ``rendering`` (``analyze``: the results' markdown, plot and JSON), and
``__main__`` (the command line). The other benchmarks import them with ``benchmarks/`` on ``sys.path``
(``from forecast.recording import load_run``), as they import ``common``.
"""
