"""bcnet: BCNet bilayer mask heads (occluder + occludee) on torchvision detectors."""
__version__ = "0.1.0"
