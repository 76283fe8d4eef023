"""Training: fit, evaluate, explain and register the four models in MLflow."""
