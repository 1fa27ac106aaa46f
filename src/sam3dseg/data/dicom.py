"""Writing a volume as a DICOM image series (pydicom): a scanner-like CT or MR series to try the DICOM path on.

``sam3dseg predict`` reads DICOM series (SimpleITK) and writes DICOM SEG (:mod:`sam3dseg.pipeline.inference.export`);
this writes the series a SEG refers to from any volume, e.g. the real CT of ``sam3dseg anatomy --source ct``
(tests, and users without a PACS at hand). Needs the ``dicom`` extra (pydicom).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from ..common.files import atomic_output
from ..errors import UserError
from .volumes import Geometry

STORAGE = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}  # CT / MR Image Storage


def write_dicom_series(array: np.ndarray, geometry: Geometry, folder: Path, modality: str = "CT", patient: str = "sam3dseg^test") -> Path:
    """Write ``array`` ``(z, y, x)`` (integers within int16; HU for CT) as one single-frame file per slice,
    ``folder/slice0000.dcm`` .., with the geometry in each file's Image Plane module (orientation, position,
    pixel spacing) and fresh study, series and frame-of-reference UIDs. The folder is written whole under a
    temporary name, then renamed into place.

    DICOM stacks a series' slices along row × column: a left-handed grid (det(direction) < 0, e.g. the CT of
    ``--source ct``, its y axis flipped) reads back with its slices in reverse order and the slice axis
    negated, the same voxels in the same places."""
    try:
        import pydicom
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    except ImportError as err:
        raise UserError(f"writing DICOM needs pydicom: pip install 'sam3dseg[dicom]' ({err})") from None
    if modality not in STORAGE:
        raise ValueError(f"modality {modality}: one of {', '.join(STORAGE)}")
    if array.ndim != 3 or array.min() < -32768 or array.max() > 32767:
        raise ValueError(f"a (z, y, x) array within int16 is written, got shape {array.shape}")
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        for z, plane in enumerate(array.astype(np.int16)):
            ds = pydicom.Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = STORAGE[modality]
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = STORAGE[modality], ds.file_meta.MediaStorageSOPInstanceUID
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, patient, "", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = modality, 1, z + 1, 1
            ds.Manufacturer, ds.PositionReferenceIndicator = "sam3dseg", ""
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
            position = geometry.physical_points((0, 0, z))
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.PixelSpacing = [f"{geometry.spacing[1]:.6f}", f"{geometry.spacing[0]:.6f}"]  # rows (y), then columns (x)
            ds.SliceThickness = f"{geometry.spacing[2]:.6f}"
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = plane.shape
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            if modality == "CT":
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType, ds.KVP = "0", "1", "HU", ""
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
                ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = ""
            ds.PixelData = np.ascontiguousarray(plane).tobytes()
            ds.save_as(tmp / f"slice{z:04d}.dcm", enforce_file_format=True)
    return folder
