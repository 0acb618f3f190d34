"""Evaluation data: our JSONL eval sets, BEIR-style folders and ViDoRe's BEIR parquet layout.

Everything is loaded into one shape, :class:`EvalSet`: queries (:class:`EvalItem`, a validated
:class:`knowledge_base.schema.EvalQuery` plus the folder its media paths are relative to) and, where the
benchmark brings its own documents, a corpus (:class:`CorpusDoc`) that :mod:`eval.index` writes into a store.

Our format is one JSON object per line (the sample knowledge base writes it)::

    {"id": "q01", "kind": "image+text", "text": "What is this code?", "image": "queries/q01.jpg",
     "filters": {"product_line": "..."}, "relevant": {"prn-e204": 2, "prn-e202": 1},
     "reference_answer": "...", "key_facts": ["pickup roller"], "expect_abstain": false}

``relevant`` is graded (2 = the answer, 1 = related); out-of-KB questions have ``"expect_abstain": true`` and no
relevant cases. Media paths are relative to the JSONL file's folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import ValidationError

from knowledge_base.schema import EvalQuery
from rag.errors import UserInputError

logger = logging.getLogger(__name__)


class EvalDataError(UserInputError, ValueError):
    """An eval file that cannot be used; the message names the file and line."""

    code = "bad_eval_data"


@dataclass(frozen=True)
class EvalItem:
    """One query and the folder its media paths are relative to."""

    query: EvalQuery
    base: Path

    @property
    def id(self) -> str:
        return self.query.id

    @property
    def relevant(self) -> dict[str, int]:
        return {k: v for k, v in self.query.relevant.items() if v > 0}

    def media_path(self, rel: str | None) -> Path | None:
        return None if rel is None else (self.base / rel)

    def to_query(self, rerank: bool | None = None) -> Any:
        """The pipeline's :class:`rag.pipeline.Query` for this item (absolute media paths)."""
        from rag.pipeline import Query

        q = self.query
        images = [str(self.media_path(q.image))] if q.image else []
        video = str(self.media_path(q.video)) if q.video else None
        return Query(text=q.text or "", images=images, video=video, filters=dict(q.filters or {}), rerank=rerank)

    def missing_media(self) -> list[Path]:
        return [p for p in (self.media_path(self.query.image), self.media_path(self.query.video)) if p is not None and not p.is_file()]


@dataclass(frozen=True)
class CorpusDoc:
    """A benchmark document: text and/or one image (absolute path)."""

    id: str
    text: str = ""
    title: str = ""
    image: Path | None = None


@dataclass
class EvalSet:
    """Queries, plus the corpus when the benchmark brings one (else the queries refer to KB case ids)."""

    name: str
    items: list[EvalItem]
    corpus: list[CorpusDoc] | None = None
    #: Where the data came from (shown in reports) and a fingerprint of it (used to refuse resuming on other data).
    source: str = ""
    fingerprint: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def answerable(self) -> list[EvalItem]:
        return [it for it in self.items if not it.query.expect_abstain]

    @property
    def abstain(self) -> list[EvalItem]:
        return [it for it in self.items if it.query.expect_abstain]

    def subset(self, limit: int | None = None, ids: Iterable[str] | None = None, stratified: bool = True) -> "EvalSet":
        """The first ``limit`` items (or those with ``ids``); stratified keeps the abstain share of the full set.

        Stratifying matters for short smoke runs: the first rows of a file are often all of one kind.
        """
        items = self.items
        if ids is not None:
            wanted = set(ids)
            items = [it for it in items if it.id in wanted]
        if limit is not None and limit < len(items):
            if stratified:
                abst = [it for it in items if it.query.expect_abstain]
                ans = [it for it in items if not it.query.expect_abstain]
                n_abst = min(len(abst), max(1 if abst else 0, round(limit * len(abst) / len(items))))
                picked = {it.id for it in _spread(ans, limit - n_abst) + _spread(abst, n_abst)}
                items = [it for it in items if it.id in picked]
            else:
                items = items[:limit]
        return EvalSet(self.name, list(items), self.corpus, self.source, self.fingerprint, list(self.notes))


def _spread(items: list[EvalItem], n: int) -> list[EvalItem]:
    """``n`` items evenly spread over the list (keeps query kinds mixed when files are grouped by kind)."""
    if n <= 0:
        return []
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


# -- our JSONL format ----------------------------------------------------------------------------------------------
def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}:{n}: each line must be a JSON object")
            yield n, row


