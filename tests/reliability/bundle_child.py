"""Write cache entries recorded with this interpreter's real key factors (torch build, device,
config, Python) and export them as a bundle: ``python bundle_child.py CACHE_DIR BUNDLE``. Run by
tests/reliability/test_bundle.py in this env and, where one is at hand, in another torch series'
env. No compile: the entries' files are small and known."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from torchshim.adaptors import make_adaptor
from torchshim.cache import CacheStore
from torchshim.cache.bundle import export_bundle

ENTRIES = ("aa" * 16, "bb" * 16)


def write_entries(cache_dir: Path) -> None:
    adaptor = make_adaptor("inductor")
    meta = {
        "build": adaptor.compute_hash(),
        "adaptor": adaptor.name,
        "factors": adaptor.compute_hash_factors(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    store = CacheStore(cache_dir)
    for number, entry_id in enumerate(ENTRIES):
        with store.writer(entry_id, f"key {number}") as writer:
            (writer.path / "code").mkdir()
            (writer.path / "code" / "module.py").write_bytes(b"x = %d\n" % number * 100)
            (writer.path / "kernel.so").write_bytes(bytes(range(256)) * 40)
            writer.commit({**meta, "runtime_shape": None if number == 0 else 4})
    store.close()


def main() -> int:
    cache_dir, bundle = Path(sys.argv[1]), Path(sys.argv[2])
    write_entries(cache_dir)
    export_bundle([CacheStore.open_existing(cache_dir)], bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
