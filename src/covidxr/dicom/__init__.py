"""Results as DICOM for hospital systems: a Comprehensive SR and a Secondary Capture of the Grad-CAM overlay
per classified image (`covidxr predict --dicom-out`), and a round trip with a DICOMweb server
(`covidxr dicomweb`). Research and teaching only; every object says it is not for clinical use."""