def load_jsonl(path: str | Path, *, check_media: bool = True) -> EvalSet:
    """Our eval JSONL (rows of :class:`EvalQuery`); media paths relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"eval file not found: {path}")
    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, row in iter_jsonl(path):
        try:
            q = EvalQuery.model_validate(row)
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'row'}: {err['msg']}" for err in e.errors())
            raise EvalDataError(f"{path}:{n}: {msgs}") from None
        if q.id in seen:
            raise EvalDataError(f"{path}:{n}: duplicate query id {q.id!r}")
        seen.add(q.id)
        item = EvalItem(q, path.parent)
        if check_media and (missing := item.missing_media()):
            raise EvalDataError(f"{path}:{n}: query {q.id}: media file not found: {missing[0]}")
        items.append(item)
    if not items:
        raise EvalDataError(f"{path}: no queries")
    h = hashlib.sha256()
    _hash_file(path, h)
    return EvalSet(path.stem, items, None, str(path), h.hexdigest()[:16])


# -- BEIR folders --------------------------------------------------------------------------------------------------
def read_qrels_tsv(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels: ``query-id<TAB>corpus-id<TAB>score`` with a header row; scores ≤ 0 are not relevant."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (n == 1 and not _is_number(row[-1])):
                continue
            if len(row) < 3:
                raise EvalDataError(f"{path}:{n}: expected query-id, corpus-id, score separated by tabs")
            qid, did, score = row[0].strip(), row[1].strip(), row[-1].strip()
            if not _is_number(score):
                raise EvalDataError(f"{path}:{n}: score {score!r} is not a number")
            if float(score) > 0:
                qrels.setdefault(qid, {})[did] = int(round(float(score)))
    return qrels


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _make_items(queries: dict[str, dict[str, Any]], qrels: dict[str, dict[str, int]], base: Path, where: str) -> list[EvalItem]:
    """BEIR queries that have judgements (the others cannot be scored, as in BEIR's own evaluation)."""
    items = []
    for qid, q in queries.items():
        rel = qrels.get(qid)
        if not rel:
            continue
        text, image = q.get("text") or None, q.get("image") or None
        kind = "image+text" if text and image else ("image" if image else "text")
        try:
            items.append(EvalItem(EvalQuery(id=qid, kind=kind, text=text, image=image, relevant=rel), base))
        except ValidationError as e:
            raise EvalDataError(f"{where}: query {qid}: {e.errors()[0]['msg']}") from None
    dropped = len(queries) - len(items)
    if dropped:
        logger.info("%s: %d of %d queries have no relevance judgements and are skipped", where, dropped, len(queries))
    if not items:
        raise EvalDataError(f"{where}: no query has a relevance judgement (check that the qrels ids match the queries)")
    return items


def load_beir(root: str | Path, split: str = "test") -> EvalSet:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    Rows use BEIR's keys (``_id``, ``title``, ``text``); an optional ``image`` key (path relative to ``root``)
    makes a row multimodal, on either side.
    """
    root = Path(root)
    paths = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl", "qrels": root / "qrels" / f"{split}.tsv"}
    for what, p in paths.items():
        if not p.is_file():
            raise EvalDataError(f"BEIR folder {root}: {what} file {p.name} not found (expected {p})")
    corpus = []
    for n, row in iter_jsonl(paths["corpus"]):
        did = str(row.get("_id", "")).strip()
        if not did:
            raise EvalDataError(f"{paths['corpus']}:{n}: row has no _id")
        image = (root / row["image"]) if row.get("image") else None
        if image is not None and not image.is_file():
            raise EvalDataError(f"{paths['corpus']}:{n}: image not found: {image}")
        if not (row.get("text") or row.get("title") or image):
            raise EvalDataError(f"{paths['corpus']}:{n}: document {did} has no text, title or image")
        corpus.append(CorpusDoc(did, text=row.get("text") or "", title=row.get("title") or "", image=image))
    queries = {str(r.get("_id")): r for _, r in iter_jsonl(paths["queries"])}
    qrels = read_qrels_tsv(paths["qrels"])
    items = _make_items(queries, qrels, root, str(root))
    known = {d.id for d in corpus}
    unknown = {d for rel in qrels.values() for d in rel} - known
    if unknown:
        logger.warning("%s: %d judged document ids are not in the corpus (e.g. %s)", root, len(unknown), sorted(unknown)[0])
    h = hashlib.sha256()
    for p in paths.values():
        _hash_file(p, h)
    return EvalSet(root.name, items, corpus, str(root), h.hexdigest()[:16])


# -- ViDoRe (BEIR layout on the Hugging Face hub, parquet) ---------------------------------------------------------
def _read_parquet_dir(root: Path, config: str, split: str) -> Any:
    import pandas as pd

    files = sorted((root / config).glob(f"{split}-*.parquet")) or sorted((root / config).glob("*.parquet"))
    if not files:
        raise EvalDataError(f"ViDoRe folder {root}: no {config}/{split}-*.parquet files (download the dataset repo as is)")
    try:
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except ImportError as e:
        raise EvalDataError(f"reading parquet needs pyarrow or fastparquet ({e})") from None


def _image_bytes(value: Any) -> bytes:
    """A parquet image cell: ``{"bytes": ..., "path": ...}`` (datasets' Image feature) or raw bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    raise EvalDataError(f"unsupported image cell {type(value).__name__}: expected bytes or {{'bytes': ...}}")


def load_vidore(root: str | Path, images_dir: str | Path, split: str = "test", language: str | None = None) -> EvalSet:
    """A ViDoRe BEIR dataset as downloaded from the hub (``corpus/``, ``queries/``, ``qrels/`` parquet folders).

    Columns: corpus ``corpus-id``, ``image`` (the datasets Image feature: a struct with ``bytes``); queries ``query-id``, ``query`` (v2 also ``language``);
    qrels ``query-id``, ``corpus-id``, ``score``. Page images are written once to ``images_dir`` (by corpus id) so
    the store and the reranker can read them as files.
    """
    from PIL import Image

    root, images_dir = Path(root), Path(images_dir)
    corpus_df = _read_parquet_dir(root, "corpus", split)
    queries_df = _read_parquet_dir(root, "queries", split)
    qrels_df = _read_parquet_dir(root, "qrels", split)
    # pyarrow reads the datasets Image feature as a struct column "image"; fastparquet flattens it to "image.bytes".
    image_col = "image" if "image" in corpus_df.columns else "image.bytes"
    for name, df, cols in (("corpus", corpus_df, ("corpus-id", image_col)), ("queries", queries_df, ("query-id", "query")),
                           ("qrels", qrels_df, ("query-id", "corpus-id", "score"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise EvalDataError(f"ViDoRe {name} of {root} lacks columns {missing} (has {list(df.columns)})")
    images_dir.mkdir(parents=True, exist_ok=True)
    corpus = []
    for cid, cell in zip(corpus_df["corpus-id"], corpus_df[image_col], strict=False):
        cid = str(cid)
        existing = sorted(images_dir.glob(f"{cid}.*"))
        if existing:
            path = existing[0]
        else:
            data = _image_bytes(cell)
            fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
            path = images_dir / f"{cid}.{'jpg' if fmt == 'jpeg' else fmt}"
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        corpus.append(CorpusDoc(cid, image=path))
    if language is not None and "language" in queries_df.columns:
        queries_df = queries_df[queries_df["language"] == language]
    queries = {str(qid): {"text": str(text)} for qid, text in zip(queries_df["query-id"], queries_df["query"], strict=False)}
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, score in zip(qrels_df["query-id"], qrels_df["corpus-id"], qrels_df["score"], strict=False):
        if float(score) > 0:
            qrels.setdefault(str(qid), {})[str(did)] = int(round(float(score)))
    items = _make_items(queries, qrels, root, str(root))
    h = hashlib.sha256()
    for config in ("queries", "qrels"):
        for f in sorted((root / config).glob("*.parquet")):
            _hash_file(f, h)
    h.update(str(len(corpus)).encode())
    name = root.name + (f"-{language}" if language else "")
    return EvalSet(name, items, corpus, str(root), h.hexdigest()[:16])


def load_eval_set(path: str | Path, *, fmt: str = "auto", split: str = "test", images_dir: Path | None = None,
                  language: str | None = None) -> EvalSet:
    """Load by format (``jsonl``, ``beir``, ``vidore``) or guess it from what ``path`` holds."""
    path = Path(path)
    if fmt == "auto":
        if path.is_file():
            fmt = "jsonl"
        elif (path / "corpus.jsonl").is_file():
            fmt = "beir"
        elif (path / "corpus").is_dir():
            fmt = "vidore"
        else:
            raise EvalDataError(f"cannot tell the format of {path}: give an eval .jsonl, a BEIR folder or a ViDoRe folder")
    if fmt == "jsonl":
        return load_jsonl(path)
    if fmt == "beir":
        return load_beir(path, split)
    if fmt == "vidore":
        return load_vidore(path, images_dir or (path / "_images"), split, language)
    raise EvalDataError(f"unknown eval format {fmt!r}: use jsonl, beir or vidore")
