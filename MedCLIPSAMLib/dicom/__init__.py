"""DICOM as a way in and out: series checks before a read (``series``), DICOM SEG results (``seg``) and a
DICOMweb server (a PACS) as a cohort's source and store (``dicomweb``).

I/O layer: imports only ``errors``, ``outputs``, ``terminology`` and third-party DICOM libraries (pydicom,
highdicom, dicomweb-client), never the pipeline.
"""
