"""Read and write image volumes: NIfTI, NRRD, MetaImage and DICOM series, as :class:`~pesf.io.volume.Volume`.

Every reader checks what the engine relies on and raises :class:`~pesf.errors.PesfError` with one line
naming the file and the problem: the file exists and is an image, it is 3D with one value per voxel, and it
holds no NaN or infinite value. Voxel values keep the file's data type; :func:`as_float32` converts.

SimpleITK is the only reader and writer of voxels here; the geometry conversion between SimpleITK
(``[k, j, i]`` arrays, row-major direction) and :class:`Volume` (``[i, j, k]`` arrays, direction columns
are axis directions) lives in :func:`sitk_to_volume` and :func:`volume_to_sitk` only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pesf.errors import PesfError
from pesf.io.atomic import atomic_path, split_extension
from pesf.io.volume import Volume

__all__ = [
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "as_float32",
    "describe_geometry_difference",
    "read_sitk_image",
    "read_volume",
    "sitk_to_volume",
    "volume_to_sitk",
    "write_volume",
]

logger = logging.getLogger(__name__)

#: File extensions :func:`read_volume` recognises (lower case); a folder is read as a DICOM series.
READ_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: File extensions :func:`write_volume` writes (single-file formats only, so the write can be atomic).
WRITE_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".mha")

_FORMATS_HINT = (
    "PESF reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series"
)

# numpy dtypes SimpleITK cannot hold, and what to store them as.
_SITK_DTYPE_FALLBACK = {np.dtype(bool): np.uint8, np.dtype(np.float16): np.float32}


def _extension(path: Path) -> str:
    return split_extension(path.name)[1].lower()


def _dicom_series_files(folder: Path, series_uid: str | None = None) -> list[str]:
    """File names of one DICOM series in ``folder``: ``series_uid``, else the series with the most files."""
    reader = sitk.ImageSeriesReader()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found" to stderr
    try:
        series_ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if not series_ids:
        raise PesfError(
            f"folder {folder} holds no DICOM series; give a folder of DICOM files or an image file"
        )
    if series_uid is not None:
        if series_uid not in series_ids:
            raise PesfError(f"DICOM series {series_uid} was not found in {folder}; check the DICOM files")
        return list(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    files = {sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    best = max(series_ids, key=lambda sid: len(files[sid]))
    if len(series_ids) > 1:
        logger.warning(
            "%s holds %d DICOM series; reading %s (%d files), the one with the most files",
            folder,
            len(series_ids),
            best,
            len(files[best]),
        )
    return files[best]


def _read_dicom_series(files: list[str], source: Path) -> sitk.Image:
    if len(files) == 1:
        return sitk.ReadImage(files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    logger.debug("read DICOM series of %d files from %s", len(files), source)
    return image


def _series_uid_of(path: Path) -> str | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    key = "0020|000e"  # Series Instance UID
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None


def read_sitk_image(path: str | os.PathLike[str], what: str = "image") -> sitk.Image:
    """Read an image file or DICOM series folder as a SimpleITK image, without checking its shape.

    Args:
        path: an image file, a DICOM folder, or one ``.dcm`` file of a series (the whole series is read).
        what: the word used for the file in error messages (``"image"``, ``"label map"``).

    Returns:
        The SimpleITK image as stored (any dimension and pixel type).

    Raises:
        PesfError: the path does not exist or cannot be read as an image.
    """
    path = Path(path)
    if not path.exists():
        raise PesfError(f"{what} {path} does not exist; check the path")
    try:
        if path.is_dir():
            return _read_dicom_series(_dicom_series_files(path), path)
        if _extension(path) == ".dcm":
            uid = _series_uid_of(path)
            if uid:
                files = _dicom_series_files(path.parent, uid)
                if len(files) > 1:
                    logger.info(
                        "%s is one file of a %d-file DICOM series; reading the series", path, len(files)
                    )
                return _read_dicom_series(files, path)
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        logger.debug("SimpleITK could not read %s: %s", path, exc)
        if path.is_file() and path.stat().st_size == 0:
            raise PesfError(f"{what} {path} is an empty file; export it again") from None
        raise PesfError(
            f"cannot read {what} {path}: the file is damaged or not an image; {_FORMATS_HINT}"
        ) from None


def _squeeze_trailing(image: sitk.Image) -> sitk.Image:
    """Drop trailing axes of length 1 beyond the third (e.g. NIfTI files stored as ``X x Y x Z x 1``)."""
    while image.GetDimension() > 3 and image.GetSize()[-1] == 1:
        size = list(image.GetSize())
        size[-1] = 0
        image = sitk.Extract(image, size, [0] * len(size))
    return image


def _check_3d_scalar(image: sitk.Image, source: str) -> None:
    shape = tuple(int(s) for s in image.GetSize())
    dim = image.GetDimension()
    if dim == 3 and 1 in shape:
        raise PesfError(f"{source} is 2D (shape {shape}, a single slice); PESF needs a 3D volume")
    if dim != 3:
        raise PesfError(f"{source} is {dim}D (shape {shape}); PESF needs a 3D volume")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise PesfError(
            f"{source} has {components} values per voxel (colour or vector image); "
            "PESF needs a scalar (grey-level) 3D volume"
        )


def _check_finite(array: np.ndarray, source: str) -> None:
    if np.issubdtype(array.dtype, np.complexfloating):
        raise PesfError(f"{source} has complex voxel values; PESF needs a real-valued volume")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise PesfError(
                f"{source} has {bad} NaN or infinite voxels; replace them (e.g. with the minimum intensity) "
                "before using it"
            )


def _check_nifti_raw_finite(path: Path) -> None:
    """Check a floating-point NIfTI file's stored voxels for NaN/inf (ITK hides them)."""
    import nibabel

    try:
        nii = nibabel.load(str(path))
    except Exception:  # SimpleITK read it; nibabel's opinion is not needed for the check
        logger.debug("nibabel could not open %s; NaN check skipped", path)
        return
    if nii.get_data_dtype().kind != "f":
        return
    _check_finite(np.asanyarray(nii.dataobj), f"image {path}")


