"""ASTRA Toolbox's projector pairs as optional backends: parallel beam in ``ParallelBeam``'s geometry, and cone
beam (``AstraConeBeam``, CUDA only) in ``ConeBeam``'s per-view vectors.

ASTRA's 2D projectors run on the CPU (``"linear"``: Joseph's ray-driven interpolation) or on a GPU (``"cuda"``);
forward and back-projection of one projector are each other's transposes. Its volume is placed where deepinv's
padding puts the image (half a pixel off the detector's centre when the two widths differ in parity) and its rows
run downwards, so that its sinograms are ``ParallelBeam``'s up to interpolation. Data cross to ASTRA as float32
numpy arrays, one plane at a time.
"""

from __future__ import annotations

import numpy as np
import torch

INSTALL = "pip install astra-toolbox"


def import_astra(device_type: str):
    """The ``astra`` module, or a clear error naming what is missing for ``device_type`` ("cpu" or "cuda")."""
    try:
        import astra
    except ImportError as missing:
        raise ImportError(
            f"backend='astra' needs the astra-toolbox package ({INSTALL}); or use backend='torch', the default."
        ) from missing
    if device_type == "cuda" and not astra.use_cuda():
        raise RuntimeError(
            "backend='astra' on CUDA tensors needs ASTRA built with CUDA and a GPU it can see (astra.use_cuda() is "
            "False); give CPU tensors or use backend='torch'."
        )
    return astra


def use_gpu_of(astra, device: torch.device) -> None:
    """Point ASTRA's CUDA projectors at ``device``'s GPU (ASTRA's own default is GPU 0 for every process, so the
    ranks of a node would all compute on one GPU); nothing for a CPU device."""
    if device.type == "cuda":
        astra.set_gpu_index(device.index if device.index is not None else torch.cuda.current_device())


class AstraParallelBeam:
    """ASTRA's parallel-beam pair for ``(P, W, W)`` planes and ``(P, detectors, angles)`` sinograms.

    :param angles_deg: ``(A,)`` angles in degrees.
    :param width: ``W``.
    :param detectors: the detector count (unit spacing, centred).
    :param before: the zero rows deepinv's padding puts before the image (places the volume).
    """

    def __init__(self, angles_deg: torch.Tensor, width: int, detectors: int, before: int):
        self.angles = np.deg2rad(angles_deg.detach().double().cpu().numpy())
        self.width, self.detectors = width, detectors
        low = before - (detectors - 1) / 2 - 0.5  # the image's left edge in detector units
        self.window = (low, low + width, -(low + width), -low)  # x from low, rows downwards
        self._projectors: dict[str, int] = {}

    def _projector(self, astra, device_type: str) -> int:
        if device_type not in self._projectors:
            volume = astra.create_vol_geom(self.width, self.width, *self.window)
            geometry = astra.create_proj_geom("parallel", 1.0, self.detectors, self.angles)
            kind = "cuda" if device_type == "cuda" else "linear"
            self._projectors[device_type] = astra.create_projector(kind, geometry, volume)
        return self._projectors[device_type]

    def project(self, planes: torch.Tensor) -> torch.Tensor:
        """``(P, W, W)`` to ``(P, detectors, angles)``, on ``planes``' device and dtype."""
        astra = import_astra(planes.device.type)
        use_gpu_of(astra, planes.device)
        projector = self._projector(astra, planes.device.type)
        out = []
        for plane in planes.detach().to("cpu", torch.float32).numpy():
            data, sinogram = astra.create_sino(np.ascontiguousarray(plane), projector)
            astra.data2d.delete(data)
            out.append(torch.from_numpy(sinogram.T.copy()))
        return torch.stack(out).to(device=planes.device, dtype=planes.dtype)

    def back_project(self, sinograms: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`project`: ``(P, detectors, angles)`` to ``(P, W, W)``."""
        astra = import_astra(sinograms.device.type)
        use_gpu_of(astra, sinograms.device)
        projector = self._projector(astra, sinograms.device.type)
        out = []
        for sinogram in sinograms.detach().to("cpu", torch.float32).numpy():
            data, image = astra.create_backprojection(np.ascontiguousarray(sinogram.T), projector)
            astra.data2d.delete(data)
            out.append(torch.from_numpy(image))
        return torch.stack(out).to(device=sinograms.device, dtype=sinograms.dtype)

    def close(self) -> None:
        """Frees ASTRA's projectors (also done when the operator is garbage collected)."""
        if self._projectors:
            import astra

            for projector in self._projectors.values():
                astra.projector.delete(projector)
            self._projectors.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: ASTRA may be gone already
            pass


class AstraConeBeam:
    """ASTRA's CUDA cone-beam pair for ``(P, D, H, W)`` volumes and ``(P, rows, columns, views)`` projections, in
    the geometry of ``vectors`` (ASTRA's ``cone_vec``, as :mod:`distinv.operators.cone_geometry` states it), one
    volume at a time as float32 arrays, on the GPU of the data (or the current one for CPU tensors).

    :raises ImportError: astra-toolbox is not installed; ``RuntimeError``: ASTRA has no CUDA or sees no GPU.
    """

    def __init__(self, vectors: torch.Tensor, volume_shape: tuple[int, int, int], detector_shape: tuple[int, int]):
        self.astra = import_astra("cuda")
        depth, height, width = volume_shape
        rows, columns = detector_shape
        self.volume_geometry = self.astra.create_vol_geom(height, width, depth)
        self.projection_geometry = self.astra.create_proj_geom("cone_vec", rows, columns, vectors.numpy())

    def _gpu(self, t: torch.Tensor) -> None:
        use_gpu_of(self.astra, t.device if t.is_cuda else torch.device("cuda", torch.cuda.current_device()))

    def project(self, volumes: torch.Tensor) -> torch.Tensor:
        self._gpu(volumes)
        out = []
        for volume in volumes.detach().to("cpu", torch.float32).numpy():
            data, projections = self.astra.create_sino3d_gpu(
                np.ascontiguousarray(volume), self.projection_geometry, self.volume_geometry
            )
            self.astra.data3d.delete(data)
            out.append(torch.from_numpy(np.ascontiguousarray(projections.transpose(0, 2, 1))))  # rows, columns, views
        return torch.stack(out).to(device=volumes.device, dtype=volumes.dtype)

    def back_project(self, projections: torch.Tensor) -> torch.Tensor:
        self._gpu(projections)
        out = []
        for views in projections.detach().to("cpu", torch.float32).numpy():
            data, volume = self.astra.create_backprojection3d_gpu(
                np.ascontiguousarray(views.transpose(0, 2, 1)), self.projection_geometry, self.volume_geometry
            )
            self.astra.data3d.delete(data)
            out.append(torch.from_numpy(volume))
        return torch.stack(out).to(device=projections.device, dtype=projections.dtype)
