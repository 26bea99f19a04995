"""Measured scans in: both layouts (projection TIFFs with flat and dark fields and a geometry file; one .npz, .pt
or HDF5 file) read back the line integrals of just the views and rows asked for, with the geometry following
binning and a row range; the ct_scan problem reconstructs a scan with its reference at 1 and 2 ranks, each rank
reading only its own views (operator split) or its own detector rows (slabs), the two engines alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from distinv import ConeBeam
from distinv.bench.scans import open_scan, read_projections
from scans import VOXEL_MM, line_integrals, phantom, write_array_scan, write_tiff_scan
from test_sharded_pnp import SmallNet


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    files = {"tiff": write_tiff_scan(folder / "tiff")}
    for suffix in ("npz", "pt", "h5"):
        files[suffix] = write_array_scan(folder / f"scan.{suffix}")
    return files


@pytest.mark.parametrize("layout", ["tiff", "npz", "pt", "h5"])
def test_each_layout_reads_the_line_integrals_of_the_views_and_rows_asked_for(scan_files, layout):
    p, vectors, detector = line_integrals(24, 36)
    scan = open_scan(scan_files[layout], voxel_size=VOXEL_MM if layout == "tiff" else 1.0)
    assert scan.detector_shape == detector and len(scan.views) == 36
    assert torch.allclose(scan.vectors, vectors, atol=1e-9)  # the geometry file's mm in voxels
    views, rows = [0, 5, 35], (3, 20)
    assert torch.allclose(read_projections(scan, views, rows), p[views, 3:20], atol=1e-4)  # -log(flat/dark) too


def test_binning_view_steps_and_a_row_range_move_the_geometry_with_the_pixels(scan_files):
    scan = open_scan(scan_files["npz"], binning=2, view_step=3, rows=(2, 14))
    assert scan.detector_shape == (12, 18) and scan.views == tuple(range(0, 36, 3))
    op = ConeBeam.from_vectors(scan.vectors, (24, 24, 24), scan.detector_shape)
    projected = op.A(phantom(24))[0, 0].permute(2, 0, 1)
    measured = read_projections(scan, range(len(scan.views)))
    # a binned pixel is the mean of four rays, the operator's one ray through their centre: alike where smooth
    assert ((measured - projected).norm() / projected.norm()).item() < 0.03


def test_scans_the_reader_cannot_take_are_clear_errors(tmp_path, scan_files):
    np.savez_compressed(tmp_path / "packed.npz", sinogram=np.zeros((3, 4, 4)), vectors=np.zeros((3, 12)))
    with pytest.raises(ValueError, match="compressed.*numpy.savez"):
        open_scan(tmp_path / "packed.npz")
    np.savez(tmp_path / "short.npz", sinogram=np.zeros((3, 4, 4)), vectors=np.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"vectors of shape \(2, 12\)"):
        open_scan(tmp_path / "short.npz")
    with pytest.raises(ValueError, match=r"rows=\(0, 99\)"):
        open_scan(scan_files["npz"], rows=(0, 99))
    with pytest.raises(ValueError, match="binning=0"):
        open_scan(scan_files["npz"], binning=0)
    with pytest.raises(ValueError, match="no such file"):
        open_scan(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="scan_NNNNNN.tif"):
        open_scan(tmp_path / "empty")


def reconstruct_scan(ctx, engine_name: str, path: str):
    from distinv.bench.engines import build_engine
    from distinv.bench.problems import build
    from distinv.bench.spec import TilingSpec
    from distinv.denoisers.slicewise import SlicewiseDenoiser3D
    from distinv.pnp import pnp

    warnings.simplefilter("ignore")
    problem = build("ct_scan", path=path, num_operators=3)
    torch.manual_seed(3)
    model = SlicewiseDenoiser3D(SmallNet(1))
    engine = build_engine(engine_name, ctx, problem, model, TilingSpec(patch_size=8, overlap=2))
    with torch.no_grad():
        y = engine.measure(problem)
        x0 = engine.initial(problem, y)
        init = problem.psnr(engine.replicated(x0))
        x, records = pnp(
            "pgd", engine.physics, engine.denoiser, y, x0, sigma=0.02, iterations=2, step=0.5,
            ground_truth=engine.ground_truth(problem), ctx=ctx, data_range=problem.data_range,
        )  # fmt: skip
    local_rows = [t.local.shape[2] if hasattr(t, "local") else t.shape[2] for t in y]
    return engine.replicated(x), init, [r.psnr for r in records], local_rows, len(y)


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_scan_with_its_reference_reconstructs_alike_at_one_and_two_ranks_with_both_engines(
    ranks, scan_files, world_size
):
    path = str(scan_files["npz"])
    replicated = ranks(world_size).run(reconstruct_scan, "distinv", path)
    sharded = ranks(world_size).run(reconstruct_scan, "distinv-sharded", path)
    reference = replicated[0]
    assert reference[1] > 30  # FDK of the scan against its reference
    for x, init, psnrs, rows, count in sharded:
        assert ((x - reference[0]).norm() / reference[0].norm()).item() < 1e-5
        assert abs(init - reference[1]) < 1e-3
        assert max(abs(a - b) for a, b in zip(psnrs, reference[2], strict=True)) < 0.01
        assert count == 3 and (world_size == 1 or max(rows) < 32)  # every block, this rank's detector rows
    if world_size == 2:  # the operator split: each rank read its own blocks' views
        assert sorted(r[4] for r in replicated) == [1, 2]


@pytest.mark.usefixtures("test_models_importable")
def test_a_scan_without_a_reference_runs_end_to_end_scored_by_its_data_residual_and_written_slab_by_slab(
    tmp_path, scan_files
):
    import tifffile
    import yaml

    from distinv.bench.config import load_config
    from distinv.bench.report import write_report
    from distinv.bench.results import format_summary, read_rows, summarise
    from distinv.bench.runner import run_config

    params = {"path": str(scan_files["tiff"]), "voxel_size": VOXEL_MM, "num_operators": 2}
    raw = {
        "name": "scan",
        "output": str(tmp_path / "results"),
        "world_sizes": [2],
        "engines": ["distinv", "distinv-sharded"],
        "timeout_s": 300,
        "oversubscribe": True,
        "problems": [{"name": "ct_scan", "sizes": [24], "params": params}],
        "denoiser": {"model": "auto"},  # the shipped grey DRUNet, slice by slice
        "solver": {"algorithm": "pgd", "iterations": 3, "step": 0.5, "sigma": [0.05, 0.02]},
        "tiling": {"overlap": 4},
    }
    (tmp_path / "scan.yml").write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    assert run_config(load_config(tmp_path / "scan.yml"), out=lines.append, live=False) == 0, "\n".join(lines)
    results = tmp_path / "results"
    rows = [r for r in read_rows(results) if r.get("status") == "ok"]
    assert rows and all(r["psnr"] is None for r in rows)
    for engine in ("distinv", "distinv-sharded"):
        residuals = [r["measurement_residual"] for r in rows if r["engine"] == engine and r["rank"] == 0]
        assert len(residuals) == 3 and 0 < residuals[-1] < 0.2, residuals  # the start (FDK) is about 0.1
    summary = summarise(results)
    assert all(e["residual"] is not None for e in summary)
    assert "r=" in format_summary(summary)
    page = write_report(results).read_text()
    assert "data residual" in page
    for e in summary:
        slices = sorted((results / "reconstructions" / e["run_key"]).glob("slice_*.tif"))
        assert len(slices) == 24 and tifffile.imread(slices[0]).shape == (24, 24)
