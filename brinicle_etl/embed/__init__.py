"""Embed: texts to vectors (sentence-transformers or feature hashing), and precomputed vectors."""

from brinicle_etl.embed.base import Embedder, embed_unique
from brinicle_etl.embed.hashing import HashEmbedder
from brinicle_etl.embed.models import DEFAULT_MODEL, ModelRegistry, ModelSpec
from brinicle_etl.embed.sentence import SentenceTransformerEmbedder
from brinicle_etl.embed.vectors import parse_vectors, vector_digest

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "HashEmbedder",
    "ModelRegistry",
    "ModelSpec",
    "SentenceTransformerEmbedder",
    "embed_unique",
    "parse_vectors",
    "vector_digest",
]
