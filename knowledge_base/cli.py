"""``ragvqa kb``: knowledge-base administration from the shell (mounted by ``ui.cli``; also ``python -m knowledge_base.cli``).

Every command opens the KB under ``--data-dir`` (default ``RAGVQA_DATA_DIR`` or ``data``) with the configured
embedder, or with ``--models tiny`` a tiny random checkpoint built under ``data_dir/models/tiny`` (offline smoke
runs: vectors are meaningless but every code path is real). ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover - types only: `ragvqa --help` must not import the models
    from knowledge_base.ingest import IngestOptions
    from knowledge_base.kb import KnowledgeBase

__all__ = ["kb_app"]

log = logging.getLogger(__name__)

class _KbGroup(typer.core.TyperGroup):
    """Keeps the sub-command's argv for the callback (``_main`` hands it to a serving app, ``ui.control``)."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        ctx.meta["ragvqa_kb_argv"] = [*ctx._protected_args, *ctx.args]
        return super().invoke(ctx)


kb_app = typer.Typer(help="Knowledge base: add, import, list, show, update, delete, reindex, check, stats, export.",
                     no_args_is_help=True, pretty_exceptions_enable=False, cls=_KbGroup)
out = Console()
err = Console(stderr=True)

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Data folder (default: RAGVQA_DATA_DIR or ./data).")]
Models = Annotated[str, typer.Option("--models", help="real (configured weights) | tiny (random checkpoint, offline).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@kb_app.callback()
def _main(ctx: typer.Context,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Set up logging when run on its own (``ragvqa`` already does it); hand the command to the app when one serves
    its data dir (``ui.control``: the store is the app's while it runs)."""
    from knowledge_base.channel import route_kb_command

    try:
        code = route_kb_command(list(ctx.meta.get("ragvqa_kb_argv", [])))
    except PermissionError as e:
        raise _fail(str(e)) from None
    if code is not None:
        raise typer.Exit(code)
    if not logging.getLogger().handlers:
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                            handlers=[RichHandler(console=err, show_path=False)])
    elif verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    for noisy in ("httpx", "urllib3", "PIL", "knowledge_base.media_store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------------ helpers


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{message}", markup=True, highlight=False)
    return typer.Exit(code)


def _open(data_dir: Path | None, models: str, *, strict: bool = True, options: IngestOptions | None = None,
          model: bool = True) -> AbstractContextManager[KnowledgeBase]:
    """Load the embedder (unless ``model`` is False: read-only commands) and open the KB; expected failures become
    one-line messages."""
    from knowledge_base.channel import SERVED_KB
    from knowledge_base.kb import KnowledgeBase
    from rag.cli_settings import check_models, cli_settings
    from rag.models.factory import load_models
    from rag.models.loading import ModelNotAvailableError
    from rag.store import StoreError, StoreMismatchError

    served = SERVED_KB.get()
    if served is not None:  # run by the serving app (ui.control): its open KB, not closed by the command
        return _Borrowed(served)
    settings = cli_settings(data_dir, models=models)
    embedder = None
    if model:
        try:
            embedder = load_models(settings, check_models(models), need=("embedder",)).embedder
        except ModelNotAvailableError as e:
            raise _fail(str(e)) from None
    try:
        return KnowledgeBase.open(settings, embedder, options=options, strict=strict)
    except StoreMismatchError as e:
        raise _fail(str(e)) from None
    except StoreError as e:
        hint = " (nothing imported yet? run `ragvqa kb import`)" if "no vector store under" in str(e) else ""
        raise _fail(f"cannot open the vector store: {e}{hint}") from None


class _Borrowed:
    """The serving app's KnowledgeBase for one routed command: ``with`` gives it, leaving closes nothing."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    def __enter__(self) -> KnowledgeBase:
        return self.kb

    def __exit__(self, *exc: object) -> None:
        return None


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2, ensure_ascii=False))  # plain: no wrapping, no colour


def _split(value: str) -> list[str]:
    sep = "|" if "|" in value else ";" if ";" in value else ","
    return [v.strip() for v in value.split(sep) if v.strip()]


def _print_result(res: Any, as_json: bool) -> None:
    if as_json:
        _dump(res.to_dict())
        return
    t = Table(title=f"import {res.source}", show_header=True)
    for col in ("added", "updated", "skipped", "rejected", "duplicates", "media embedded", "seconds"):
        t.add_column(col, justify="right")
    t.add_row(str(res.added), str(res.updated), str(res.skipped), str(res.rejected), str(len(res.duplicates)),
              str(res.media_embedded), f"{res.elapsed_s:.1f}")
    out.print(t)
    for item in res.items:
        if item.status == "rejected":
            out.print(f"[red]rejected[/red] {item.where}: {item.reason}", highlight=False)
        _print_notes([f"{item.where} ({d.case_id}): {d.describe()}" for d in item.duplicates],
                     [f"{item.where}: {w}" for w in item.warnings])


def _print_notes(duplicates: list[str], warnings: list[str]) -> None:
    """An import's or a change's near-duplicate and warning lines, in the colours the other lines use."""
    for d in duplicates:
        out.print(f"[yellow]duplicate[/yellow] {d}", highlight=False)
    for w in warnings:
        out.print(f"[yellow]warning[/yellow] {w}", highlight=False)


# ------------------------------------------------------------------------------------------------ commands


@kb_app.command("add")
def add(
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="A case.json (CaseInput fields); media paths relative to it.")] = None,
    case_id: Annotated[Optional[str], typer.Option("--id", help="Case id (default: slug of model + title).")] = None,
    title: Annotated[Optional[str], typer.Option(help="Short title.")] = None,
    product_line: Annotated[Optional[str], typer.Option(help="Product line, e.g. printer.")] = None,
    model: Annotated[str, typer.Option("--model", help="Equipment model.")] = "",
    symptom: Annotated[Optional[str], typer.Option(help="What the customer saw.")] = None,
    cause: Annotated[str, typer.Option(help="Why it happened.")] = "",
    step: Annotated[Optional[list[str]], typer.Option("--step", help="A solution step (repeatable, in order).")] = None,
    error_code: Annotated[Optional[list[str]], typer.Option("--error-code", help="Repeatable.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Repeatable.")] = None,
    severity: Annotated[Optional[str], typer.Option(help="low | medium | high | critical.")] = None,
    source: Annotated[str, typer.Option(help="Where the case comes from (ticket id, URL).")] = "",
    media: Annotated[Optional[list[Path]], typer.Option("--media", "-m", help="Image, video or PDF (repeatable).")] = None,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Add one case (or re-import it: an unchanged case is skipped, a changed one updated)."""
    from knowledge_base.kb import CaseRejectedError

    if file is not None:
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
        except (OSError, json.JSONDecodeError) as e:
            raise _fail(f"{file}: cannot read the case ({e})") from None
        base = file.parent
    else:
        missing = [n for n, v in (("--title", title), ("--product-line", product_line), ("--symptom", symptom)) if not v]
        if missing:
            raise _fail(f"give --file or at least {', '.join(missing)}", 2)
        data = {"id": case_id, "title": title, "product_line": product_line, "equipment_model": model,
                "symptom": symptom, "cause": cause, "solution": step or [], "error_codes": error_code or [],
                "tags": tag or [], "severity": severity, "source": source}
        base = Path.cwd()
    if isinstance(data, dict) and case_id:
        data["id"] = case_id
    if isinstance(data, dict) and isinstance(data.get("media"), list):
        data["media"] = [{"path": m} if isinstance(m, str) else m for m in data["media"]]
    with _open(data_dir, models) as kb:
        try:
            report = kb.add_case(data, media=[str(p) for p in (media or [])], base_dir=base)
        except CaseRejectedError as e:
            raise _fail(f"rejected — {e}") from None
    if as_json:
        _dump(report.to_dict())
        return
    out.print(f"[green]{report.status}[/green] case {report.case_id} "
              f"({report.media_embedded} media embedded, {report.media_reused} reused)", highlight=False)
    _print_notes([d.describe() for d in report.duplicates], report.warnings)


@kb_app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help=".jsonl, .csv, a folder (one sub-folder per case), a .zip of those, "
                                                "or an export zip.")],
    media_dir: Annotated[Optional[Path], typer.Option(help="Where CSV/JSONL media paths point (default: next to the file).")] = None,
    dedup: Annotated[bool, typer.Option(help="Detect exact and near-duplicate media across cases.")] = True,
    near_dup_threshold: Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Cosine from which images are near duplicates.")] = None,
    pdf_max_pages: Annotated[Optional[int], typer.Option(min=1, help="Pages imported per PDF.")] = None,
    chunk: Annotated[Optional[int], typer.Option(min=1, help="Cases per embed/write chunk.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write the full report as JSON here.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 if any record was rejected.")] = False,
    suggest: Annotated[bool, typer.Option("--suggest", help="Fill missing product line / model / tags / severity of "
                                          "each record from suggestions (reported as suggested; the source file "
                                          "is not modified).")] = False,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Bulk import (idempotent: re-run it to resume an interrupted import; unchanged cases are skipped)."""
    from knowledge_base.ingest import IngestOptions
    from rag.validation import InputRejected

    upd: dict[str, Any] = {"dedup": dedup}
    if near_dup_threshold is not None:
        upd["near_dup_threshold"] = near_dup_threshold
    if pdf_max_pages is not None:
        upd["pdf_max_pages"] = pdf_max_pages
    if chunk is not None:
        upd["chunk_cases"] = chunk
    options = IngestOptions().model_copy(update=upd)
    filled: list[Any] = []
    with _open(data_dir, models, options=options) as kb:
        try:
            if suggest:  # the import's own parser hands each file's records to the filler before validating them
                from knowledge_base.import_suggest import SuggestFiller
                from rag.errors import UserInputError

                filler = SuggestFiller(kb)
                try:
                    res = kb.import_path(source, media_dir=media_dir, progress=sys.stderr.isatty(), prepare=filler)
                except UserInputError as e:
                    raise _fail(str(e)) from None
                filled = filler.filled
            else:
                res = kb.import_path(source, media_dir=media_dir, progress=sys.stderr.isatty())
        except InputRejected as e:
            raise _fail(str(e)) from None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({**res.to_dict(), "suggested": [f.to_dict() for f in filled]}, indent=2,
                                     default=str), encoding="utf-8")
    if as_json and suggest:
        _dump({**res.to_dict(), "suggested": [f.to_dict() for f in filled]})
    else:
        _print_result(res, as_json)
    for f in filled if not as_json else []:
        out.print(f"[cyan]suggested[/cyan] {f.where} ({f.case_id or '?'}): {f.field} = {f.value} "
                  f"({f.confidence:.0%}, {f.source})", highlight=False)
    if strict and res.rejected:
        raise typer.Exit(1)


@kb_app.command("list")
def list_(
    product_line: Annotated[Optional[list[str]], typer.Option("--product-line", help="Repeatable (any of).")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Equipment model (repeatable, any of).")] = None,
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Repeatable (any of).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="Substring of id/title/symptom/cause/steps/codes/tags.")] = None,
    limit: Annotated[int, typer.Option(min=0)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """List cases (sorted by id)."""
    filters = {"product_line": product_line or None, "equipment_model": model or None, "tags": tag or None}
    with _open(data_dir, models, strict=False, model=False) as kb:
        page = kb.list_cases(filters, text=text, limit=limit, offset=offset)
    if as_json:
        _dump({"total": page.total, "offset": page.offset, "cases": [c.model_dump(mode="json") for c in page.cases]})
        return
    t = Table(title=f"{page.total} case(s)" + (f", from #{offset + 1}" if offset else ""))
    for col in ("id", "title", "product line", "model", "media", "version", "updated"):
        t.add_column(col)
    for c in page.cases:
        t.add_row(c.id, c.title, c.product_line, c.equipment_model, str(len(c.media)), str(c.version),
                  c.updated_at.strftime("%Y-%m-%d %H:%M"))
    out.print(t)


@kb_app.command("show")
def show(
    case_id: Annotated[str, typer.Argument(help="Case id.")],
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Show one case with its media."""
    with _open(data_dir, models, strict=False, model=False) as kb:
        case = kb.get(case_id)
        root = kb.media_root
    if case is None:
        raise _fail(f"no case with id {case_id!r}")
    if as_json:
        _dump(case.model_dump(mode="json"))
        return
    out.print(f"[bold]{case.id}[/bold] — {case.title}  (version {case.version}, updated {case.updated_at:%Y-%m-%d %H:%M})",
              highlight=False)
    out.print(case.document_text(max_chars=4000), highlight=False, markup=False)
    for m in case.media:
        page = f" page {m.page}" if m.page else ""
        out.print(f"  • {m.kind}{page} {m.source_file or ''} → {root / m.path}" + (f" — {m.caption}" if m.caption else ""),
                  highlight=False, markup=False)
    for link in case.links:
        out.print(f"  ↔ {link.relation} {link.case_id} {link.note}", highlight=False, markup=False)


@kb_app.command("update")
def update(
    case_id: Annotated[str, typer.Argument(help="Case id.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="FIELD=VALUE (repeatable); list fields split on | ; or ,.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="JSON object of field changes.")] = None,
    add_media: Annotated[Optional[list[Path]], typer.Option("--add-media", help="Repeatable.")] = None,
    remove_media: Annotated[Optional[list[str]], typer.Option("--remove-media", help="Media id or original file name (repeatable).")] = None,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Change a case; only what changed is re-embedded."""
    from knowledge_base.kb import CaseNotFoundError, CaseRejectedError

    changes: dict[str, Any] = {}
    if file is not None:
        try:
            changes.update(json.loads(file.read_text(encoding="utf-8-sig")))
        except (OSError, json.JSONDecodeError) as e:
            raise _fail(f"{file}: cannot read the changes ({e})") from None
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--set {item!r}: expected FIELD=VALUE", 2)
        key = key.strip().replace("-", "_")
        changes[key] = _split(value) if key in ("solution", "error_codes", "tags") else (value or None if key == "severity" else value)
    with _open(data_dir, models) as kb:
        try:
            report = kb.update(case_id, changes, add_media=[str(p) for p in add_media or []], remove_media=remove_media or [])
        except (CaseNotFoundError, CaseRejectedError, ValueError) as e:
            raise _fail(str(e)) from None
    if as_json:
        _dump(report.to_dict())
        return
    out.print(f"[green]{report.status}[/green] case {case_id} ({report.reason or f'{report.media_embedded} media embedded'})",
              highlight=False)
    _print_notes([d.describe() for d in report.duplicates], [])


@kb_app.command("delete")
def delete(
    case_id: Annotated[str, typer.Argument(help="Case id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
    models: Models = "real",
) -> None:
    """Delete a case, its vectors and the media files no other case uses."""
    if not yes and not typer.confirm(f"Delete case {case_id}?"):
        raise typer.Exit(1)
    with _open(data_dir, models, strict=False, model=False) as kb:
        existed = kb.delete(case_id)
    if not existed:
        raise _fail(f"no case with id {case_id!r} (leftovers of that id, if any, were cleaned up)")
    out.print(f"[green]deleted[/green] {case_id}", highlight=False)


@kb_app.command("reindex")
def reindex(
    embedder_model: Annotated[Optional[str], typer.Option(help="New embedder (default: RAGVQA_EMBEDDER_MODEL).")] = None,
    embed_dim: Annotated[Optional[int], typer.Option(min=64, help="Matryoshka dimension (default: full).")] = None,
    quantization: Annotated[Optional[bool], typer.Option(
        "--quantization/--no-quantization",
        help="int8 scalar quantization of the new store (default: RAGVQA_STORE_QUANTIZATION).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Re-embed every case with the configured (or given) embedder into a new store and switch atomically.

    The new store gets the configured store settings (RAGVQA_STORE_QUANTIZATION, RAGVQA_STORE_HNSW_*), not the
    old store's. The old store keeps serving until the switch. With Qdrant Edge, stop the app first (one process
    per store).
    """
    from knowledge_base.channel import SERVED_KB
    from knowledge_base.kb import KnowledgeBase
    from rag.cli_settings import check_models, cli_settings
    from rag.models.factory import load_models

    if SERVED_KB.get() is not None:
        raise _fail("reindex swaps the embedder and the store under the running app: use the admin tab's Reindex, "
                    "or stop `ragvqa serve` and run it again", 2)
    settings = cli_settings(data_dir, models=models)
    upd: dict[str, Any] = {}
    if embedder_model:
        upd["embedder_model"] = embedder_model
    if embed_dim:
        upd["embed_dim"] = embed_dim
    if quantization is not None:
        upd["store_quantization"] = quantization
    settings = settings.model_copy(update=upd)
    new = load_models(settings, check_models(models), need=("embedder",)).embedder
    if new is None:  # pragma: no cover - load_models raises first
        raise _fail("no embedder was loaded")
    quant = bool(settings.store_quantization)

    def kind(q: bool) -> str:
        return "int8" if q else "float32"

    with KnowledgeBase.open(settings, new, strict=False) as kb:
        eid = KnowledgeBase.embedder_id_of(new, settings)
        dim = settings.embed_dim or int(new.dim)
        old = kb.store.meta
        if not yes and not typer.confirm(f"Re-embed {kb.count_cases()} case(s): {old.embedder_id} "
                                         f"(dim {kb.dim}, {kind(old.quantization)}) → {eid} (dim {dim}, {kind(quant)})?"):
            raise typer.Exit(1)
        res = kb.reindex(new, dim=dim, quantization=quant, progress=sys.stderr.isatty())
    if as_json:
        _dump(res.to_dict())
        return
    out.print(f"[green]reindexed[/green] {res.cases} case(s), {res.points} points with {res.embedder_id} "
              f"(dim {res.dim}, {kind(res.quantization)}) in {res.elapsed_s:.1f} s", highlight=False)
    for s in res.skipped_media:
        out.print(f"[yellow]skipped[/yellow] {s}", highlight=False)
    if embedder_model or embed_dim:
        out.print("Set RAGVQA_EMBEDDER_MODEL / RAGVQA_EMBED_DIM accordingly for the app.", highlight=False)
    if quantization is not None:
        out.print("Set RAGVQA_STORE_QUANTIZATION accordingly for the app (it applies at the next reindex).",
                  highlight=False)


@kb_app.command("check")
def check(
    fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired.")] = False,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Find orphan/stale/missing points, missing or unreferenced files, foreign-embedder points. Exit 1 if any remain."""
    with _open(data_dir, models, strict=False) as kb:
        rep = kb.check(fix=fix)
        after = kb.check() if fix and rep.problems else rep
    if as_json:
        _dump({**rep.to_dict(), "remaining": after.problems})
    else:
        out.print(rep.summary(), highlight=False)
        if fix and rep.problems:
            out.print(f"after repair: {after.summary()}", highlight=False)
    if after.problems:
        raise typer.Exit(1)


@kb_app.command("stats")
def stats(data_dir: DataDir = None, models: Models = "real", as_json: AsJson = False) -> None:
    """Counts: cases, points, media by kind, cases per product line, files, store."""
    with _open(data_dir, models, strict=False, model=False) as kb:
        st = kb.stats()
    if as_json:
        _dump(st)
        return
    t = Table(show_header=False, title="knowledge base")
    t.add_column("what")
    t.add_column("value")
    for k in ("cases", "points", "media_files", "media_bytes", "embedder", "store_backend", "data_dir"):
        t.add_row(k.replace("_", " "), str(st[k]))
    t.add_row("media by kind", ", ".join(f"{k}: {v}" for k, v in st["media"].items()) or "—")
    t.add_row("cases per product line", ", ".join(f"{k}: {v}" for k, v in st["product_lines"].items()) or "—")
    t.add_row("store", f"{st['store']['embedder_id']} (dim {st['store']['dim']})")
    out.print(t)


@kb_app.command("export")
def export(
    dest: Annotated[Path, typer.Argument(help="Zip file to write (cases.jsonl + media); import it to restore.")],
    data_dir: DataDir = None,
    models: Models = "real",
) -> None:
    """Back up the knowledge base to a zip."""
    with _open(data_dir, models, strict=False, model=False) as kb:
        path = kb.export(dest)
        n = kb.count_cases()
    out.print(f"[green]exported[/green] {n} case(s) to {path}", highlight=False)


@kb_app.command("audit")
def audit(
    since: Annotated[Optional[str], typer.Option(help="Only changes from this ISO date or time on (UTC if no zone).")] = None,
    case: Annotated[Optional[str], typer.Option("--case", help="Only changes of this case id.")] = None,
    actor: Annotated[Optional[str], typer.Option(help="Only changes by this actor (admin name or cli:<user>).")] = None,
    action: Annotated[Optional[str], typer.Option(help="add | update | delete | import | reindex | check --fix | …")] = None,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines: one change per line (for log collectors).")] = False,
) -> None:
    """Who changed which case, when, and the versions before/after (the audit log; read-only)."""
    from datetime import datetime, timezone

    from knowledge_base.audit import AUDIT_FILE, AuditLog
    from rag.cli_settings import cli_settings

    when = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            raise _fail(f"--since {since!r}: expected an ISO date or time, e.g. 2026-11-29 or 2026-11-29T08:00", 2) from None
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    log_ = AuditLog(Path(cli_settings(data_dir).data_dir) / AUDIT_FILE)
    entries = log_.query(since=when, case_id=case, actor=actor, action=action)
    if as_json:
        for e in entries:
            typer.echo(e.model_dump_json())
        return
    t = Table(title=f"{len(entries)} change(s)")
    for col in ("when (UTC)", "who", "action", "case", "version", "status"):
        t.add_column(col)
    for e in entries:
        versions = f"{e.before_version if e.before_version is not None else '—'} → " \
                   f"{e.after_version if e.after_version is not None else '—'}"
        t.add_row(e.ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.action, e.case_id or "",
                  versions, e.status)
    out.print(t)


def restore_backup(kb: Any, file: Path, *, progress: bool = False) -> tuple[Any, Any]:
    """Import backup ``file`` into the EMPTY ``kb``; returns (import result, check report after)."""
    if kb.count_cases():
        raise ValueError(f"{kb.data_dir} already has {kb.count_cases()} case(s): restore needs an empty data dir")
    res = kb.import_path(file, progress=progress)
    return res, kb.check()


@kb_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="A backup zip (`ragvqa kb export` or a scheduled backup).")],
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Restore a backup into an EMPTY data dir: the same cases (versions, dates), media files, vectors, payloads."""
    import zipfile

    from knowledge_base.archive import BACKUP_FORMAT
    from knowledge_base.channel import SERVED_KB

    if SERVED_KB.get() is not None:
        raise _fail("restore goes into an empty data dir, not the one the app serves: stop it, or restore elsewhere", 2)
    if not file.is_file():
        raise _fail(f"{file}: no such backup file", 2)
    try:
        with zipfile.ZipFile(file) as zf:
            manifest = json.loads(zf.read("manifest.json"))
        if manifest.get("format") != BACKUP_FORMAT:
            raise ValueError("not a backup")
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        raise _fail(f"{file}: not a ragvqa backup (no {BACKUP_FORMAT} manifest.json); use `ragvqa kb import` for "
                    f"other sources", 2) from None
    from rag.cli_settings import cli_settings
    from rag.store.edge import read_active_meta

    settings = cli_settings(data_dir, models=models)
    if read_active_meta(Path(settings.data_dir) / "qdrant") is not None or settings.qdrant_url:
        with _open(data_dir, models, strict=False, model=False) as kb:  # refuse before loading any model
            n = kb.count_cases()
        if n:
            raise _fail(f"{settings.data_dir} already has {n} case(s): restore needs an empty data dir "
                        f"(use `ragvqa kb import {file}` to merge into this one)", 2)
    with _open(data_dir, models, strict=False) as kb:
        try:
            res, rep = restore_backup(kb, file, progress=sys.stderr.isatty())
        except ValueError as e:
            raise _fail(str(e), 2) from None
    if as_json:
        _dump({**res.to_dict(), "problems_after": rep.problems})
    else:
        _print_result(res, False)
        out.print(f"[green]restored[/green] {res.added} case(s) from {file}; check: {rep.summary()}", highlight=False)
    if res.rejected or rep.problems:
        raise typer.Exit(1)


@kb_app.command("duplicates")
def duplicates(
    threshold: Annotated[float, typer.Option(min=0.01, max=1.0, help="Cosine similarity.")] = 0.95,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Near-duplicate images/pages across cases already in the KB."""
    with _open(data_dir, models) as kb:
        pairs = kb.near_duplicates(threshold)
    if as_json:
        _dump([d.to_dict() for d in pairs])
        return
    for d in pairs:
        out.print(f"{d.case_id}/{d.media} ≈ {d.other_case_id}/{d.other_media_id} (cosine {d.score:.3f})", highlight=False)
    out.print(f"{len(pairs)} pair(s) at cosine ≥ {threshold}", highlight=False)


@kb_app.command("clusters")
def clusters(
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: DATA_DIR/clusters).")] = None,
    min_cluster_size: Annotated[int, typer.Option(min=2, help="Fewest cases that make a fault family.")] = 3,
    assign: Annotated[Optional[str], typer.Option("--assign", help="Only assign this case to the saved clusters.")] = None,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Fault clusters (HDBSCAN on the stored vectors; reads the store, never writes it): report.json, report.md and
    map.png in --out; the cluster model for incremental assignment is saved under DATA_DIR/clusters."""
    from knowledge_base.clusters import (
        MODEL_DIR,
        ClusterError,
        ClusterSettings,
        assign_case,
        compute_clusters,
        load_model,
        plot_map,
        report_markdown,
        save_model,
    )

    with _open(data_dir, models, strict=False, model=False) as kb:
        try:
            if assign is not None:
                res = assign_case(kb.store, load_model(kb.data_dir), assign)
                if as_json:
                    _dump(res.model_dump())
                else:
                    where = f"cluster {res.cluster}" if res.cluster is not None else "no cluster (unclustered)"
                    out.print(f"{assign} → {where} (centroid cosine {res.similarity:.3f})", highlight=False)
                return
            report, model = compute_clusters(kb.store, ClusterSettings(min_cluster_size=min_cluster_size),
                                             cache_dir=Path(kb.data_dir) / MODEL_DIR)
        except ClusterError as e:
            raise _fail(str(e)) from None
        save_model(model, kb.data_dir)
        folder = out_dir or Path(kb.data_dir) / "clusters"
    folder.mkdir(parents=True, exist_ok=True)
    png = plot_map(report, folder / "map.png")
    (folder / "report.json").write_text(report.model_dump_json(indent=1), "utf-8")
    md = report_markdown(report, map_png=png.name)
    (folder / "report.md").write_text(md + "\n", "utf-8")
    if as_json:
        _dump({**report.model_dump(mode="json"), "files": [str(folder / "report.json"), str(folder / "report.md"),
                                                          str(png)]})
        return
    out.print(md, highlight=False, markup=False)
    out.print(f"wrote {folder / 'report.json'}, {folder / 'report.md'} and {png}", highlight=False)


@kb_app.command("gaps")
def gaps(
    threshold: Annotated[float, typer.Option(min=0.05, max=1.0, help="Cosine distance below which questions share a topic.")] = 0.8,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Knowledge gaps: abstained and thumbs-down questions from the feedback log, grouped into topics by their text
    and, where a knowledge base exists, by the stored vectors of the cases shown for them (writes nothing but the
    crash recovery every knowledge-base open does)."""
    from contextlib import nullcontext

    from knowledge_base.channel import SERVED_KB
    from knowledge_base.gaps import GapError, find_gaps, gaps_markdown
    from rag.cli_settings import cli_settings
    from rag.store.edge import read_active_meta

    settings = cli_settings(data_dir)
    opened: AbstractContextManager[KnowledgeBase | None] = nullcontext(None)
    if SERVED_KB.get() is not None or settings.qdrant_url or read_active_meta(Path(settings.data_dir) / "qdrant"):
        try:  # no model: the shown cases' stored vectors place photo-only questions
            opened = _open(data_dir, "real", strict=False, model=False)
        except typer.Exit:  # the reason is printed; the text grouping still works
            err.print("knowledge gaps grouped by question text only", highlight=False)
        except OSError as e:  # e.g. a data dir this user may not write (opening finishes crash recovery first)
            err.print(f"cannot open the knowledge base ({e}); knowledge gaps grouped by question text only",
                      highlight=False)
    with opened as kb:
        try:
            report = find_gaps(settings.data_dir, kb.store if kb is not None else None, distance_threshold=threshold)
        except GapError as e:
            raise _fail(str(e)) from None
    if as_json:
        _dump(report.model_dump(mode="json"))
        return
    out.print(gaps_markdown(report), highlight=False, markup=False)




# ------------------------------------------------------------------------------------------------ KB intelligence


@kb_app.command("related")
def related(
    case_id: Annotated[str, typer.Argument(help="Case id.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="How many related cases.")] = 5,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Cases related to CASE_ID by their stored text and media vectors, with the pairs that matched (read-only)."""
    from knowledge_base.related import related_cases
    from rag.errors import UserInputError

    with _open(data_dir, models, strict=False, model=False) as kb:
        try:
            found = related_cases(kb, case_id, limit=limit)
        except UserInputError as e:
            raise _fail(str(e)) from None
    if as_json:
        _dump([r.model_dump(mode="json") for r in found])
        return
    if not found:
        out.print(f"no other case to relate {case_id} to", highlight=False)
    for r in found:
        why = "; ".join(f"{x.text} ({x.score:.3f})" for x in r.reasons)
        out.print(f"{r.score:.3f}  [bold]{r.case_id}[/bold] — {r.title}  [dim]{why}", highlight=False)


@kb_app.command("classify")
def classify(
    target: Annotated[str, typer.Argument(help="A case id (its stored vectors), an image/video file, or a case record "
                                                "(.json, media paths relative to it) to classify.")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Neighbouring cases that vote.")] = 10,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Suggested product line, equipment model, tags and severity, with confidences (read-only)."""
    from knowledge_base.labels import suggest_labels
    from rag.errors import UserInputError
    from rag.store import StoreMismatchError

    path = Path(target)
    with _open(data_dir, models) as kb:
        try:
            if path.is_file() and path.suffix.lower() == ".json":  # one case record (its text and media)
                from knowledge_base.import_suggest import record_query

                text, media = record_query(path)
                found = suggest_labels(kb, text=text or None, media=media, k=k)
            elif path.is_file():
                found = suggest_labels(kb, media=[path], k=k)
            else:
                found = suggest_labels(kb, case_id=target, k=k)
        except (UserInputError, StoreMismatchError) as e:
            raise _fail(str(e)) from None
    if as_json:
        _dump([s.model_dump(mode="json") for s in found])
        return
    if not found:
        out.print("no confident suggestion", highlight=False)
    for s in found:
        out.print(f"suggested {s.field}: [bold]{s.value}[/bold]  ({s.confidence:.0%}, {s.source})", highlight=False)


@kb_app.command("search")
def search(
    text: Annotated[Optional[str], typer.Option("--text", help="What to look for, in words.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="A photo or screenshot to look for.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=200, help="Results per view.")] = 10,
    kind: Annotated[Optional[list[str]], typer.Option("--kind", help="Only these point kinds: text, image, "
                                                      "pdf_page, video (repeatable).")] = None,
    data_dir: DataDir = None,
    models: Models = "real",
    as_json: AsJson = False,
) -> None:
    """Semantic, cross-modal search over cases and their individual media (text and/or image query; read-only)."""
    from knowledge_base.semantic_search import semantic_search
    from rag.errors import UserInputError

    with _open(data_dir, models) as kb:
        try:
            res = semantic_search(kb, text=text, image=image, limit=limit, kinds=kind or None)  # type: ignore[arg-type]
        except UserInputError as e:
            raise _fail(str(e)) from None
        root = kb.media_root
    if as_json:
        _dump(res.model_dump(mode="json"))
        return
    t = Table(title="cases", show_header=True)
    for col in ("score", "case", "title", "best match"):
        t.add_column(col)
    for c in res.cases:
        best = c.points[0]
        t.add_row(f"{c.score:.3f}", c.case_id, c.title, best.kind + (f" p{best.page}" if best.page else ""))
    out.print(t)
    t = Table(title="media and texts", show_header=True)
    for col in ("score", "case", "kind", "file"):
        t.add_column(col)
    for p in res.points:
        t.add_row(f"{p.score:.3f}", p.case_id, p.kind + (f" p{p.page}" if p.page else ""),
                  str(root / p.media_path) if p.media_path else "")
    out.print(t)


if __name__ == "__main__":  # pragma: no cover - after every command, so `python -m` has them all
    kb_app()
