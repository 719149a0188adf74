"""A CPU graph loaded without torch's loader: its generated module and its kernels, opened directly.

Torch's standalone loader spends about a quarter of a second on every CPU graph of a warm start,
most of it not loading: it imports Inductor's compiler (lowerings, decompositions, the GEMM
templates with their Jinja sources; about 1 s once per process), rebuilds a g++ command line per
kernel to find the kernel's shared object by its hash, runs g++ once for a precompiled header,
and unpickles the AOTAutograd and FX-graph entries. What a load must do is smaller: run the
generated Python module (the graph's ``call``) with each kernel's shared object opened, and call
it the way AOTAutograd's runtime wrapper does.

So, in the compiling process, right after the artifact is saved, :func:`plan_direct_load` reads
the two cache entries the compile wrote and writes a *plan* beside them (``direct/``) when the
graph is one whose runtime wrapper does nothing but call: an inference graph on CPU, with no
input mutated, no output aliasing an input or another output, no subclass, no RNG state, no
effect tokens, no constants lifted into the module, and only C++ kernels. The plan holds the
generated module with its imports of Inductor's compiler replaced by three small stand-ins
(``extern_kernels`` resolved to the ``torch`` functions it names, ``AsyncCompile`` opening the
kernels listed in the plan in call order, and ``align`` from ``torch._inductor.utils``, where
``memory_planning`` takes it from), the kernels' shared objects (found by their C++ source),
and what the wrapper does after the call (output count, dynamic dimensions
propagated to Dynamo, inputs whose alignment Inductor assumed). Anything else: no plan, and the
graph loads through torch's loader as before; the reason is returned.

:func:`direct_load` (in a warm process) runs the plan: no compiler import, no hashing, one
``dlopen`` per kernel. Any failure there is the caller's cue to fall back to torch's loader.

Holds for torch 2.8-2.15 (capability ``supports_direct_cpu_load``), where the generated CPU module,
the pybinding kernels (``PyInit_kernel``, ``_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR``) and the
inference runtime wrapper have this shape; the tests compare every output with torch's loader.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import pickle
import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torchshim._patching import patch_environ

PLAN_DIR = "direct"
PLAN_FILE = "direct/plan.json"
MODULE_FILE = "direct/module.py"
PLAN_VERSION = 1
_STAND_INS = "__torchshim_direct__"
_ENV_DATA_PTR = "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"
#: Inductor modules the generated code may import as they are: already imported by Dynamo.
_CHEAP_IMPORTS = frozenset({"torch._inductor.hooks", "torch._inductor.utils"})
#: Imports of Inductor's compiler and what replaces them (memory_planning re-exports utils' _align).
_REPLACED: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {
    ("torch._inductor.select_algorithm", (("extern_kernels", "extern_kernels"),)): (
        f"extern_kernels = {_STAND_INS}.extern_kernels"
    ),
    ("torch._inductor.async_compile", (("AsyncCompile", "AsyncCompile"),)): (
        f"AsyncCompile = {_STAND_INS}.AsyncCompile"
    ),
    ("torch._inductor.codegen.memory_planning", (("_align", "align"),)): (
        "from torch._inductor.utils import _align as align"
    ),
}


class _NotPlannable(Exception):
    """The graph needs more than a call at run time (or its files are not as expected)."""


# -- in the compiling process ------------------------------------------------------------------


def _one(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise _NotPlannable(f"{len(paths)} {what} entries where one was expected")
    return paths[0]


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise _NotPlannable(reason)


def _check_autograd_entry(entry: Any) -> dict[str, Any]:
    """What the runtime wrapper does after the call, or why it does more than that."""
    _require(getattr(entry, "compiled_bw", None) is None, "the graph has a backward")
    _require(getattr(entry, "maybe_subclass_meta", None) is None, "tensor subclass inputs")
    _require(not getattr(entry, "indices_of_inps_to_detach", None), "inputs are detached")
    for wrapper in getattr(entry, "dispatch_wrappers", None) or ():
        _require(
            not getattr(wrapper, "needs_post_compile", True),
            f"AOTAutograd's {type(wrapper).__name__} rewrites the arguments",
        )
    meta: Any = getattr(entry, "runtime_metadata", None)
    _require(meta is not None, "no runtime metadata")
    _require(not getattr(meta, "is_train", False), "a training graph")
    _require(meta.num_mutated_inp_runtime_indices == 0, "inputs mutated after the call")
    _require(
        not any(i.mutates_data or i.mutates_metadata for i in meta.input_info), "an input mutated"
    )
    _require(meta.num_outputs_aliased == 0, "an output aliases an input or another output")
    _require(meta.num_intermediate_bases == 0, "outputs are views of an intermediate")
    _require(not meta.tokens, "effect tokens")
    _require(not meta.is_rng_op_functionalized, "RNG state is threaded through the graph")
    _require(getattr(meta, "grad_enabled_mutation", None) is None, "the graph sets grad mode")
    _require(
        all(getattr(o.output_type, "name", "") == "non_alias" for o in meta.output_info),
        "an output is not a plain tensor of its own",
    )
    for item in getattr(meta, "subclass_inp_meta", None) or ():
        _require(
            isinstance(item, int) or type(item).__name__ == "PlainTensorMeta",
            "a subclass input",
        )
    dims = None
    if getattr(meta, "dynamic_outputs", False):
        dims = [
            None if o.dynamic_dims is None else sorted(o.dynamic_dims) for o in meta.output_info
        ]
    return {"num_outputs": int(meta.num_outputs), "dynamic_dims": dims}


def _check_fx_entry(graph: Any) -> dict[str, Any]:
    devices = set(getattr(graph, "device_types", ()) or ())
    _require(devices == {"cpu"}, f"devices {sorted(devices)}, not CPU alone")
    for name in ("constants", "frozen_param_names", "torchbind_constants", "mutated_inputs"):
        _require(not getattr(graph, name, None), f"the compiled graph has {name}")
    _require(getattr(graph, "cudagraph_info", None) is None, "CUDA graphs")
    _require(not getattr(graph, "partition_maps", None), "graph partitions")
    _require(not getattr(graph, "_defers_input_alignment", False), "deferred input alignment")
    bundle = getattr(graph, "_triton_bundle", None)
    _require(not getattr(bundle, "kernel_artifacts", None), "Triton kernels")
    source = getattr(graph, "source_code", None)
    _require(isinstance(source, str) and bool(source), "no generated module")
    checked = [int(i) for i in (getattr(graph, "inputs_to_check", None) or ())]
    return {"source": source, "inputs_to_check": checked}


def _rewrite(source: str) -> str:
    """The generated module with its imports of Inductor's compiler replaced by the stand-ins."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.Import):
            _require(
                not any(a.name.startswith("torch._inductor") for a in node.names),
                "the module imports Inductor",
            )
            continue
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
            "torch._inductor"
        ):
            continue
        module = node.module or ""
        if module in _CHEAP_IMPORTS:
            continue
        names = tuple((a.name, a.asname or a.name) for a in node.names)
        replacement = _REPLACED.get((module, names))
        _require(replacement is not None, f"the module imports {module} ({names})")
        _require(node.lineno == node.end_lineno, "a multi-line import")
        lines[node.lineno - 1] = f"{replacement}\n"
    for each in ast.walk(tree):
        if (
            isinstance(each, ast.Attribute)
            and each.attr == "_inductor"
            and isinstance(each.value, ast.Name)
            and each.value.id == "torch"
        ):
            raise _NotPlannable("the module calls into torch._inductor at run time")
    return "".join(lines)


