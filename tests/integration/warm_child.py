"""One process of the warm-start tests: builds the model in ``<dir>/warm_model.py`` (written by the
test, so that a test can edit its source), compiles it with ``torchshim.compile`` and prints what
happened as one JSON line: Dynamo's frame count, compiles, loads, whether a saved trace was used,
whether every batch's output equals eager.

    python warm_child.py MODEL_DIR CACHE_DIR [--dim N] [--dtype float64] [--seq N] [--config K=V]

The model runs on ``TORCHSHIM_TEST_DEVICE`` (``cpu`` unless set; the GPU run sets ``cuda``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("cache_dir")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seq", type=int, default=4)
    parser.add_argument("--config", default="")
    parser.add_argument("--sizes", default="1,4")
    args = parser.parse_args()
    sys.path.insert(0, args.model_dir)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch
    import warm_model  # type: ignore[import-not-found]

    import torchshim
    from torchshim.shims import active

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    device = os.environ.get("TORCHSHIM_TEST_DEVICE", "cpu")
    tol = 1e-4 if device == "cpu" else 2e-3  # kernels tuned per size differ in summation order
    model = warm_model.Model(args.dim).to(device=device, dtype=dtype).eval()
    config = dict([args.config.split("=")]) if args.config else {}
    config = {k: v == "True" for k, v in config.items()}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tunings = _count_tunings()
    fast = torchshim.compile(model, args.cache_dir, compile_sizes=sizes, compiler_config=config)
    same = True
    with torch.no_grad():
        for batch in (3, 1, 4, 2, 7):
            x = torch.randn(batch, args.seq, args.dim, dtype=dtype, device=device)
            same &= bool(torch.allclose(fast(x), model(x), atol=tol, rtol=tol))
    stats = fast.backend.stats.as_dict()
    counters = active().module.compile_counters()
    # whether anything so far imported Inductor's compiler (a direct load does not)
    compiler_imported = "torch._inductor.compile_fx" in sys.modules
    # a call the saved guards refuse (another sequence length) runs through a Dynamo trace
    with torch.no_grad():
        x = torch.randn(2, args.seq + 1, args.dim, dtype=dtype, device=device)
        refused_same = bool(torch.allclose(fast(x), model(x), atol=tol, rtol=tol))
        # an attribute the trace read as a constant, changed at run time: the saved guards (which
        # keep value guards; only identity guards are left out) refuse it, and it is traced
        model.scale = 0.25
        x = torch.randn(2, args.seq, args.dim, dtype=dtype, device=device)
        changed_same = bool(torch.allclose(fast(x), model(x), atol=tol, rtol=tol))
    print(
        "RESULT "
        + json.dumps(
            {
                "frames": counters.get("stats.unique_graphs", 0),
                "compiled": stats["compiled"],
                "loaded": stats["loaded"],
                "direct_loads": stats["direct_loads"],
                "compiler_imported": compiler_imported,
                "trace_loaded": stats["trace_loaded"],
                "traces_saved": stats["traces_saved"],
                "same": same,
                "refused_same": refused_same,
                "changed_same": changed_same,
                "phases": stats["phases"],
                "tunings": tunings[0],
            }
        )
    )


def _count_tunings() -> list[int]:
    """A counter of the Triton kernels tuned at their first call in this process (Inductor's
    ``CachingAutotuner.benchmark_all_configs``, 2.5 - 2.15; never called on CPU)."""
    count = [0]
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except ImportError:  # no Triton
        return count
    original = CachingAutotuner.benchmark_all_configs

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        return original(self, *args, **kwargs)

    CachingAutotuner.benchmark_all_configs = counted  # type: ignore[method-assign]
    return count


if __name__ == "__main__":
    main()
