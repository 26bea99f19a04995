"""deepinv's own distributed test suite, run against distinv: the file deepinv installs
(``deepinv/tests/test_distributed.py``), unchanged, with ``deepinv.distributed``'s module names resolved to
distinv's by :mod:`distinv.deepinv_alias`.

    python tests/deepinv_suite/run.py            # every case this machine can run (GPU cases skip without GPUs)
    python tests/deepinv_suite/run.py -k backward -x   # any pytest arguments

The alias is installed at this script's top level: the suite spawns its ranks with multiprocessing's ``spawn``,
which re-runs this file (as ``__mp_main__``) in each rank before unpickling the rank's test function, so ranks
resolve the names as the parent does. DRUNet's pretrained weights, which the suite would download, are replaced by
fixed random ones in a temporary hub cache (:func:`seed_drunet_weights`). The cases left out (:data:`EXCLUDED`)
are listed with their reasons in the README's migration notes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import distinv.deepinv_alias

distinv.deepinv_alias.install()

# node id (relative to deepinv's tests folder) -> why the case is not part of the drop-in.
EXCLUDED: dict[str, str] = {
    f"test_distributed.py::test_processor_different_patch_sizes[{mode}-simple]": (
        "asserts deepinv's own limitation: a ValueError for a patch as large as the image (16 on a 16x16 image); "
        "distinv runs it, as one window"
    )
    for mode in ("cpu_single", "cpu_multi", "gpu_single", "gpu_multi")
}

# deepinv's file names for DRUNet's pretrained weights (colour, grey), which DRUNet() downloads from the hub.
DRUNET_WEIGHTS = {"drunet_deepinv_color_finetune_22k.pth": 3, "drunet_deepinv_gray_finetune_26k.pth": 1}


def suite_path() -> Path:
    """The installed ``test_distributed.py`` of deepinv; raises FileNotFoundError naming the fix."""
    import deepinv

    path = Path(deepinv.__file__).parent / "tests" / "test_distributed.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install deepinv 0.5 from its wheel (it ships its tests).")
    return path


def seed_drunet_weights(torch_home: Path) -> None:
    """Put DRUNet state dicts of fixed random weights (seed 0) in ``torch_home``'s hub cache under deepinv's file
    names, so that ``DRUNet()`` loads them instead of downloading (these tests run offline). The cases that use
    DRUNet compare the distributed network with the same network in one process, so any weights test the same."""
    import torch
    from deepinv.models import DRUNet

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name, channels in DRUNET_WEIGHTS.items():
        torch.manual_seed(0)
        network = DRUNet(in_channels=channels, out_channels=channels, pretrained=None)
        torch.save(network.state_dict(), checkpoints / name)


def main(argv: list[str]) -> int:
    import pytest

    path = suite_path()
    deselect = [arg for node in EXCLUDED for arg in ("--deselect", node)]  # node ids from the rootdir
    # -c /dev/null: deepinv's suite runs under its own defaults, not distinv's pytest settings.
    args = [str(path), "-c", "/dev/null", "--rootdir", str(path.parent), "-p", "no:cacheprovider", "-q", "-ra"]
    with tempfile.TemporaryDirectory(prefix="deepinv-suite-") as torch_home:
        seed_drunet_weights(Path(torch_home))
        os.environ["TORCH_HOME"] = torch_home  # the ranks the suite spawns inherit it
        return pytest.main([*args, "--timeout", "300", *deselect, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
