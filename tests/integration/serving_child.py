"""One start of a CUDA model through torchshim with served sizes (for test_serving_gpu): prints
one JSON line with what the backend did, the kernel builds it saw, and the error against eager."""

from __future__ import annotations

import json
import sys

import torch

import torchshim
from torchshim.demo import _count_builds
from torchshim.options import BackendOptions

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[2]))

from tests.integration.test_serving_gpu import CHEAP, SIZES, _model


def main() -> None:
    model = _model()
    shim = torchshim.shims.active().module
    before = shim.compile_counters()
    options = BackendOptions(cache_dir=sys.argv[1], compile_sizes=SIZES, compiler_config=CHEAP)
    fast = torchshim.compile(model, options)
    errors = []
    with _count_builds() as builds, torch.no_grad():
        fast(torch.randn(3, 64, device="cuda"))
        for batch in (1, 2, 4, 8, 11):
            x = torch.randn(batch, 64, device="cuda")
            errors.append(float((fast(x) - model(x)).abs().max()))
    after = shim.compile_counters()
    stats = fast.backend.stats
    record = {
        "compiled": stats.compiled,
        "loaded": stats.loaded,
        "captured": sorted(stats.serving.captured),
        "capture_seconds": stats.serving.capture_seconds,
        "builds": len(builds),
        "fx_misses": after.get("inductor.fxgraph_cache_miss", 0)
        - before.get("inductor.fxgraph_cache_miss", 0),
        "max_err": max(errors),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
