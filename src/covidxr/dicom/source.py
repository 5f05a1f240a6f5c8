"""What covidxr needs of a source DICOM instance, why it skips one, and the header its results inherit.

The same rules apply to a file given to `covidxr predict --dicom-out` and to an instance found on a
DICOMweb server (from the QIDO-RS search result, before anything is retrieved).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import Dataset
from pydicom.uid import UID

RADIOGRAPH_MODALITIES = ("CR", "DX")
REFERENCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Patient and study attributes of type 2 (present, possibly empty) that SR and SC creation copies.
PATIENT_AND_STUDY_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                            "ReferringPhysicianName", "StudyID", "AccessionNumber")


def sop_class_name(header: Dataset) -> str:
    """The SOP class's name ('Computed Radiography Image Storage'), or its UID when pydicom does not know it."""
    return UID(str(header.get("SOPClassUID", ""))).name or "no SOP class"


def frame_count(header: Dataset) -> int:
    try:
        return int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def skip_reason(header: Dataset, radiographs_only: bool) -> str | None:
    """Why this instance gets no result, from its header alone; None when it can be classified.
    `radiographs_only` also skips images whose modality is not CR or DX."""
    missing = [name for name in REFERENCE_UIDS if not header.get(name)]
    if missing:
        return f"lacks {', '.join(missing)}: a result could not be filed in its study"
    invalid = [name for name in REFERENCE_UIDS if not UID(str(header.get(name))).is_valid]
    if invalid:
        return f"invalid {', '.join(invalid)}: a result could not reference it"
    name = sop_class_name(header)
    if "Image Storage" not in name:
        return f"not an image ({name})"
    if "For Processing" in name:
        return f"a for-processing image ({name}): raw detector data, not meant for viewing"
    frames = frame_count(header)
    if frames > 1:
        return f"multi-frame ({frames} frames)"
    modality = str(header.get("Modality", "")) or "missing"
    if radiographs_only and modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality}: only radiographs ({', '.join(RADIOGRAPH_MODALITIES)}) are classified"
    return None


def evidence_header(dataset: Dataset) -> Dataset:
    """The source's attributes without its pixels, with absent type-2 patient and study attributes present
    and empty (as the standard allows), so the results file under the same patient and study."""
    header = Dataset()
    for element in dataset:
        if element.keyword != "PixelData":
            header.add(element)
    for keyword in PATIENT_AND_STUDY_TYPE_2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


@contextmanager
def quiet_about_headers() -> Iterator[None]:
    """pydicom and highdicom warn about odd header values by quoting them (a patient's name among them:
    highdicom does for any one-part name), so their warnings are silenced while covidxr reads sources and
    builds results. Also a decorator. (Python's warning filters are process-wide: not for threads racing.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