def _extern_names(source: str) -> list[str]:
    import torch
    from torch._inductor.select_algorithm import extern_kernels

    names = sorted(set(re.findall(r"\bextern_kernels\.(\w+)", source)))
    for name in names:
        kernel = getattr(extern_kernels, name, None)
        _require(
            kernel is not None and getattr(torch, name, None) is kernel,
            f"extern kernel {name} is not torch.{name}",
        )
    return names


def _check_align() -> None:
    from torch._inductor import utils
    from torch._inductor.codegen import memory_planning

    _require(getattr(memory_planning, "_align", None) is utils._align, "Inductor's align moved")


class _Recorder:
    """``AsyncCompile`` at plan time: records each kernel's C++ source in call order."""

    def __init__(self) -> None:
        self.sources: list[str] = []

    def cpp_pybinding(self, argtypes: Sequence[str], source: str) -> None:
        self.sources.append(source)

    def wait(self, scope: Any) -> None:
        return None


def _kernel_sources(rewritten: str, externs: list[str]) -> list[str]:
    recorder = _Recorder()
    stand_ins = _stand_ins(lambda: recorder, externs)
    scope: dict[str, Any] = {"__name__": "torchshim_direct_plan", _STAND_INS: stand_ins}
    try:
        # torch's own generated module, from this process's compile
        exec(compile(rewritten, "<torchshim direct plan>", "exec"), scope)  # noqa: S102
    except Exception as exc:
        raise _NotPlannable(f"the module does not run with the stand-ins: {exc!r}") from exc
    _require(callable(scope.get("call")), "the module has no call()")
    return recorder.sources


