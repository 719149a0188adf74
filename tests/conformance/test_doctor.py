"""torchshim doctor: every hook ok on the installed torch, and drift is detected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torchshim
from torchshim.doctor import HookStatus, hook_report


def test_every_expected_hook_is_ok_on_the_installed_torch() -> None:
    report = torchshim.hook_report()
    assert report.supported
    bad = [(h.name, h.status.value, h.detail) for h in report.hooks if h.status.broken]
    assert not bad
    assert report.ok and report.broken_adaptors == []
    assert all(h.status is not HookStatus.UNEXPECTED or not h.adaptors for h in report.hooks)


def test_report_serialises() -> None:
    data = hook_report().to_json()
    assert data["ok"] is True and data["series"] == str(torchshim.torch_series())
    json.dumps(data)


DRIFT = textwrap.dedent(
    """
    import sys
    import torch._inductor.codecache as codecache
    # a hook that disappears
    del codecache.FxGraphCache._lookup_graph
    # a hook whose signature changes
    def compiled_fx_graph_hash(gm, example_inputs, fx_kwargs, inputs_to_check, new_flag=False):
        raise NotImplementedError
    codecache.compiled_fx_graph_hash = compiled_fx_graph_hash
    # a hook that moves to another module
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.utils as inductor_utils
    inductor_utils.graph_returns_tuple = compile_fx.graph_returns_tuple
    del compile_fx.graph_returns_tuple
    from torchshim.cli import main
    sys.exit(main(["doctor", "--json"]))
    """
)


def test_doctor_detects_removed_resigned_and_moved_hooks() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", DRIFT], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    by_name = {h["name"]: h for h in report["hooks"]}
    assert by_name["FxGraphCache._lookup_graph"]["status"] == "missing"
    resigned = by_name["compiled_fx_graph_hash"]
    assert resigned["status"] == "signature changed" and "new_flag" in resigned["detail"]
    moved = by_name["graph_returns_tuple"]
    assert moved["status"] == "moved"
    assert moved["found_at"] == ["torch._inductor.utils.graph_returns_tuple"]
    assert report["ok"] is False
    assert report["broken_adaptors"] == ["inductor", "inductor_standalone"]
    assert by_name["compile_fx"]["status"] == "ok"
