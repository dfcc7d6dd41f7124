"""Serving: the /predict contract, the model slot and its registry follower, the prediction
log, framework-free so the BentoML service and the benchmark's FastAPI peer share it."""
