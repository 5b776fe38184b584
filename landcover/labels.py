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
