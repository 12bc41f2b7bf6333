"""Tests of cfglab.analyze: probes and attention statistics."""
