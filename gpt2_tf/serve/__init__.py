"""Using a trained model: predictions from a run folder, SavedModel export, the browser app."""
