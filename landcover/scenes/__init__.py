"""Whole scenes: tiling and mapping, change between dates, rendering, GIS exports."""
