"""Files to pixels: decoding uploads, raw band values to EuroSAT's 8-bit stretch, scenes (GeoTIFF, band folders, SAFE, STAC)."""
