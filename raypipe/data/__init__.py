"""Data: sources -> canonical manifest -> splits -> image cache -> torch datasets."""
