"""raypipe: tune and ship pediatric wrist X-ray classifiers."""
__version__ = "0.1.0"
