"""Shipping models: promotion to the MLflow Model Registry and the pyfunc that serves them."""
