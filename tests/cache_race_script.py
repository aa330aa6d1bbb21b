"""Run by test_cache_build under ``torchrun --nproc_per_node 2`` with an empty ``RLVR_EXTRAP_CACHE``.

Both ranks join a gloo process group (as a GRPO script's ranks have by the time they load the model), then
call ``load_model("toy")`` at the same moment. Each writes ``OUTDIR/rank{R}.json``: whether it loaded, the
error if not, and a hash of the loaded weights.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from rlvr_extrap.experiments.models import load_model


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()  # both start on an empty cache together
    report: dict[str, object] = {"rank": rank}
    try:
        model, _ = load_model("toy")
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
        report["weights"] = digest.hexdigest()
    except Exception as err:
        report["error"] = f"{type(err).__name__}: {err}"
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
