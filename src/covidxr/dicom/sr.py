"""A classification result as DICOM, written with highdicom: a Comprehensive SR and a Secondary Capture.

The SR is a TID 1500 Measurement Report holding one TID 1501 measurement group: the source image
(study, series, SOP instance), the algorithm (TID 4019: the model's name, version, weights hash,
threshold and temperature), P(COVID-19) and the operating threshold as numbers, the label at that
threshold as a coded qualitative evaluation, and the not-for-clinical-use statement as text. The SC is
the Grad-CAM overlay in RGB. Both copy the source's patient and study modules, so a PACS files them
under the same patient and study, each in a new series of its own.

UIDs are derived from the source instance and the model's weights hash: the same model on the same
image gives the same UIDs, so a second run finds its earlier results and a server never holds two.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import metadata

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from covidxr.dicom.source import patient_orientation
from covidxr.runs import NOT_FOR_CLINICAL_USE, InferenceContract

MANUFACTURER = "covidxr"
SCHEME = "99COVIDXR"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_SERIES_DESCRIPTION = "covidxr Grad-CAM overlay, not for clinical use"
THRESHOLD = Code("THRESHOLD", SCHEME, "Operating threshold on the probability")
LABEL = Code("LABEL", SCHEME, "Class at the operating threshold")
ASSUMPTIONS = Code("ASSUMPTIONS", SCHEME, "Operating point and prevalence the result assumes")
FINDINGS = {"covid": Code("840539006", "SCT", "COVID-19"), "pneumonia": Code("233604007", "SCT", "Pneumonia")}
"""SNOMED CT codes of the positive classes covidxr's label tables name; any other class gets a private code."""
CHEST_RADIOGRAPH = Code("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = Code("1", "UCUM", "no units")
SCORE_UNIT = Code("{score}", "UCUM", "score")
SEVERITY = {"extent": Code("SEVERITY-EXTENT", SCHEME, "COVID-19 geographic extent score (0-8, model output)"),
            "opacity": Code("SEVERITY-OPACITY", SCHEME, "COVID-19 opacity score (0-6, model output)")}
SEVERITY_ERROR = {name: Code(f"SEVERITY-{name.upper()}-MAE", SCHEME,
                               f"Cross-validated mean absolute error of the {name} score") for name in SEVERITY}
UNKNOWN_ORIENTATION_PLACEHOLDER = ("L", "F")  # given to highdicom, then emptied: never written


def software_version() -> str:
    try:
        return metadata.version("covidxr")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@dataclass(frozen=True)
class ModelIdentity:
    """What every result says about the model that made it (from the run's model.json)."""

    name: str
    version: str
    weights_sha256: str
    threshold: float
    threshold_rule: str
    temperature: float
    positive_class: str

    @classmethod
    def from_contract(cls, contract: InferenceContract) -> ModelIdentity:
        return cls(name=f"covidxr {contract.architecture['name']}", version=contract.created or "unknown",
                   weights_sha256=contract.weights_sha256, threshold=contract.threshold,
                   threshold_rule=contract.threshold_rule, temperature=contract.temperature,
                   positive_class=contract.positive_class)

    @property
    def finding(self) -> Code:
        """The SR's finding: the SNOMED CT code of the contract's positive class, else a private code naming it."""
        return FINDINGS.get(self.positive_class, Code(f"CLASS-{self.positive_class.upper()}"[:16], SCHEME,
                                                       self.positive_class))

    @property
    def probability_code(self) -> Code:
        """The NUM item that holds P(positive class)."""
        return Code(f"P-{self.positive_class.upper()}"[:16], SCHEME, f"Probability of {self.finding.meaning} "
                                                                      "(model output)")

    def parameters(self) -> list[str]:
        return [f"weights sha256 {self.weights_sha256}", f"threshold {self.threshold:.6g} ({self.threshold_rule}) "
                f"on P({self.positive_class})", f"temperature {self.temperature:.6g}",
                f"covidxr {software_version()}"]


@dataclass(frozen=True)
class Classification:
    """One image's result: P(positive class), the label at the threshold, and the threshold."""

    probability: float
    label: str
    threshold: float
    operating_point: str | None = None
    prevalence: float | None = None
    severity: dict | None = None

    @classmethod
    def from_prediction(cls, prediction: dict, positive_class: str) -> Classification:
        return cls(probability=float(prediction["probabilities"][positive_class]), label=prediction["label"],
                   threshold=float(prediction["threshold"]), operating_point=prediction.get("operating_point"),
                   prevalence=prediction.get("prevalence"), severity=prediction.get("severity"))

    def assumptions(self) -> str:
        """What the probability and the label assume: the operating point and the prevalence."""
        prevalence = "an unknown prevalence" if self.prevalence is None else f"prevalence {self.prevalence:.3g}"
        return f"operating point {self.operating_point or 'recorded'}, probability at {prevalence}"

    def measurements(self, model: ModelIdentity) -> list[hd.sr.Measurement]:
        """The probability and the threshold; with severity, each score and its cross-validated error (NUM items,
        unit {score})."""
        found = [hd.sr.Measurement(name=model.probability_code, value=self.probability, unit=NO_UNITS),
                 hd.sr.Measurement(name=THRESHOLD, value=self.threshold, unit=NO_UNITS)]
        for name in (SEVERITY if self.severity else {}):
            found += [hd.sr.Measurement(name=SEVERITY[name], value=self.severity[name], unit=SCORE_UNIT),
                      hd.sr.Measurement(name=SEVERITY_ERROR[name], value=self.severity["mae"][name], unit=SCORE_UNIT)]
        return found


@dataclass(frozen=True)
class ResultUIDs:
    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str

    tracking: str

    @classmethod
    def derive(cls, source: Dataset, model: ModelIdentity) -> ResultUIDs:
        """UIDs determined by the source study and instance and the model's weights."""
        study, instance = str(source.StudyInstanceUID), str(source.SOPInstanceUID)
        return cls(sr_series=derived_uid("sr-series", study, model.weights_sha256),
                   sr_instance=derived_uid("sr", instance, model.weights_sha256),
                   sc_series=derived_uid("sc-series", study, model.weights_sha256),
                   sc_instance=derived_uid("sc", instance, model.weights_sha256),
                   tracking=derived_uid("tracking", instance, model.weights_sha256))


def derived_uid(*parts: str) -> str:
    """A UID in the 2.25 form of a name-based (SHA-1) UUID of `parts`: the same parts, the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join(('covidxr',) + parts)).int}"


def _instance_number(source: Dataset) -> int:
    try:
        return max(1, int(source.get("InstanceNumber") or 1))
    except (TypeError, ValueError):
        return 1


def _private_code(value: str) -> Code:
    return Code(value, SCHEME, value)


def _common_attributes(model: ModelIdentity) -> dict:
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": model.name[:64],
            "software_versions": f"covidxr {software_version()}", "content_qualification": "RESEARCH",
            "coding_schemes": [CodingSchemeIdentificationItem(
                designator=SCHEME, name="covidxr local codes", responsible_organization="covidxr project")]}


def build_sr(source: Dataset, result: Classification, model: ModelIdentity) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one classified image; `source` is its header (see source.evidence_header)."""
    uids = ResultUIDs.derive(source, model)
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                              parameters=model.parameters(), manufacturer=MANUFACTURER)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking, identifier="covidxr classification"),
        finding_type=model.finding,
        algorithm_id=algorithm,
        measurements=result.measurements(model),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=LABEL, value=_private_code(result.label))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    for name, text in ((ASSUMPTIONS, result.assumptions()), (codes.DCM.Comment, NOT_FOR_CLINICAL_USE)):
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", model.weights_sha256),
            name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=model.name))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_RADIOGRAPH, imaging_measurements=[group])
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=uids.sr_series, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance, instance_number=_instance_number(source), is_complete=True,
        is_final=False, is_verified=False,
        series_description=f"covidxr {model.finding.meaning} classification, not for clinical use"[:64],
        **_common_attributes(model))


def build_sc(source: Dataset, overlay: np.ndarray, model: ModelIdentity) -> hd.sc.SCImage:
    """The Secondary Capture of an (H, W, 3) uint8 RGB overlay of the image `source` describes."""
    uids = ResultUIDs.derive(source, model)
    orientation = patient_orientation(source)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=overlay, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=uids.sc_series, series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance, instance_number=_instance_number(source),
        patient_orientation=orientation or UNKNOWN_ORIENTATION_PLACEHOLDER,
        series_description=SC_SERIES_DESCRIPTION, **_common_attributes(model))
    if orientation is None:
        image.PatientOrientation = None  # type 2: empty when unknown; highdicom only accepts a valid pair
    image.ImageComments = NOT_FOR_CLINICAL_USE
    image.BurnedInAnnotation = "NO"
    image.DerivationDescription = f"Grad-CAM of P({model.positive_class}) by {model.name}"[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = [reference]
    return image
