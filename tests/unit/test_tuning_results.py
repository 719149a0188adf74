"""Kernel tuning results (Inductor's ``.best_config`` files) found in an entry's directory, and a
loaded graph's statically launched kernels pointed at the directory it was loaded from.

Inductor writes tuning results on CUDA only (a kernel with several candidate configurations is
tuned at its first call); the GPU run of tests/integration/test_warm_start.py checks that a warm
process tunes nothing. Here: the file layout, and the real ``AutotuneCache`` and
``TritonBundler.load_autotuners`` of the installed torch (2.8+), whose paths are moved."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from torchshim.shims import active
from torchshim.shims._tuning import relocate_static_autotuners, static_autotuners_relocated

STATIC = (
    "torch._inductor.triton_bundler.TritonBundler.load_autotuners" in active().module.PATCH_TARGETS
)


def test_tuning_results_are_the_best_config_files_beside_the_kernels(tmp_path: Path) -> None:
    kernels = tmp_path / "inductor" / "ab"
    kernels.mkdir(parents=True)
    (kernels / "k.py").write_text("kernel")
    (kernels / "one.best_config").write_text("{}")
    (kernels / "deeper").mkdir()
    (kernels / "deeper" / "two.best_config").write_text("{}")  # not where Inductor writes
    (kernels / "link.best_config").symlink_to(kernels / "one.best_config")  # never followed
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "three.best_config").write_text("{}")
    assert active().module.tuning_result_files(str(tmp_path)) == ["inductor/ab/one.best_config"]
    assert active().module.tuning_result_files(str(tmp_path / "absent")) == []


@pytest.mark.skipif(not STATIC, reason="statically launched kernels come back pickled from 2.8")
def test_a_loaded_static_autotuner_finds_and_saves_its_result_where_it_was_loaded(
    tmp_path: Path,
) -> None:
    from torch._inductor.async_compile import CompiledTritonKernels
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    compiled_in = tmp_path / "tmp" / "stage-gone" / "inductor"
    loaded_in = str(tmp_path / "tmp" / "checkout-1" / "inductor")
    filename = str(compiled_in / "xy" / "cxyz.py")
    cache = AutotuneCache.create({"autotune_local_cache": True}, filename, "configs-hash")
    assert cache is not None and cache.local_cache is not None
    kernel = SimpleNamespace(filename=filename, save_cache_hook=cache.save, compile_results=[])
    result = SimpleNamespace(kernel=kernel, cache_key="torchshim-test-kernel", kernel_name="k")
    from torch._inductor.triton_bundler import TritonBundler

    original = vars(TritonBundler)["load_autotuners"]
    try:
        with static_autotuners_relocated(loaded_in):
            assert TritonBundler.load_autotuners([result]) == ["k"]  # type: ignore[list-item]
    finally:
        CompiledTritonKernels._cache.pop("torchshim-test-kernel", None)
    assert kernel.filename == os.path.join(loaded_in, "xy", "cxyz.py")
    saved = cache.local_cache[1]
    assert os.path.dirname(saved) == os.path.join(loaded_in, "xy")
    assert saved.endswith(".best_config")
    # the patch is gone after the block, and a second relocation changes nothing
    assert vars(TritonBundler)["load_autotuners"] is original
    assert relocate_static_autotuners([result], loaded_in) == 0
