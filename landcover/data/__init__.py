"""Datasets and batched transforms: EuroSAT loading and splits, preprocessing and augmentation."""
