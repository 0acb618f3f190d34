"""Knowledge base: the fault-case schema, the content-addressed media store and a sample KB generator.

The `KnowledgeBase` façade is in :mod:`knowledge_base.kb` (not imported here: it pulls in the vector store).
"""

from knowledge_base.media_store import MediaError, MediaStore, StoredMedia
from knowledge_base.schema import Case, CaseInput, CaseLink, EvalQuery, MediaInput, MediaItem, media_id, slugify

__all__ = [
    "Case",
    "CaseInput",
    "CaseLink",
    "EvalQuery",
    "MediaError",
    "MediaInput",
    "MediaItem",
    "MediaStore",
    "StoredMedia",
    "media_id",
    "slugify",
]
