"""occsynth: synthetic occlusion sets and occlusion annotations from COCO-format data.

Generating data needs no deep-learning stack: this package never imports torch or bcnet.
"""
__version__ = "0.1.0"
