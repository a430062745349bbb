"""Co-design search: Optuna studies over model hyperparameters x hardware mapping."""
