"""Processes the reliability tests start: they load damaged caches, race on one key, publish
until killed, and read read-only caches. Run as ``python faults.py MODE ARGS...``; each prints one
JSON line (or nothing, for the publisher that is killed)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ADAPTORS = ("inductor", "inductor_standalone")
BATCH = 5


def graph_and_inputs() -> tuple[Any, list[Any]]:
    import torch

    def f(x, w):  # type: ignore[no-untyped-def]
        h = torch.nn.functional.layer_norm(x @ w, (w.shape[1],))
        return torch.tanh(h) * 3 + x.sum(-1, keepdim=True)

    gen = torch.Generator().manual_seed(7)
    x, w = torch.randn(BATCH, 16, generator=gen), torch.randn(16, 24, generator=gen)
    return torch.fx.symbolic_trace(f), [x, w]


def available() -> list[str]:
    import torchshim

    caps = torchshim.capabilities()
    return [a for a in ADAPTORS if a == "inductor" or "supports_standalone_compile" in caps]


def compile_into(base: Path, adaptor_name: str) -> tuple[str, Any]:
    """Compile the test graph into ``base``; the handle (JSON) and the output."""
    from torchshim.adaptors import make_adaptor

    gm, args = graph_and_inputs()
    with make_adaptor(adaptor_name) as adaptor:
        adaptor.initialize_cache(base)
        fn, handle = adaptor.compile(gm, args, {}, runtime_shape=BATCH, key="reliability")
        if fn is None or handle is None:
            raise RuntimeError(f"{adaptor_name} did not compile/store the test graph")
        return handle.to_json(), fn(*args)


def load_or_recompile(base: Path, adaptor_name: str, handle: str) -> dict[str, Any]:
    """What an engine does at a warm start: load; on any LoadError, recompile. Reports which
    happened, whether the result is right, and what the store counted."""
    import torch

    import torchshim
    from torchshim.adaptors import make_adaptor

    gm, args = graph_and_inputs()
    want = gm(*args)
    out: dict[str, Any] = {"outcome": None, "error": None}
    try:
        with make_adaptor(adaptor_name) as adaptor:
            adaptor.initialize_cache(base)
            try:
                fn = adaptor.load(handle, gm, args, 0, runtime_shape=BATCH)
                out["outcome"] = "loaded"
            except torchshim.LoadError as exc:
                out["outcome"] = f"miss: {type(exc).__name__}"
                fn, _ = adaptor.compile(gm, args, {}, runtime_shape=BATCH, key="reliability")
            got = fn(*args)
            out["correct"] = bool(torch.allclose(got, want, atol=1e-5))
            store = adaptor.store
            out["counters"] = dict(store.counters) if store is not None else {}
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["trace"] = traceback.format_exc()[-2000:]
    return out


def mode_load_variants(spec_path: Path) -> dict[str, Any]:
    """Load each (damaged) cache copy named in the spec; see :func:`load_or_recompile`."""
    spec = json.loads(spec_path.read_text())
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and record.name.startswith("torchshim"):
                warnings.append(record.getMessage())

    logging.getLogger("torchshim").addHandler(Collect())
    results = {}
    for name, item in spec.items():
        before = len(warnings)
        result = load_or_recompile(Path(item["base"]), item["adaptor"], item["handle"])
        result["warnings"] = warnings[before:]
        quarantine = Path(item["base"]) / "quarantine"
        result["quarantined"] = len(list(quarantine.iterdir())) if quarantine.is_dir() else 0
        results[name] = result
    return results


def mode_race(base: Path, start_at: float) -> dict[str, Any]:
    """One of several processes compiling the same graph through the backend at once."""
    import torch

    import torchshim

    backend = torchshim.backend(base, compile_sizes=[BATCH], adaptor=sys.argv[4])
    gm, args = graph_and_inputs()
    while time.time() < start_at:  # line up with the other processes
        time.sleep(0.005)
    fn = backend(gm, args)
    got = fn(*args)
    return {
        "stats": backend.stats.as_dict(),
        "correct": bool(torch.allclose(got, gm(*args), atol=1e-5)),
        "pid": os.getpid(),
    }


def mode_publish_loop(base: Path, source: Path) -> None:
    """Publish the files of ``source`` (a real entry) as one entry, again and again, until
    killed: a SIGKILL lands at a random point of a save."""
    from torchshim.cache import CacheStore

    manifest = json.loads((source / "manifest.json").read_text())
    store = CacheStore(base)
    entry_id = manifest["id"]
    while True:
        with store.writer(entry_id, manifest["key"]) as writer:
            for rel in manifest["files"]:
                target = writer.path / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, target)
            writer.commit(manifest["meta"])
        store.remove(entry_id)  # as prune does (rename aside, then delete), and again


def mode_checkout_loop(base: Path, seconds: float) -> dict[str, Any]:
    """Check entries out again and again while another process prunes the store."""
    from torchshim.cache import CacheStore

    store = CacheStore(base)
    outcomes = {"hit": 0, "miss": 0, "errors": []}  # type: dict[str, Any]
    deadline = time.time() + seconds
    while time.time() < deadline:
        for entry in store.entries():
            try:
                copy = store.checkout(entry.id, {"build": "b"})
            except Exception as exc:
                outcomes["errors"].append(f"{type(exc).__name__}: {exc}")
                continue
            outcomes["hit" if copy is not None else "miss"] += 1
        store.close()
    outcomes["corrupt"] = store.counters["corrupt"]
    return outcomes


def mode_readonly(base: Path, handles_path: Path) -> dict[str, Any]:
    """In a read-only cache: hits load, a miss compiles in memory, nothing is written."""
    import torch

    from torchshim.adaptors import make_adaptor

    handles = json.loads(handles_path.read_text())
    results: dict[str, Any] = {}
    gm, args = graph_and_inputs()
    for adaptor_name, handle in handles.items():
        entry: dict[str, Any] = {}
        try:
            with make_adaptor(adaptor_name) as adaptor:
                adaptor.initialize_cache(base)
                entry["writable"] = adaptor.store.writable if adaptor.store else None
                fn = adaptor.load(handle, gm, args, 0, runtime_shape=BATCH)
                entry["hit_correct"] = bool(torch.allclose(fn(*args), gm(*args), atol=1e-5))
                other = [args[0][:3], args[1]]  # another batch size: a miss
                fn2, handle2 = adaptor.compile(gm, other, {}, runtime_shape=3, key="readonly-miss")
                entry["miss_correct"] = fn2 is not None and bool(
                    torch.allclose(fn2(*other), gm(*other), atol=1e-5)
                )
                entry["miss_handle"] = handle2 is not None
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["trace"] = traceback.format_exc()[-2000:]
        results[adaptor_name] = entry
    return results


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "load-variants":
        result: Any = mode_load_variants(Path(argv[2]))
    elif mode == "race":
        result = mode_race(Path(argv[2]), float(argv[3]))
    elif mode == "publish-loop":
        mode_publish_loop(Path(argv[2]), Path(argv[3]))
        return 0
    elif mode == "checkout-loop":
        result = mode_checkout_loop(Path(argv[2]), float(argv[3]))
    elif mode == "readonly":
        result = mode_readonly(Path(argv[2]), Path(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
