"""What covidxr needs of a source DICOM instance, why it skips one, and the header its results inherit.

The same rules apply to a file given to `covidxr predict --dicom-out` and to an instance found on a
DICOMweb server (from the QIDO-RS search result, before anything is retrieved).
"""

from __future__ import annotations

from pydicom import DataElement, Dataset
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
    """The source's attributes without its pixels, as the results copy them, with hospitals' gaps filled:
    - absent type-2 patient and study attributes are present and empty (as the standard allows), so the results
      file under the same patient and study;
    - a one-component person name gets its trailing caret (`Doe` -> `Doe^`, the same name in DICOM PN), which
      highdicom otherwise warns about by quoting the name;
    - an empty, absent or invalid Patient Orientation stays empty in the SC: the standard allows it empty when
      unknown, and covidxr does not guess it (see sr.build_sc)."""
    header = Dataset()
    for element in dataset:
        if element.keyword != "PixelData":
            header.add(element)
    for keyword in PATIENT_AND_STUDY_TYPE_2:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    for element in list(header):
        if element.VR == "PN" and element.VM == 1 and element.value and "^" not in str(element.value):
            header[element.tag] = DataElement(element.tag, "PN", f"{element.value}^")  # a new element: the
            # source's own is shared, not copied
    return header


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is a valid pair of biped directions (`L`, `F`, `AL` ...),
    else None (empty or absent in many CR images: a type-2 attribute)."""
    value = header.get("PatientOrientation")
    if not value or isinstance(value, str) or len(value) != 2:
        return None
    pair = tuple(str(part) for part in value)
    return pair if all(part and set(part) <= set("ALPRHF") for part in pair) else None
