"""quantsweep: layer-sensitivity sweeps and mixed-precision schemes for YOLO detectors."""

__version__ = "0.1.0"