def _kernel_files(root: Path, sources: list[str]) -> list[str]:
    cpp = {p: p.read_text(errors="replace") for p in sorted(root.rglob("*.cpp"))}
    found = []
    for source in sources:
        matches = {p for p, text in cpp.items() if text.startswith(source)}
        _require(len(matches) == 1, f"{len(matches)} C++ files hold one kernel's source")
        (match,) = matches
        shared = match.with_suffix(".so")
        _require(shared.is_file(), f"{shared.name} was not built")
        found.append(shared.relative_to(root.parent).as_posix())
    return found


def plan_direct_load(workdir: str, graph: Any) -> str | None:
    """Write ``direct/`` (the plan) into ``workdir``, the directory a standalone compile of
    ``graph`` wrote its cache into; returns ``None``, or why the graph must load through torch's
    loader."""
    root = Path(workdir) / "inductor"
    try:
        codegen = getattr(getattr(graph, "graph", None), "_codegen", None)
        # compile_fx flattens and rebuilds a pytree graph's inputs and outputs around the call
        _require(
            getattr(codegen, "pytree_info", None) is None, "the graph takes or returns a pytree"
        )
        autograd = _one(sorted(root.glob("aotautograd/*/*")), "AOTAutograd cache")
        fx = _one(sorted(root.glob("fxgraph/*/*/*")), "FX graph cache")
        try:
            entry = pickle.loads(autograd.read_bytes())
            compiled = pickle.loads(fx.read_bytes())
        except Exception as exc:
            raise _NotPlannable(f"the cache entries do not unpickle: {exc!r}") from exc
        info = getattr(getattr(entry, "compiled_fw", None), "fx_graph_cache_info", None)
        key = getattr(compiled, "_fx_graph_cache_key", None)
        _require(not info or not key or info[0] == key, "the entries are of different graphs")
        wrapper = _check_autograd_entry(entry)
        fx_info = _check_fx_entry(compiled)
        rewritten = _rewrite(fx_info["source"])
        externs = _extern_names(rewritten)
        _check_align()
        kernels = _kernel_files(root, _kernel_sources(rewritten, externs))
    except _NotPlannable as exc:
        return str(exc)
    plan = {
        "version": PLAN_VERSION,
        "kernels": kernels,
        "extern_kernels": externs,
        "inputs_to_check": fx_info["inputs_to_check"],
        **wrapper,
    }
    target = Path(workdir) / PLAN_DIR
    target.mkdir(exist_ok=True)
    (target / "module.py").write_text(rewritten)
    (target / "plan.json").write_text(json.dumps(plan, sort_keys=True))
    return None


# -- in a loading process ----------------------------------------------------------------------


class _KernelOpener:
    """``AsyncCompile`` at load time: each ``cpp_pybinding`` opens the plan's next shared object."""

    def __init__(self, files: list[Path], tag: str) -> None:
        self._files = iter(enumerate(files))
        self._tag = tag
        self.opened = 0

    def cpp_pybinding(self, argtypes: Sequence[str], source: str) -> Any:
        index, path = next(self._files)
        name = f"torchshim_direct_{self._tag}_{index}.kernel"  # PyInit_kernel
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
        if spec is None:
            raise ImportError(f"no module spec for {path}")
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        self.opened += 1
        return module.kernel

    def wait(self, scope: Any) -> None:
        return None


