"""The ten EuroSAT land-cover classes, defined once for the whole project.

Label *indices* always follow this order (it is the alphabetical order of the official
``2750/<Class>/`` folders and of the Hub dataset ``timm/eurosat-rgb``).
"""

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)

# Human-readable descriptions; stored in config.json as timm's ``label_descriptions``.
EUROSAT_DESCRIPTIONS: dict[str, str] = {
    "AnnualCrop": "Annual crop fields",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous vegetation",
    "Highway": "Highway or major road",
    "Industrial": "Industrial buildings",
    "Pasture": "Pasture",
    "PermanentCrop": "Permanent crop (orchards, vineyards)",
    "Residential": "Residential buildings",
    "River": "River",
    "SeaLake": "Sea or lake",
}

# EuroSAT patches: 64 x 64 px of Sentinel-2 at 10 m ground sampling distance.
PATCH_SIZE_PX = 64
GROUND_SAMPLING_M = 10.0

# Fixed map colours (r, g, b), one per class, used by every scene map, legend and GeoTIFF colormap.
# Chosen after the usual land-cover conventions (CORINE-like greens for vegetation, blues for water,
# reds/purples for built-up) and to stay distinguishable from each other.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "AnnualCrop": (255, 211, 0),  # gold
    "Forest": (0, 100, 0),  # dark green
    "HerbaceousVegetation": (124, 205, 80),  # light green
    "Highway": (128, 128, 128),  # grey
    "Industrial": (170, 0, 170),  # purple
    "Pasture": (210, 170, 110),  # tan
    "PermanentCrop": (240, 120, 30),  # orange
    "Residential": (220, 30, 30),  # red
    "River": (60, 150, 255),  # light blue
    "SeaLake": (0, 40, 140),  # navy
}
