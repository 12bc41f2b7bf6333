"""Behaviour of a trained model: generation (generate.py) and the metrics that score it.

Import the submodules directly (`from cfglab.evaluate.generate import generate`); this package
imports nothing itself, so loading one metric does not load the others.
"""