def _stand_ins(opener: Callable[[], Any], externs: list[str]) -> types.SimpleNamespace:
    import torch

    return types.SimpleNamespace(
        AsyncCompile=opener,
        extern_kernels=types.SimpleNamespace(**{n: getattr(torch, n) for n in externs}),
    )


def _dynamic_marker() -> Callable[[Any, set[int]], None]:
    from torch._functorch._aot_autograd import runtime_wrappers

    marker = getattr(runtime_wrappers, "mark_dynamo_propagated_dynamic_indices", None)
    if marker is not None:
        return marker  # type: ignore[no-any-return]

    def weak(t: Any, dims: set[int]) -> None:  # torch 2.8-2.13 spell it inline
        if hasattr(t, "_dynamo_weak_dynamic_indices"):
            t._dynamo_weak_dynamic_indices |= dims
        else:
            t._dynamo_weak_dynamic_indices = dims.copy()

    return weak


def direct_load(workdir: str) -> Callable[..., list[Any]]:
    """The graph planned in ``workdir``, callable as torch's artifact is (``fn(*args)`` → list of
    outputs). Raises on anything unexpected; the caller then loads through torch's loader."""
    import torch
    from torch._inductor.utils import ALIGNMENT, clone_preserve_strides

    base = Path(workdir)
    plan = json.loads((base / PLAN_FILE).read_text())
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(f"plan version {plan.get('version')!r}, expected {PLAN_VERSION}")
    files = [base / p for p in plan["kernels"]]
    # each kernel's PyInit reads the address of torch's tensor-data accessor from the environment
    data_ptr = getattr(torch._C._dynamo.guards, "_torchinductor_pyobject_tensor_data_ptr", None)
    environ = {_ENV_DATA_PTR: str(data_ptr)} if data_ptr is not None else {}
    opener = _KernelOpener(files, base.name.replace("-", "_")[:40])
    scope: dict[str, Any] = {
        "__name__": f"torchshim_direct_{base.name}",
        _STAND_INS: _stand_ins(lambda: opener, list(plan["extern_kernels"])),
    }
    # The generated module of a verified entry (checksummed, and signed where a key is set), as
    # torch's loader would import it from the same entry.
    source = (base / MODULE_FILE).read_text()
    with patch_environ(environ):  # the kernels open while the module runs
        exec(compile(source, str(base / MODULE_FILE), "exec"), scope)  # noqa: S102
    if opener.opened != len(files):
        raise ValueError(f"the module opened {opener.opened} of the plan's {len(files)} kernels")
    call = scope["call"]
    check = tuple(plan["inputs_to_check"])
    outputs = int(plan["num_outputs"])
    dims = plan["dynamic_dims"]
    marks = [(i, set(d)) for i, d in enumerate(dims) if d is not None] if dims else []
    mark = _dynamic_marker() if marks else None
    # as AOTAutograd's wrapper: autocast off inside if it was on at load, grad off for the call
    no_autocast = torch._C._is_any_autocast_enabled()
    set_grad = torch._C._set_grad_enabled

    def run(*args: Any) -> list[Any]:
        boxed = list(args)
        for i in check:
            item = boxed[i]
            if isinstance(item, torch.Tensor) and item.data_ptr() % ALIGNMENT:
                boxed[i] = clone_preserve_strides(item)
        grad = torch.is_grad_enabled()
        if grad:
            set_grad(False)
        try:
            if no_autocast:
                with torch._C._DisableAutocast():
                    result = call(boxed)
            else:
                result = call(boxed)
        finally:
            if grad:
                set_grad(True)
        outs = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(outs) != outputs:
            raise AssertionError(f"expected {outputs} outputs, got {len(outs)}")
        for i, d in marks:
            mark(outs[i], d)  # type: ignore[misc]
        return outs

    return run
