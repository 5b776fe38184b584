"""What every stage shares: the classes, the training configuration, inference defaults, metrics and calibration."""
