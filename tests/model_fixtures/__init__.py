"""SavedModels built for the model server's tests: a small Keras classifier and TF Serving's half_plus_two."""
