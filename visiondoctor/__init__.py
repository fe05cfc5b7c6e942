"""visiondoctor: train, evaluate and diagnose detection and segmentation models."""
__version__ = "0.1.0"
