"""Test-set evaluation: bootstrap CIs by patient, calibration, subgroups."""