def sitk_to_volume(image: sitk.Image, source: str = "image") -> Volume:
    """Convert a SimpleITK image to a :class:`Volume` (array ``[i, j, k]``, LPS geometry).

    Args:
        image: a 3D scalar SimpleITK image (a trailing axis of length 1 is dropped).
        source: how to name the image in error messages (usually its path).

    Returns:
        The volume; its array keeps the image's data type and is a transposed view (Fortran-ordered).

    Raises:
        PesfError: the image is not 3D, not scalar, or holds NaN or infinite values.
    """
    image = _squeeze_trailing(image)
    _check_3d_scalar(image, source)
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    _check_finite(array, source)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume(array, np.asarray(image.GetOrigin()), np.asarray(image.GetSpacing()), direction)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with the same voxels and geometry.

    Boolean arrays become ``uint8`` and ``float16`` becomes ``float32`` (types SimpleITK cannot hold).
    """
    array = volume.array
    fallback = _SITK_DTYPE_FALLBACK.get(array.dtype)
    if fallback is not None:
        array = array.astype(fallback)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)), isVector=False)
    image.SetOrigin(tuple(float(v) for v in volume.origin))
    image.SetSpacing(tuple(float(v) for v in volume.spacing))
    image.SetDirection(tuple(float(v) for v in volume.direction.reshape(-1)))
    return image


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D image: NIfTI, NRRD, MetaImage, a DICOM series folder, or one file of a DICOM series.

    A folder holding several DICOM series yields the series with the most files (a warning is logged).
    ITK's NIfTI reader silently replaces NaN and infinite voxels by 0, so floating-point NIfTI files are
    also checked on their raw voxels (with nibabel).

    Args:
        path: the image file or DICOM folder.

    Returns:
        The volume in the file's data type, array indexed ``[i, j, k]``, geometry in LPS.

    Raises:
        PesfError: the path is missing, not a readable image, not a scalar 3D volume, or holds NaN/inf.
    """
    path = Path(path)
    image = read_sitk_image(path, "image")
    volume = sitk_to_volume(image, f"image {path}")
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_raw_finite(path)
    logger.debug("read %s: shape %s, %s, spacing %s", path, volume.shape, volume.array.dtype, volume.spacing)
    return volume


def write_sitk_image(image: sitk.Image, path: str | os.PathLike[str], what: str = "image") -> Path:
    """Write a SimpleITK image atomically (compressed), choosing the format from the extension.

    Args:
        image: the image.
        path: a ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` file.
        what: the word used for the file in error messages.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PesfError: unsupported extension, missing output folder, or the write failed.
    """
    path = Path(path)
    ext = _extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise PesfError(
            f"cannot write {what} {path}: unsupported extension {ext or '(none)'}; use .nii.gz, .nii, .nrrd or .mha"
        )
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:
            logger.debug("SimpleITK could not write %s: %s", tmp, exc)
            raise PesfError(f"could not write {what} {path}; check free disk space and permissions") from None
    return path


def write_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a volume atomically as NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``) or MetaImage (``.mha``).

    Args:
        volume: the volume; its data type is kept (booleans are written as ``uint8``).
        path: the output file; its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        PesfError: unsupported extension, missing output folder, or the write failed.
    """
    return write_sitk_image(volume_to_sitk(volume), path, "image")


def as_float32(volume: Volume) -> Volume:
    """The same volume with ``float32`` voxels (no copy if it already is ``float32``)."""
    if volume.array.dtype == np.float32:
        return volume
    return volume.with_array(volume.array.astype(np.float32))


def describe_geometry_difference(a: Volume, b: Volume, tol: float = 1e-4) -> str:
    """Say in a few words how the grids of ``a`` and ``b`` differ (empty when they are the same).

    Args:
        a: the first volume (e.g. a label map).
        b: the second volume (e.g. the image).
        tol: the tolerance of :meth:`Volume.same_geometry`.

    Returns:
        E.g. ``"shape (10, 10, 5) vs (10, 10, 6); spacing [1, 1, 2] vs [1, 1, 1]"``.
    """

    def fmt(v: np.ndarray) -> str:
        return "[" + ", ".join(f"{x:.4g}" for x in np.asarray(v).reshape(-1)) + "]"

    parts = []
    if a.shape != b.shape:
        parts.append(f"shape {a.shape} vs {b.shape}")
    if not np.allclose(a.spacing, b.spacing, rtol=tol):
        parts.append(f"spacing {fmt(a.spacing)} vs {fmt(b.spacing)} mm")
    scale = max(1.0, float(np.abs(a.origin).max()))
    if not np.allclose(a.origin, b.origin, atol=tol * scale):
        parts.append(f"origin {fmt(a.origin)} vs {fmt(b.origin)} mm (LPS)")
    if not np.allclose(a.direction, b.direction, atol=tol):
        parts.append(f"direction {fmt(a.direction)} vs {fmt(b.direction)}")
    return "; ".join(parts)
