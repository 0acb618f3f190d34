"""``kb import --suggest`` on every source the import reads, end to end on the tiny model (real Qwen3-VL code, Qdrant
Edge, the in-process CLI): CSV in UTF-8 with a BOM and in declared GB18030, a zip holding a cases file and its media,
a case folder. As in the JSONL test (tests/test_kb_labels.py), the knowledge base is five high-severity LP-5 printers
tagged "jam", so the neighbours' vote is unanimous whatever the (random) model: the expected fills come from how the
knowledge base was built, not from the code under test. Also: the records needing suggestions are embedded in one
batch (one embedder call, not one per record); bad sources fail with the import's own message and write nothing."""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from kb_support import TinyCli, assert_same_state, case_dict, kb_state, scene, write_jsonl

from knowledge_base.labels import MIN_CONFIDENCE
from knowledge_base.state import KBState

#: What the unanimous neighbours suggest for every missing field.
BASE_LABELS = {"product_line": "printer", "equipment_model": "LP-5", "tags": ["jam"], "severity": "high"}
CSV_HEADER = ["id", "title", "product_line", "equipment_model", "symptom", "tags", "severity", "media"]


@pytest.fixture(scope="module")
def base_data(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A data dir holding the five-printer knowledge base (built once; each test works on a copy)."""
    root = tmp_path_factory.mktemp("suggest-base")
    cli = TinyCli(root / "data", tiny_model_dir)
    src = root / "src"
    src.mkdir()
    for i in range(5):
        scene(i).save(src / f"img{i:02d}.png")
    base = [case_dict(i, [f"img{i:02d}.png"], **BASE_LABELS) for i in range(5)]
    res = cli("import", str(write_jsonl(src / "base.jsonl", base)))
    assert res.exit_code == 0, res.output
    return root / "data"


@pytest.fixture()
def cli(base_data: Path, tmp_path: Path, tiny_model_dir: Path) -> TinyCli:
    data = tmp_path / "data"
    shutil.copytree(base_data, data, ignore=lambda d, names: ["models"] if Path(d) == base_data else [])
    return TinyCli(data, tiny_model_dir)


def new_records(media: list[str]) -> list[dict[str, Any]]:
    """case-05 lacks product line, model and tags; case-06 lacks tags and severity; case-07 is complete."""
    c5, c6, c7 = (case_dict(5 + i, [m]) for i, m in enumerate(media))
    c5 = {k: v for k, v in c5.items() if k not in ("product_line", "tags", "equipment_model")}
    c6 = {**{k: v for k, v in c6.items() if k != "tags"}, "product_line": "pump", "symptom": "泵在启动后漏水。"}
    return [c5, c6, {**c7, "severity": "low"}]


#: The filled fields the unanimous vote gives ``new_records`` (case-07 is complete: nothing).
WANT = {("case-05", "product_line"): "printer", ("case-05", "equipment_model"): "LP-5", ("case-05", "tags"): ["jam"],
        ("case-05", "severity"): "high", ("case-06", "tags"): ["jam"], ("case-06", "severity"): "high"}


def csv_text(records: list[dict[str, Any]]) -> str:
    """The records as the import's CSV (list cells joined with "|"), written here by hand, not by the code under test."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for r in records:
        w.writerow(["|".join(r[k]) if isinstance(r.get(k), list) else (r.get(k) or "") for k in CSV_HEADER])
    return buf.getvalue()


def check_import(cli: TinyCli, res: Any, where_prefix: str) -> dict[str, Any]:
    """The report says what was filled (and only that), and the stored cases hold exactly it, with their media."""
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    rep = json.loads(res.stdout)
    assert rep["added"] == 3 and rep["rejected"] == 0, rep["errors"]
    got = {(s["case_id"], s["field"]): s for s in rep["suggested"]}
    assert {k: v["value"] for k, v in got.items()} == WANT
    assert all(s["suggested"] is True and s["confidence"] >= MIN_CONFIDENCE and s["source"] == "neighbours"
               for s in rep["suggested"])
    wheres = {s["case_id"]: s["where"] for s in rep["suggested"]}
    items = {i["case_id"]: i["where"] for i in rep["items"]}
    assert all(w.startswith(where_prefix) and w == items[cid] for cid, w in wheres.items())  # the import's own names
    with cli.open_kb() as kb:
        c5, c6, c7 = (kb.get(f"case-0{i}") for i in (5, 6, 7))
    assert (c5.product_line, c5.equipment_model, c5.tags, c5.severity) == ("printer", "LP-5", ["jam"], "high")
    assert (c6.product_line, c6.equipment_model, c6.tags, c6.severity) == ("pump", "M0", ["jam"], "high")
    assert c6.symptom == "泵在启动后漏水。"
    want7 = case_dict(7)
    assert (c7.product_line, c7.equipment_model, c7.tags, c7.severity) == (
        want7["product_line"], want7["equipment_model"], want7["tags"], "low")
    assert [len(c.media) for c in (c5, c6, c7)] == [1, 1, 1]  # relative media paths resolved (dedup is off)
    return rep


@pytest.mark.parametrize(("name", "encoding", "bom"), [
    ("new.csv", "utf-8", b"\xef\xbb\xbf"),  # UTF-8 with a BOM (what spreadsheet programs write)
    ("new.gb18030.csv", "gb18030", b""),  # declared by its name
])
def test_csv_suggest(cli: TinyCli, tmp_path: Path, name: str, encoding: str, bom: bytes) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in (5, 6, 7):
        scene(i).save(src / f"img{i:02d}.png")
    path = src / name
    path.write_bytes(bom + csv_text(new_records([f"img{i:02d}.png" for i in (5, 6, 7)])).encode(encoding))
    original = path.read_bytes()
    rep = check_import(cli, cli("import", str(path), "--suggest", "--json", "--no-dedup"), f"{name}:row ")
    assert path.read_bytes() == original and sorted(p.name for p in src.iterdir()) == sorted(
        [name, "img05.png", "img06.png", "img07.png"])  # the source is not modified, no copy left beside it
    res = cli("import", str(path), "--suggest", "--json", "--no-dedup")  # re-run: the same fills, so all unchanged
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["skipped"] == 3 and len(again["suggested"]) == len(rep["suggested"])


def test_zip_suggest(cli: TinyCli, tmp_path: Path) -> None:
    """A zip with one top-level folder holding cases.csv and media/: members resolve inside the unpacked zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bundle/cases.csv", csv_text(new_records([f"media/img{i:02d}.png" for i in (5, 6, 7)])))
        for i in (5, 6, 7):
            png = io.BytesIO()
            scene(i).save(png, format="PNG")
            z.writestr(f"bundle/media/img{i:02d}.png", png.getvalue())
    path = tmp_path / "new.zip"
    path.write_bytes(buf.getvalue())
    check_import(cli, cli("import", str(path), "--suggest", "--json", "--no-dedup"), "new.zip!cases.csv:row ")
    assert path.read_bytes() == buf.getvalue()


def test_folder_suggest(cli: TinyCli, tmp_path: Path) -> None:
    """A folder of case folders (case.json + a picture each; ids from the folder names)."""
    folder = tmp_path / "folder"
    records = new_records(["p.png", "p.png", "p.png"])
    for i, r in enumerate(records):
        d = folder / f"case-1{i}"
        d.mkdir(parents=True)
        scene(20 + i).save(d / "p.png")
        (d / "case.json").write_text(json.dumps({k: v for k, v in r.items() if k != "id"}), encoding="utf-8")
    res = cli("import", str(folder), "--suggest", "--json")
    assert res.exit_code == 0, res.output
    got = {(s["case_id"], s["field"]): s["value"] for s in json.loads(res.stdout)["suggested"]}
    assert got == {(f"case-1{int(cid[-1]) - 5}", f): v for (cid, f), v in WANT.items()}


def test_records_needing_suggestions_are_embedded_in_one_batch(cli: TinyCli, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Suggestion inputs (no ``id`` key: the import's own inputs carry one) go to the real embedder in one call for
    all records; a record with a picture the model cannot read costs only its own suggestions."""
    calls: list[list[dict[str, Any]]] = []
    real = KBState.embed

    def spy(self: KBState, items: Any, *a: Any, **kw: Any) -> Any:
        calls.append([dict(i) for i in items])
        return real(self, items, *a, **kw)

    monkeypatch.setattr(KBState, "embed", spy)
    src = tmp_path / "src"
    src.mkdir()
    for i in (5, 6, 7, 8):
        scene(i).save(src / f"img{i:02d}.png")
    recs = new_records(["img05.png", "img06.png", "img07.png"])
    recs += [{k: v for k, v in case_dict(8, ["img08.png"], severity="low").items() if k != "tags"}]  # a third record to fill
    res = cli("import", str(write_jsonl(src / "new.jsonl", recs)), "--suggest", "--json")
    assert res.exit_code == 0, res.output
    suggest_calls = [c for c in calls if not any("id" in i for i in c) and any("image" in i for i in c)]
    assert len(suggest_calls) == 1, [len(c) for c in suggest_calls]
    want_images = {str(src / f"img{i:02d}.png") for i in (5, 6, 8)}  # case-07 is complete: not embedded
    assert {i["image"] for i in suggest_calls[0] if "image" in i} == want_images
    assert sum("text" in i for i in suggest_calls[0]) == 3
    assert {(s["case_id"], s["field"]) for s in json.loads(res.stdout)["suggested"]} == {*WANT, ("case-08", "tags")}

    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    bad = [{**{k: v for k, v in case_dict(9, ["bad.png"], severity="low").items() if k != "tags"}},
           {k: v for k, v in case_dict(10, ["img05.png"], severity="low").items() if k != "tags"}]
    res = cli("import", str(write_jsonl(src / "bad.jsonl", bad)), "--suggest", "--json")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    rep = json.loads(res.stdout)
    assert {(s["case_id"], s["field"]) for s in rep["suggested"]} == {("case-10", "tags")}
    assert rep["rejected"] == 1 and rep["errors"][0].startswith("bad.jsonl:1")  # the import rejects it, as usual


def message_of(output: str) -> str:
    """The CLI's error text without the model-loading progress bar before it."""
    return " ".join(re.sub(r".*it/s\]", "", output, flags=re.S).split())  # as one line (the console wraps it)


def _undeclared_gb18030(p: Path) -> None:
    p.write_bytes(csv_text(new_records(["a.png"] * 3)).encode("gb18030"))


@pytest.mark.parametrize(("name", "write", "message"), [
    ("broken.zip", lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00broken" * 40), "not a readable zip archive"),
    ("cols.csv", lambda p: p.write_text("id,title,colour\nx,y,z\n", encoding="utf-8"), "unknown column"),
    ("zh.csv", _undeclared_gb18030, "GB18030"),
    ("notes.txt", lambda p: p.write_text("hello", encoding="utf-8"), "unsupported import source"),
])
def test_bad_sources_get_the_imports_own_errors(cli: TinyCli, tmp_path: Path, name: str, write: Any,
                                                message: str) -> None:
    path = tmp_path / name
    write(path)
    with cli.open_kb() as kb:
        before = kb_state(kb)
    plain = cli("import", str(path))
    res = cli("import", str(path), "--suggest")
    assert res.exit_code == plain.exit_code == 1 and "Traceback" not in res.output
    assert message in message_of(res.output), res.output
    assert message_of(res.output) == message_of(plain.output)  # the import's own message, word for word
    with cli.open_kb() as kb:
        assert_same_state(kb_state(kb), before)  # nothing written
