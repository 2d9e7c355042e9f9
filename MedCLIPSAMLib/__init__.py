"""MedCLIP-SAM engine: text-prompted segmentation of medical images and volumes."""
__version__ = "0.1.0"
