"""Synthetic city generator (合成城市) for demos, tests and benchmarks.

``generate_city(buildings, seed)`` → layers as WGS84 GeoDataFrames; ``write_city`` → one
GeoPackage; ``cityops generate-city`` on the command line.
"""

from cityops.synth.generator import SyntheticCity, generate_city, write_city

__all__ = ["SyntheticCity", "generate_city", "write_city"]
