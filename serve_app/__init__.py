"""animegan-serve: AnimeGANv2 (photo to anime-style picture) served on Ray Serve."""

__version__ = "0.1.0"
