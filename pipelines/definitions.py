"""Everything in this project that Dagster loads: Python assets from ``defs/products.py``
and the YAML components under ``defs/``, merged by Dagster's defs-folder loader."""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent.parent)
